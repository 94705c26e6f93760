"""``deeplab push``: a training run or a checkpoint -> a Hugging Face Hub model repo.

The folder uploaded is what ``Segmenter.save_pretrained`` writes (``config.json``, ``model.safetensors``,
``README.md``), its card filled from the checkpoint's config and the run's ``metrics.json`` (what
``deeplab eval --json`` writes). ``--dry-run DIR`` writes that folder and stops; otherwise it is written
to a temporary folder and uploaded with huggingface_hub's ``create_repo`` and ``upload_folder``.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .hub import looks_like_repo_id, upload_model_folder
from .modelfile import read_model

RUN_CHECKPOINTS = ("best.pt", "last.pt")  # a run folder's checkpoint, first found
METRICS_NAME = "metrics.json"


@dataclass
class PushResult:
    """What ``push_model`` did: the folder it wrote, the files in it, and the commit URL if it uploaded."""

    folder: Path
    files: list[str]
    checkpoint: Path
    metrics: Path | None
    url: str | None = None


def run_files(source: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint, metrics.json or None) of a run folder (``best.pt``, else ``last.pt``) or a checkpoint file."""
    source = Path(source)
    if source.is_dir():
        checkpoint = next((source / name for name in RUN_CHECKPOINTS if (source / name).is_file()), None)
        if checkpoint is None:
            raise FileNotFoundError(f"{source} is a folder without {' or '.join(RUN_CHECKPOINTS)}: give a training "
                                    "run's folder or a checkpoint file")
        folder = source
    elif source.is_file():
        checkpoint, folder = source, source.parent
    else:
        raise FileNotFoundError(f"no run folder or checkpoint at {source}")
    metrics = folder / METRICS_NAME
    return checkpoint, metrics if metrics.is_file() else None


def read_metrics(path: Path, classes: list[str]) -> dict[str, Any]:
    """A ``deeplab eval --json`` file's metrics; a file of another kind is a ``ValueError`` naming it."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    miou = metrics.get("miou") if isinstance(metrics, dict) else None
    if not isinstance(miou, int | float) or not (math.isfinite(miou) and 0.0 <= miou <= 1.0):
        raise ValueError(f"{path} is not a metrics file of `deeplab eval --json` (expected a 'miou' between 0 and 1)")
    per_class = metrics.get("per_class_iou")
    if isinstance(per_class, dict) and list(per_class) != list(classes):
        raise ValueError(f"{path} scores the classes {list(per_class)[:4]}..., not the model's {classes[:4]}...")
    return metrics


def prepare_folder(source: str | Path, folder: str | Path, *, repo_id: str,
                   license: str = "apache-2.0") -> PushResult:
    """Writes the folder ``deeplab push`` uploads for a run folder or checkpoint into ``folder``."""
    if not looks_like_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hub repo name: expected ORG/NAME")
    checkpoint, metrics_path = run_files(source)
    model_file = read_model(checkpoint)
    card = model_file.card
    if card.is_export:
        raise ValueError(f"{checkpoint} is an export ({card.format}); push a checkpoint, whose weights the Hub "
                         "folder holds as safetensors")
    metrics = read_metrics(metrics_path, card.classes) if metrics_path is not None else None
    model = model_file.open()
    folder = model.save_pretrained(folder, classes=card.classes, palette=card.palette, config=card.config,
                                   metrics=metrics, repo_id=repo_id, license=license)
    return PushResult(folder, sorted(p.name for p in folder.iterdir()), checkpoint, metrics_path)


def push_model(source: str | Path, repo_id: str, *, private: bool = False, dry_run: str | Path | None = None,
               license: str = "apache-2.0") -> PushResult:
    """Writes the Hub folder of a run or checkpoint and uploads it to ``repo_id`` (created if needed, private
    with ``private``); with ``dry_run``, writes the folder there and uploads nothing."""
    if dry_run is not None:
        return prepare_folder(source, dry_run, repo_id=repo_id, license=license)
    with tempfile.TemporaryDirectory(prefix="deeplab-push-") as staging:
        result = prepare_folder(source, staging, repo_id=repo_id, license=license)
        result.url = upload_model_folder(result.folder, repo_id, private=private,
                                         message=f"Upload {result.checkpoint.name} with deeplab push")
    return result
