"""Resumable, checksum-verified downloads and safe, atomic archive extraction.

Nothing here ever leaves a complete-looking result behind after a failure: downloads stream into
``<dest>.part`` and are renamed onto ``dest`` only once their size and checksum are right; archives
are unpacked into a hidden folder inside the destination and their top-level entries renamed into
place only once every member is out.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

_CHUNK = 1 << 20
_TIMEOUT_S = 60
_TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")


class DownloadError(RuntimeError):
    """A download that failed or arrived incomplete; no final file was written."""


class ChecksumError(DownloadError):
    """A downloaded file whose checksum is not the expected one; the partial file was deleted."""


class UnsafeArchiveError(ValueError):
    """An archive member that would land outside the destination folder (or is a device file)."""


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Downloads ``url`` to ``dest`` through ``dest.part``, verifying size and checksum.

    A ``dest`` that already exists and matches the given checksums is returned untouched. A partial
    ``dest.part`` is continued with an HTTP ``Range`` request (or a seek for ``file://`` URLs) when
    ``resume`` is true; a server that ignores the range restarts the file from the beginning.

    Args:
        url: ``http(s)://`` or ``file://`` URL.
        dest: final path of the file.
        sha256: expected hex SHA-256, if known.
        md5: expected hex MD5, if known.
        resume: continue an existing ``.part`` file instead of starting over.
        progress: show a progress bar.

    Returns:
        ``dest``.

    Raises:
        DownloadError: the transfer failed or ended short of its announced length (``.part`` kept).
        ChecksumError: the bytes arrived but do not match (``.part`` deleted).
    """
    dest = Path(dest)
    expected = {name: value.lower() for name, value in (("sha256", sha256), ("md5", md5)) if value}
    if dest.is_file() and not _mismatches(dest, expected):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if not resume:
        part.unlink(missing_ok=True)
    _fetch(url, part, progress=progress)
    bad = _mismatches(part, expected)
    if bad:
        part.unlink()
        algo, want, got = bad[0]
        raise ChecksumError(
            f"checksum mismatch for {dest.name}: expected {algo} {want}, got {got}; "
            "the download was deleted, run again to retry"
        )
    os.replace(part, dest)
    return dest


def _mismatches(path: Path, expected: dict[str, str]) -> list[tuple[str, str, str]]:
    """(algorithm, expected, actual) for every checksum of ``path`` that differs."""
    found = [(algo, want, file_digest(path, algo)) for algo, want in expected.items()]
    return [item for item in found if item[1] != item[2]]


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, part: Path, *, progress: bool) -> None:
    offset = part.stat().st_size if part.exists() else 0
    try:
        response, start, total = _open(url, offset)
    except urllib.error.HTTPError as err:
        if err.code != 416 or offset == 0:
            raise DownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}") from err
        part.unlink()  # the server cannot serve our range: the .part is stale, start over
        response, start, total = _open(url, 0)
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"cannot download {url}: {err}") from err
    with response, open(part, "ab" if start else "wb") as sink:
        _copy(response, sink, url, start, total, progress)
    received = part.stat().st_size
    if total is not None and received != total:
        raise DownloadError(
            f"download of {url} was truncated: received {received} of {total} bytes. "
            f"The partial file {part} was kept; run again to resume."
        )


def _open(url: str, offset: int) -> tuple[BinaryIO, int, int | None]:
    """Opens ``url`` at byte ``offset`` if possible; returns (stream, actual start, total size)."""
    headers = {"User-Agent": "deeplab-data"}
    if offset and not url.startswith("file:"):
        headers["Range"] = f"bytes={offset}-"
    response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)
    length = response.headers.get("Content-Length")
    size = int(length) if length is not None else None
    if url.startswith("file:"):
        start = offset if size is not None and offset <= size else 0
        response.seek(start)  # urllib's file handler ignores Range headers
        return response, start, size
    if response.status == 206:
        match = re.search(r"/(\d+)\s*$", response.headers.get("Content-Range", ""))
        total = int(match.group(1)) if match else (offset + size if size is not None else None)
        return response, offset, total
    return response, 0, size


def _copy(source: BinaryIO, sink: BinaryIO, url: str, start: int, total: int | None, progress: bool) -> None:
    name = url.rsplit("/", 1)[-1]
    with tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=name, disable=not progress) as bar:
        try:
            while chunk := source.read(_CHUNK):
                sink.write(chunk)
                bar.update(len(chunk))
        except (http.client.IncompleteRead, ConnectionError, TimeoutError) as err:
            sink.flush()
            raise DownloadError(
                f"download of {url} was interrupted ({err!r}); the partial file was kept, run again to resume"
            ) from err


def extract(archive: Path, dest_dir: Path) -> Path:
    """Unpacks a ``.zip``, ``.tar``, ``.tgz`` / ``.tar.gz`` (``.bz2``, ``.xz``) archive into ``dest_dir``.

    Every member is checked first: absolute paths, ``..`` components, links pointing outside the
    destination and device files are rejected before anything is written. Members are unpacked
    into a hidden folder inside ``dest_dir``; the archive's top-level entries are renamed into
    place only after all of them are out, so an interrupted extraction leaves no partial tree.

    Returns:
        ``dest_dir``.

    Raises:
        UnsafeArchiveError: naming the offending member.
        FileExistsError: a top-level entry of the archive already exists in ``dest_dir``.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    staging = dest_dir / f".{archive.name}.extracting"
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of an interrupted run
    staging.mkdir()
    try:
        _unpack(archive, staging)
        entries = sorted(staging.iterdir())
        clashes = [str(dest_dir / e.name) for e in entries if (dest_dir / e.name).exists()]
        if clashes:
            raise FileExistsError(f"extracting {archive.name} would overwrite {', '.join(clashes)}")
        for entry in entries:
            os.replace(entry, dest_dir / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest_dir


def _unpack(archive: Path, into: Path) -> None:
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                _check_member(info.filename, archive)
            bundle.extractall(into)
    elif name.endswith(_TAR_SUFFIXES):
        with tarfile.open(archive, "r:*") as bundle:
            members = bundle.getmembers()
            for member in members:
                _check_tar_member(member, archive)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12: a second line of defence
                bundle.extractall(into, members=members, filter="data")
            else:
                bundle.extractall(into, members=members)
    else:
        raise ValueError(f"unknown archive type: {archive} (expected .zip, .tar, .tgz, .tar.gz)")


def _check_member(name: str, archive: Path) -> str:
    """Returns the normalised member path, or raises if it would resolve outside the destination."""
    normal = posixpath.normpath(name.replace("\\", "/"))
    escapes = normal == ".." or normal.startswith("../")
    if escapes or normal.startswith("/") or re.match(r"^[A-Za-z]:", normal):
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} would be written outside the destination")
    return normal


def _check_tar_member(member: tarfile.TarInfo, archive: Path) -> None:
    path = _check_member(member.name, archive)
    if member.isdev():
        raise UnsafeArchiveError(f"{archive.name}: member {member.name!r} is a device or FIFO")
    if member.issym():
        _check_member(posixpath.join(posixpath.dirname(path), member.linkname), archive)
    elif member.islnk():
        _check_member(member.linkname, archive)
