"""A private, offline Hugging Face cache for tests, and repos planted in it in huggingface_hub's real layout.

huggingface_hub writes its cache only while downloading, so a repo is planted here by hand in the layout its
downloads leave (``models--ORG--NAME/blobs/<hash>``, ``snapshots/<commit>/<file>`` linking to the blob,
``refs/<revision>`` holding the commit), the folder named by its own ``repo_folder_name``; every planting is
checked by its own ``scan_cache_dir``, so a layout it would not read fails here rather than in the test.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest


def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HOME in ``tmp_path`` and HF_HUB_OFFLINE=1, for the environment and for huggingface_hub's constants
    (read once at its import); returns the cache folder (``HF_HOME/hub``). Test modules wrap it in a fixture."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def plant(cache: Path, repo_id: str, files: dict[str, bytes | Path], *, revisions: tuple[str, ...] = ("main",)) -> str:
    """Puts a model repo with ``files`` (name -> bytes or a file to copy) into ``cache``; returns its commit."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.file_download import repo_folder_name

    contents = {name: data.read_bytes() if isinstance(data, Path) else data for name, data in files.items()}
    commit = hashlib.sha1(b"".join(name.encode() + data for name, data in sorted(contents.items()))).hexdigest()
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = repo / "snapshots" / commit
    for name, data in contents.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for revision in revisions:
        ref = repo / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
    seen = {r.repo_id: r for r in scan_cache_dir(cache).repos}
    assert repo_id in seen, f"huggingface_hub does not see the planted {repo_id}"
    (revision,) = seen[repo_id].revisions
    assert {f.file_name for f in revision.files} == {Path(n).name for n in contents} and \
        set(revision.refs) == set(revisions)
    return commit


def folder_files(folder: Path) -> dict[str, Path]:
    """Every file of a folder, by name: what ``plant`` takes."""
    return {path.name: path for path in sorted(folder.iterdir()) if path.is_file()}
