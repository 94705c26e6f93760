"""Turning ``deeplab serve``'s model options into a predictor (the app never builds one), and what ``/info`` says."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..inference import Predictor
from ..options import InferenceOptions


@dataclass(frozen=True)
class ModelInfo:
    """What ``GET /info`` says about the served model besides its classes and palette."""

    name: str = "unknown"
    output_stride: int | None = None
    source: str | None = None
    device: str = "cpu"
    precision: str = "fp32"
    runtime: str = "torch"


def load_predictor(
    checkpoint: str | Path | None = None,
    *,
    model: str | Path | None = None,
    device: str | torch.device = "cpu",
    output_stride: int | None = None,
    runtime: str | None = None,
    options: InferenceOptions | None = None,
    **option_values: Any,
) -> tuple[Predictor, ModelInfo]:
    """Builds the predictor ``deeplab serve`` runs, with the same options as ``deeplab predict``.

    Args:
        checkpoint: a training checkpoint (classes, palette and config inside).
        model: any model file :meth:`Predictor.from_file` reads (an export, a checkpoint, a TF checkpoint) or a
            published weights name; exclusive with ``checkpoint``.
        device: where the model runs (``deeplab serve --device auto`` picks it as ``deeplab predict`` does).
        output_stride: rebuild a checkpoint's model at this output stride (default: the training one).
        runtime: ``auto`` (default, or ``$DEEPLAB_RUNTIME``), ``torch``, ``onnxruntime``, ``openvino``.
        options, **option_values: the :class:`~deeplab.options.InferenceOptions` (``precision``, ``scales``,
            ``flip``, ``window``, ``crf``, ...); an export runs at the precision it was exported at.

    Raises:
        ValueError, FileNotFoundError: for a missing or unreadable model file, or both/neither given.
    """
    if (checkpoint is None) == (model is None):
        raise ValueError("give exactly one model to serve: --checkpoint PATH or --model PATH")
    source = checkpoint if checkpoint is not None else model
    predictor = Predictor.from_file(source, output_stride=output_stride, device=device, runtime=runtime,
                                    options=options, **option_values)
    return predictor, model_info(predictor, source)


def model_info(predictor: Predictor, source: str | Path) -> ModelInfo:
    """What ``GET /info`` says about ``predictor``, read from ``source``."""
    spec = predictor.spec
    return ModelInfo(name=spec.name if spec is not None else "unknown", output_stride=predictor.output_stride,
                     source=str(source), device=str(predictor.device), precision=predictor.precision,
                     runtime=predictor.runtime.runtime)
