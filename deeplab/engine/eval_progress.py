"""Where a stopped ``deeplab eval`` left off: the images it had evaluated and their confusion matrix, kept in the
cache so that the same command with ``--resume`` evaluates only the rest and reports the whole split's metrics.

The file is named by a hash of everything the metrics depend on (the model file, the config's data and eval
sections, the protocol), so a resumed evaluation can only add images of the same evaluation to it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..constants import cache_dir
from ..imageio import atomic_write


@dataclass
class EvalProgress:
    """Images of the split already evaluated (dataset indices, sorted) and their summed confusion matrix."""

    indices: list[int]
    confusion: torch.Tensor


# Settings of the config's sections that change how fast an evaluation runs, not its metrics: a resumed run may
# change them (another batch size, more loader workers) and still goes on from the saved progress.
SPEED_ONLY = {"data": ("num_workers", "verify"), "eval": ("batch_size", "crf_workers")}


def progress_file(key: Mapping[str, Any], ignore: Mapping[str, Sequence[str]] = SPEED_ONLY) -> Path:
    """The cache file of the evaluation that ``key`` (JSON-able: model, data, protocol) describes; the entries
    ``ignore`` names (section -> keys) leave the name unchanged."""
    kept = {section: {k: v for k, v in value.items() if k not in ignore.get(section, ())}
            if isinstance(value, Mapping) else value for section, value in key.items()}
    digest = hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return cache_dir() / "eval_progress" / f"{digest}.json"


def model_identity(source: str | Path) -> dict[str, Any]:
    """What names a model source for :func:`progress_file`: a file's resolved path, size and modification time
    (a retrained checkpoint is another model), else the name itself (a published weights or Hub name)."""
    path = Path(source)
    if path.exists():
        stat = path.stat()
        return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"name": str(source)}


def save_progress(path: Path, progress: EvalProgress, total: int) -> None:
    """Writes ``progress`` (of a split of ``total`` images) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as handle:
        json.dump({"images_total": total, "indices": progress.indices, "shape": list(progress.confusion.shape),
                   "confusion": progress.confusion.reshape(-1).tolist()}, handle)


def load_progress(path: Path, total: int, shape: tuple[int, ...]) -> EvalProgress | None:
    """The progress saved at ``path``, or None where there is none.

    Raises:
        ValueError: the file is damaged or does not fit this split (``total`` images, a ``shape`` confusion
            matrix), naming it and how to start over.
    """
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        indices = sorted({int(index) for index in saved["indices"]})
        confusion = torch.tensor(saved["confusion"], dtype=torch.int64).reshape(saved["shape"])
        fits = saved["images_total"] == total and tuple(confusion.shape) == tuple(shape) \
            and all(0 <= index < total for index in indices)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"cannot resume from {path} ({type(err).__name__}: {err}); delete it to start over") from err
    if not fits:
        raise ValueError(f"cannot resume from {path}: it was saved for {saved['images_total']} image(s) and a "
                         f"{tuple(confusion.shape)} confusion matrix, this split has {total} and "
                         f"{tuple(shape)}; delete it to start over")
    return EvalProgress(indices, confusion)
