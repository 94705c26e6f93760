"""The one place that turns ``deeplab serve``'s model options into a predictor (the app never builds one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
    device: str = "auto",
    output_stride: int | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | None = None,
) -> tuple[Predictor, ModelInfo]:
    """Builds the predictor ``deeplab serve`` runs, with the same options as ``deeplab predict``.

    Args:
        checkpoint: a training checkpoint (classes, palette and config inside).
        model: an exported model file (ONNX / TorchScript); needs the deploy work's Predictor backends.
        precision: ``fp32``; other precisions need the deploy work's Predictor backends.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        output_stride: rebuild the model at this output stride (default: the training one).
        scales, flip, window: multi-scale, flip and sliding-window inference, as in ``deeplab predict``.

    Raises:
        NotImplementedError: for ``model`` or a precision other than fp32, until the deploy work lands.
        ValueError, FileNotFoundError: for a missing or unreadable checkpoint.
    """
    if model is not None:
        raise NotImplementedError(
            f"--model {model}: serving an exported model file needs the deploy work (Predictor backends for "
            "ONNX Runtime / TorchScript), which this version does not have yet; serve the --checkpoint instead"
        )
    if precision != "fp32":
        raise NotImplementedError(
            f"--precision {precision}: only fp32 is available until the deploy work (Predictor backends with a "
            "precision option) lands"
        )
    if checkpoint is None:
        raise ValueError("give the model to serve: --checkpoint PATH")
    from ..engine.checkpoint import load_checkpoint
    from ..engine.train import resolve_device

    torch_device = resolve_device(device)
    network, ckpt = load_checkpoint(checkpoint, output_stride=output_stride, device=torch_device)
    predictor = Predictor(network, num_classes=len(ckpt.classes), classes=ckpt.classes, palette=ckpt.palette,
                          device=torch_device, scales=scales, flip=flip, window=window)
    info = ModelInfo(name=network.spec.name, output_stride=network.spec.output_stride,
                     source=str(checkpoint), device=str(torch_device), precision=precision)
    return predictor, info
