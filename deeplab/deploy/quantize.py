"""int8 static quantization of an ONNX model with ONNX Runtime's tools (QDQ, per-channel weights).

The recipe, chosen by measuring accuracy and speed on the DeepLab models (see the README's deploy table):
weights int8 per output channel (7-bit on CPUs without VNNI, where 8-bit products can saturate),
activations uint8 calibrated by min/max over a few training images. The layers whose error reaches the
prediction most directly stay in fp32: the first convolution (it sees the raw normalised image) and every
classifier convolution (output channels = number of classes), so the logits themselves are never
quantized. Everything runs on ONNX Runtime's CPU kernels.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .precision import cpu_has_vnni
from .runners import require_onnx, require_onnxruntime

# Operators quantized: the convolutions carry nearly all of the compute; quantizing the pooling,
# resize and concat nodes between them lets consecutive int8 convolutions skip a dequantize/quantize pair.
QUANTIZED_OPS = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Resize", "Add", "Relu", "Clip")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


@dataclass
class QuantizationSettings:
    """How :func:`quantize_onnx` quantizes (the defaults are the recipe in the module docstring)."""

    per_channel: bool = True
    reduce_range: bool | None = None  # None: 7-bit weights where the CPU lacks VNNI
    method: str = "minmax"
    keep_first_conv: bool = True
    keep_classifier: bool = True
    op_types: Sequence[str] = QUANTIZED_OPS

    def resolved_reduce_range(self) -> bool:
        return (not cpu_has_vnni()) if self.reduce_range is None else self.reduce_range


def fp32_nodes(model_path: str | Path, num_classes: int, settings: QuantizationSettings) -> list[str]:
    """Names of the Conv nodes the settings keep in fp32: the input convolution and the classifiers."""
    onnx = require_onnx()
    graph = onnx.load(str(model_path)).graph
    inputs = {value.name for value in graph.input}
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        reads_image = node.input[0] in inputs
        out_channels = shapes.get(node.input[1], (0,))[0]
        if (settings.keep_first_conv and reads_image) or (settings.keep_classifier and out_channels == num_classes):
            keep.append(node.name)
    return keep


def quantize_onnx(
    fp32_path: str | Path, int8_path: str | Path, batches: Iterable[torch.Tensor], *, num_classes: int,
    settings: QuantizationSettings | None = None,
) -> dict[str, object]:
    """Writes the int8 (QDQ) version of the fp32 ONNX model at ``fp32_path`` to ``int8_path``.

    Args:
        fp32_path: an fp32 model with one image input (dynamic sizes are fine).
        int8_path: where the quantized model goes.
        batches: calibration inputs, normalised float ``N x 3 x H x W`` tensors (sizes may differ).
        num_classes: the model's classes (identifies its classifier convolutions).
        settings: the recipe; default :class:`QuantizationSettings`.

    Returns:
        What was done, for the export's report (method, reduce_range, nodes kept in fp32, images).
    """
    ort = require_onnxruntime()
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = settings or QuantizationSettings()
    if settings.method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {settings.method!r}; valid: {', '.join(CALIBRATION_METHODS)}")
    arrays = [batch.detach().float().cpu().numpy() for batch in batches]
    if not arrays:
        raise ValueError("int8 calibration needs at least one image")

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.rest = iter(arrays)

        def get_next(self):
            array = next(self.rest, None)
            return None if array is None else {input_name: array}

        def rewind(self) -> None:
            self.rest = iter(arrays)

    input_name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    methods = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
               "entropy": q.CalibrationMethod.Entropy}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # shape inference + ONNX Runtime's graph optimisations, as ONNX Runtime recommends before quantizing
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        keep = fp32_nodes(prepared, num_classes, settings)
        q.quantize_static(
            str(prepared), str(int8_path), Reader(), quant_format=q.QuantFormat.QDQ,
            op_types_to_quantize=list(settings.op_types), per_channel=settings.per_channel,
            reduce_range=settings.resolved_reduce_range(), activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8, nodes_to_exclude=keep, calibrate_method=methods[settings.method],
        )
    return {"method": settings.method, "per_channel": settings.per_channel,
            "reduce_range": settings.resolved_reduce_range(), "fp32_nodes": keep, "calibration_images": len(arrays)}
