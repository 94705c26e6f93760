"""What a run records as it goes: JSON lines (mirrored to TensorBoard), throughput and peak memory."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch


class RunLog:
    """JSON lines in ``run_dir/log.jsonl``, mirrored to TensorBoard when it is installed.

    With ``enabled=False`` (every process but rank 0) it writes nothing.
    """

    def __init__(self, run_dir: Path, *, enabled: bool = True) -> None:
        self.file, self.tensorboard = None, None
        if not enabled:
            return
        self.file = (run_dir / "log.jsonl").open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            pass

    def write(self, record: dict[str, Any]) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self.tensorboard.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory so far, in MiB: allocated tensors on a GPU; the process's resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class Throughput:
    """Training images per second (the global batch, over the time spent in training steps, data
    loading included and evaluations left out) since the last :meth:`take`."""

    def __init__(self, global_batch: int, device: torch.device) -> None:
        self.global_batch, self.device = global_batch, device
        self.steps, self.seconds = 0, 0.0

    def add(self, seconds: float) -> None:
        self.steps += 1
        self.seconds += seconds

    def take(self) -> dict[str, float]:
        """``images_per_s`` and ``peak_memory_mb`` for a log record; starts a new interval."""
        record = {}
        if self.seconds > 0:
            record["images_per_s"] = round(self.steps * self.global_batch / self.seconds, 3)
        peak = peak_memory_mb(self.device)
        if peak is not None:
            record["peak_memory_mb"] = round(peak, 1)
        self.steps, self.seconds = 0, 0.0
        return record
