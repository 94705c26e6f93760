"""Device names (``auto``, ``cpu``, ``cuda``, ``cuda:N``) as torch devices, for every command."""

from __future__ import annotations

import torch


def resolve_device(name: str, local_rank: int = 0, *, option: str = "--device") -> torch.device:
    """``name`` as a device: ``auto`` is CUDA when available; several processes on one node each take the
    GPU of their ``LOCAL_RANK`` when ``name`` names no index. ``option`` names the setting in errors."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"{option}={name!r} but CUDA is not available on this machine")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"{option}={name!r} is not a device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and device.index is None:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                               "start at most one process per GPU (torchrun --nproc-per-node)")
        device = torch.device("cuda", local_rank)
    return device
