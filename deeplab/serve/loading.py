"""The one place that turns ``deeplab serve``'s model options into a predictor (the app never builds one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..inference import Predictor


@dataclass(frozen=True)
class ModelInfo:
    """What ``GET /info`` says about the served model besides its classes and palette."""

    name: str = "unknown"
    output_stride: int | None = None
    source: str | None = None
    device: str = "cpu"
    precision: str = "fp32"


def load_predictor(
    checkpoint: str | Path | None = None,
    *,
    model: str | Path | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    output_stride: int | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | None = None,
) -> tuple[Predictor, ModelInfo]:
    """Builds the predictor ``deeplab serve`` runs, with the same options as ``deeplab predict``.

    Args:
        checkpoint: a training checkpoint (classes, palette and config inside).
        model: an export from ``deeplab export`` (ONNX, TorchScript) or a checkpoint; exclusive with ``checkpoint``.
        precision: ``fp32``, ``bf16`` or ``fp16`` for a checkpoint (see :class:`~deeplab.inference.Predictor`);
            an export runs at the precision it was exported at.
        device: where the model runs (``deeplab serve --device auto`` picks it as ``deeplab predict`` does).
        output_stride: rebuild a checkpoint's model at this output stride (default: the training one).
        scales, flip, window: multi-scale, flip and sliding-window inference, as in ``deeplab predict``.

    Raises:
        ValueError, FileNotFoundError: for a missing or unreadable model file, or both/neither given.
    """
    if (checkpoint is None) == (model is None):
        raise ValueError("give exactly one model to serve: --checkpoint PATH or --model PATH")
    path = Path(checkpoint if checkpoint is not None else model)
    predictor = Predictor.from_file(path, output_stride=output_stride, precision=precision, device=device,
                                    scales=scales, flip=flip, window=window)
    spec = predictor.spec
    info = ModelInfo(name=spec.name if spec is not None else "unknown", output_stride=predictor.output_stride,
                     source=str(path), device=str(predictor.device), precision=predictor.precision)
    return predictor, info
