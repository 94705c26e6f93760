"""The one reader of files written by ``torch.save`` (and ``.safetensors``): nothing is ever unpickled.

Every ``.pt``/``.pth`` the package reads (checkpoints, state dicts, backbone weights, converted zoo
models) comes through :func:`read_torch_file` or :func:`fetch_torch_file`, with ``weights_only=True``.
Which kind of model file it is, and what it becomes, is :mod:`deeplab.modelfile`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def torch_file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot have been written by ``torch.save``, judged from its first bytes; None if it may have.

    ``torch.save`` writes a zip archive (``PK``), or a pickle (first byte 0x80) in its legacy format;
    anything else would only reach the unpickler's opaque errors (a text file gives ``KeyError: 101``).
    """
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head:
        return "it is empty"
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        return None
    try:
        head.decode("utf-8")
        text = b"\x00" not in head
    except UnicodeDecodeError as err:
        text = err.start >= len(head) - 3 and b"\x00" not in head  # a character cut by the 512-byte read
    if text:
        return "it is a text file, not a file written by torch.save"
    return "it is neither a zip archive nor a pickle, the two formats torch.save writes"


def read_torch_file(path: str | Path, *, what: str = "weights file", expected: str = "a .pt/.pth state dict or "
                    "checkpoint, or a .safetensors file") -> dict[str, Any]:
    """The dict a ``torch.save`` file (or a ``.safetensors`` file) holds, read safely.

    Args:
        path: the file.
        what: how errors name the file (``"checkpoint"``, ``"weights file"``).
        expected: what the caller wanted, for the error about a file of another kind.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a torch file, unreadable or truncated, or not holding a dict; the message names ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{path} is not a readable .safetensors file ({type(err).__name__}: {err})") from err
    problem = torch_file_problem(path)
    if problem is not None:
        raise ValueError(f"{path} is not a {what}: {problem} (expected {expected})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path} is not a readable {what} ({type(err).__name__}: {err})") from err
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a dict (found {type(state).__name__}; expected {expected})")
    return dict(state)


def fetch_torch_file(source: str, *, what: str, hint: str, check_hash: bool = False) -> dict[str, Any]:
    """A local file, or a URL downloaded once through torch.hub's cache (``file://`` works too).

    ``what`` names the weights in errors (``"ImageNet resnet101 weights"``); ``hint`` tells the user what to do
    without internet; ``check_hash`` verifies the hash prefix that torch.hub file names carry (torchvision's
    published weights).
    """
    if Path(source).is_file():
        return read_torch_file(source, what=what)
    try:
        return torch.hub.load_state_dict_from_url(source, map_location="cpu", progress=True, check_hash=check_hash,
                                                  weights_only=True)
    except Exception as err:  # network and hash errors come in many types; all mean the same to the user
        raise RuntimeError(f"could not fetch the {what} from {source} ({type(err).__name__}: {err}). "
                           f"{hint}") from err
