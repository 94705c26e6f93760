"""download() and extract(), offline: file:// URLs and a throw-away HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deeplab.data import download as download_module
from deeplab.data.download import ChecksumError, DownloadError, UnsafeArchiveError, download, extract

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "archive.bin"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def test_file_url_with_both_checksums(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "archive.bin"
    result = download(
        source.as_uri(), dest, md5=hashlib.md5(PAYLOAD).hexdigest(),
        sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False,
    )  # fmt: skip
    assert result == dest and dest.read_bytes() == PAYLOAD
    assert not dest.with_name("archive.bin.part").exists()


def test_checksum_mismatch_deletes_everything(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "archive.bin"
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as err:
        download(source.as_uri(), dest, md5=wrong, progress=False)
    message = str(err.value)
    assert "archive.bin" in message and wrong in message and hashlib.md5(PAYLOAD).hexdigest() in message
    assert not dest.exists() and not dest.with_name("archive.bin.part").exists()


def test_resume_from_part_file_continues_at_its_offset(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "archive.bin"
    # The .part holds marker bytes: a restart would overwrite them, a resume keeps them.
    dest.with_name("archive.bin.part").write_bytes(b"X" * 4000)
    download(source.as_uri(), dest, progress=False)
    assert dest.read_bytes() == b"X" * 4000 + PAYLOAD[4000:]


def test_no_resume_starts_over(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "archive.bin"
    dest.with_name("archive.bin.part").write_bytes(b"X" * 4000)
    download(source.as_uri(), dest, resume=False, md5=hashlib.md5(PAYLOAD).hexdigest(), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_existing_verified_file_is_kept(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "archive.bin"
    dest.write_bytes(PAYLOAD)
    source.unlink()  # would fail if it tried to download
    assert download(source.as_uri(), dest, md5=hashlib.md5(PAYLOAD).hexdigest(), progress=False) == dest


def test_missing_source_is_a_download_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="cannot download"):
        download((tmp_path / "nope.tar").as_uri(), tmp_path / "nope.tar", progress=False)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD; honours Range unless told not to; can lie about Content-Length."""

    honour_range = True
    truncate_to: int | None = None
    ranges_seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        start, status = 0, 200
        range_header = self.headers.get("Range")
        if range_header:
            type(self).ranges_seen.append(range_header)
        if range_header and self.honour_range:
            start, status = int(range_header.split("=")[1].rstrip("-")), 206
        body = PAYLOAD[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()
        self.wfile.write(body[: self.truncate_to] if self.truncate_to is not None else body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"ranges_seen": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/archive.bin", handler
    httpd.shutdown()
    httpd.server_close()


def test_http_resume_uses_range_request(server: tuple[str, type[_Handler]], tmp_path: Path) -> None:
    url, handler = server
    dest = tmp_path / "archive.bin"
    dest.with_name("archive.bin.part").write_bytes(PAYLOAD[:3000])
    download(url, dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert handler.ranges_seen == ["bytes=3000-"] and dest.read_bytes() == PAYLOAD


def test_http_server_without_range_support_restarts(
    server: tuple[str, type[_Handler]], tmp_path: Path
) -> None:
    url, handler = server
    handler.honour_range = False
    dest = tmp_path / "archive.bin"
    dest.with_name("archive.bin.part").write_bytes(b"X" * 3000)
    download(url, dest, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_truncated_http_download_leaves_no_final_file(
    server: tuple[str, type[_Handler]], tmp_path: Path
) -> None:
    url, handler = server
    handler.truncate_to = 5000  # Content-Length says 10,240, the connection closes after 5,000
    dest = tmp_path / "archive.bin"
    with pytest.raises(DownloadError, match="truncated: received 5000 of 10240 bytes"):
        download(url, dest, progress=False)
    assert not dest.exists()
    assert dest.with_name("archive.bin.part").stat().st_size == 5000  # kept for resuming
    handler.truncate_to = None
    download(url, dest, md5=hashlib.md5(PAYLOAD).hexdigest(), progress=False)
    assert dest.read_bytes() == PAYLOAD and handler.ranges_seen == ["bytes=5000-"]


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] = ()) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith((".tgz", ".tar.gz")) else "w") as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
        for name, target in dict(links).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            bundle.addfile(info)
    return path


def test_extract_tar_tgz_zip(tmp_path: Path) -> None:
    files = {"top/a.txt": b"a", "top/sub/b.txt": b"b"}
    for name in ("x.tar", "x.tgz", "x.tar.gz"):
        dest = tmp_path / name.replace(".", "_")
        extract(_tar(tmp_path / name, files), dest)
        assert (dest / "top" / "sub" / "b.txt").read_bytes() == b"b"
        assert sorted(p.name for p in dest.iterdir()) == ["top"]  # no staging folder left
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    extract(tmp_path / "x.zip", tmp_path / "zip_out")
    assert (tmp_path / "zip_out" / "top" / "a.txt").read_bytes() == b"a"


@pytest.mark.parametrize(
    ("members", "links"),
    [
        ({"top/ok.txt": b"ok", "../evil.txt": b"x"}, {}),
        ({"top/../../evil.txt": b"x"}, {}),
        ({"/tmp/evil.txt": b"x"}, {}),
        ({"top/ok.txt": b"ok"}, {"top/link": "../../evil.txt"}),
        ({"top/ok.txt": b"ok"}, {"top/link": "/etc/passwd"}),
    ],
)
def test_extract_rejects_members_escaping_the_destination(
    tmp_path: Path, members: dict[str, bytes], links: dict[str, str]
) -> None:
    dest = tmp_path / "root" / "dest"
    with pytest.raises(UnsafeArchiveError, match="bad.tar"):
        extract(_tar(tmp_path / "bad.tar", members, links), dest)
    assert list(dest.iterdir()) == []  # nothing, not even the safe members, was written
    assert not (tmp_path / "root" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_extract_rejects_zip_traversal(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as bundle:
        bundle.writestr("top/ok.txt", b"ok")
        bundle.writestr("../evil.txt", b"x")
    with pytest.raises(UnsafeArchiveError, match="'../evil.txt'"):
        extract(tmp_path / "bad.zip", tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_extract_allows_links_that_stay_inside(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "ok.tar", {"top/a/real.txt": b"r"}, {"top/b/link.txt": "../a/real.txt"})
    extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "top" / "b" / "link.txt").read_bytes() == b"r"


def test_interrupted_extraction_leaves_no_partial_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _tar(tmp_path / "x.tar", {"top/a.txt": b"a", "top/b.txt": b"b"})
    real_unpack = download_module._unpack

    def unpack_then_die(archive: Path, into: Path) -> None:
        real_unpack(archive, into)  # every member is on disk, in the staging folder
        raise KeyboardInterrupt

    monkeypatch.setattr(download_module, "_unpack", unpack_then_die)
    with pytest.raises(KeyboardInterrupt):
        extract(archive, tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def test_extract_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "dest" / "top").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="top"):
        extract(_tar(tmp_path / "x.tar", {"top/a.txt": b"a"}), tmp_path / "dest")
