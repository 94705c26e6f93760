"""The Hugging Face Hub: ``hf-hub:org/name[@revision]`` names, the files of a model repo, uploads.

Everything goes through huggingface_hub's own API (``hf_hub_download``, ``HfApi``, its cache), imported
on first use so that ``import deeplab`` stays light. Only JSON and safetensors files are ever fetched
(:data:`READ_FILES`): a repo that holds its weights only as pickles (``pytorch_model.bin``, ``.pt``) is
refused with the list of what it holds, and no code from a repo is ever run. Offline
(``HF_HUB_OFFLINE=1``), names whose files are in the local cache load; others fail naming the repo, the
file and the cache folder. What the files mean is :mod:`deeplab.modelfile`'s job; what
``save_pretrained`` writes is :mod:`deeplab.hubfolder`'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

HUB_PREFIX = "hf-hub:"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PREPROCESSOR_NAME = "preprocessor_config.json"  # transformers' image processor: the input normalisation
# The only files deeplab reads from a repo: JSON and safetensors, never a pickle.
READ_FILES = (CONFIG_NAME, WEIGHTS_NAME, PREPROCESSOR_NAME)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class HubName:
    """A model repo on the Hub and, optionally, a revision (branch, tag or commit)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


class HubFileMissing(FileNotFoundError):
    """A file deeplab needs is not in the repo (or, offline, not in the local cache)."""


def parse_hub_name(source: object) -> HubName | None:
    """The :class:`HubName` of ``hf-hub:org/name[@revision]`` (a ``str`` or a ``Path`` holding one), else None.

    Raises:
        ValueError: it starts with ``hf-hub:`` but what follows is not ``org/name``.
    """
    if not isinstance(source, str | Path):
        return None
    text = str(source)
    if not text.startswith(HUB_PREFIX):
        return None
    repo_id, _, revision = text[len(HUB_PREFIX):].partition("@")
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or (revision == "" and "@" in text):
        raise ValueError(f"{text!r} is not a Hub model name: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    return HubName(repo_id, revision or None)


def looks_like_repo_id(text: str) -> bool:
    """``org/name`` (exactly one slash, Hub characters): what ``from_pretrained`` takes as a Hub name."""
    return bool(_REPO_ID.fullmatch(text))


def cache_folder() -> Path:
    """Where huggingface_hub keeps downloaded repos (``HF_HUB_CACHE``, by default ``HF_HOME/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_file(name: HubName, filename: str) -> Path:
    """The local path of ``filename`` of the repo: from the cache, or downloaded into it.

    Raises:
        HubFileMissing: the repo has no such file (saying what it holds), or offline it is not cached.
        FileNotFoundError: no such repo or revision (or a private one without a token).
        RuntimeError: the Hub could not be reached for another reason.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if filename not in READ_FILES:
        raise ValueError(f"deeplab reads only {', '.join(READ_FILES)} from a repo, not {filename}")
    try:
        return Path(hf_hub_download(name.repo_id, filename, revision=name.revision))
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(f"{name}: no such model repo on the Hugging Face Hub (a private or gated one needs "
                                "a token: `hf auth login` or HF_TOKEN)") from err
    except RevisionNotFoundError as err:
        raise FileNotFoundError(f"{name}: the repo has no revision {name.revision!r}") from err
    except LocalEntryNotFoundError as err:  # offline, or the Hub unreachable, and the file not cached
        reason = "HF_HUB_OFFLINE is set" if _offline() else "the Hub could not be reached"
        held = cached_files(name)
        holds = f"; the cached snapshot holds {', '.join(held)}" if held else ""
        raise HubFileMissing(f"{name}: {filename} is not in the local Hugging Face cache ({cache_folder()}) and "
                             f"{reason}{holds}. Download it once online (or set HF_HOME / HF_HUB_CACHE to the cache "
                             "that holds it)") from err
    except EntryNotFoundError as err:
        raise HubFileMissing(missing_file_message(name, filename, repo_files(name))) from err
    except HfHubHTTPError as err:
        raise RuntimeError(f"{name}: could not fetch {filename} from the Hub ({err})") from err


def missing_file_message(source: object, filename: str, held: Iterable[str]) -> str:
    """Why a model repo or folder without ``filename`` is refused, naming what it holds."""
    held = sorted(held)
    pickles = [name for name in held if name.endswith(PICKLE_SUFFIXES)]
    text = f"{source} has no {filename}; it holds {', '.join(held) or 'nothing'}. deeplab reads a model from " \
           f"{CONFIG_NAME} and {WEIGHTS_NAME} (safetensors) only"
    if pickles:
        text += f"; pickle files ({', '.join(pickles)}) are never loaded, as unpickling can run arbitrary code"
    return text


def repo_files(name: HubName) -> list[str]:
    """The files of the repo at its revision, from the Hub (offline: those in the local cache)."""
    if _offline():
        return cached_files(name)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return sorted(HfApi().list_repo_files(name.repo_id, revision=name.revision))
    except (HfHubHTTPError, OSError):
        return cached_files(name)


def cached_files(name: HubName) -> list[str]:
    """The files of the repo's cached snapshot for its revision (``main`` by default), as huggingface_hub's
    cache scan sees them; empty when nothing of it is cached."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_folder())
    except CacheNotFound:
        return []
    revision = name.revision or "main"
    for repo in info.repos:
        if repo.repo_id != name.repo_id or repo.repo_type != "model":
            continue
        for cached in repo.revisions:
            if revision in cached.refs or cached.commit_hash.startswith(revision):
                return sorted(str(file.file_path.relative_to(cached.snapshot_path)) for file in cached.files)
    return []


def upload_model_folder(folder: Path, repo_id: str, *, private: bool = False, message: str | None = None) -> str:
    """Creates the model repo if needed and uploads ``folder`` as one commit; returns the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    repo = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), repo_type="model",
                               commit_message=message or "Upload deeplab model")
    return str(commit.commit_url)
