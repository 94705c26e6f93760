"""Checkpoints: written atomically, read with ``weights_only=True``, self-describing (config inside)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config, from_dict
from ..models import Segmenter, create_model


@dataclass
class Checkpoint:
    """What a checkpoint file holds, besides the tensors."""

    config: Config
    classes: list[str]
    palette: list[tuple[int, int, int]]
    step: int
    best_miou: float
    raw: dict[str, Any]


def save_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None, step: int,
                    best_miou: float, config: Config, classes: list[str], palette: list) -> None:
    """Writes to a temporary file beside ``path`` and renames it, so a crash never leaves half a file."""
    path = Path(path)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "best_miou": best_miou,
        "rng": rng,
        "config": config.to_dict(),
        "classes": list(classes),
        "palette": [list(colour) for colour in palette],
        "format": "deeplab-checkpoint-1",
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Reads a checkpoint safely (no unpickling of arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(raw, dict) or raw.get("format") != "deeplab-checkpoint-1":
        raise ValueError(f"{path} is not a deeplab training checkpoint (for plain state dicts use "
                         "create_model(..., weights=PATH))")
    palette = [tuple(colour) for colour in raw["palette"]]
    return Checkpoint(from_dict(raw["config"]), raw["classes"], palette, raw["step"], raw["best_miou"], raw)


def build_model(config: Config, num_classes: int, *, output_stride: int | None = None,
                with_weights: bool = True) -> Segmenter:
    """The model a config describes (the training stack's single place that maps config -> builder)."""
    m = config.model
    kwargs: dict[str, Any] = {"num_classes": num_classes, "output_stride": output_stride or m.output_stride}
    if m.atrous_rates is not None:
        kwargs["atrous_rates"] = tuple(m.atrous_rates)
    if m.aux_loss:
        kwargs["aux_loss"] = True
    if m.pretrained_backbone and with_weights:
        kwargs["pretrained_backbone"] = m.pretrained_backbone
    if m.weights and with_weights:
        kwargs["weights"] = m.weights
    return create_model(m.name, **kwargs)


def load_checkpoint(path: str | Path, *, output_stride: int | None = None,
                    device: str | torch.device = "cpu") -> tuple[Segmenter, Checkpoint]:
    """Rebuilds the model a checkpoint was trained with, optionally at another output stride, in eval mode."""
    checkpoint = read_checkpoint(path)
    model = build_model(checkpoint.config, len(checkpoint.classes), output_stride=output_stride,
                        with_weights=False)
    model.load_state_dict(checkpoint.raw["model"])
    return model.to(device).eval(), checkpoint
