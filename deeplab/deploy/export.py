"""Export a trained model to ONNX or TorchScript (fp32, bf16, int8), verified against the original.

An export is one file that :meth:`deeplab.inference.Predictor.from_file` (and ``deeplab predict/eval
--model``) runs with nothing else: it carries the model spec, class names, palette, normalisation and
the training config (ONNX ``metadata_props``; a TorchScript extra file). ONNX files take any batch size
and image size. Every export checks itself before it is written: the exported model and the original
run the same inputs (two sizes, two batch sizes) and an fp32 export whose logits differ by more than
1e-3 is an error. An int8 export is calibrated on the checkpoint's own training images (or a folder)
and evaluated on its validation split against the fp32 model; losing more than ``max_miou_drop`` mIoU
points is an error.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from ..config import Config, from_dict
from ..data import eval_transforms
from ..engine.data import build_dataset
from ..engine.evaluate import evaluate_predictor
from ..imageio import ImageReadError, atomic_write, normalize_image
from ..inference import Predictor
from ..metrics import class_map
from ..modelfile import METADATA_KEY, ModelCard, read_model
from ..models import Segmenter, build_with_weights
from ..palettes import default_palette
from ..predict_files import expand_inputs, read_input
from .fastpath import fast_copy
from .onnxfile import quiet_exporters, set_onnx_metadata, trace_input, write_onnx
from .precision import EXPORT_PRECISIONS, PRECISIONS, check_int8
from .quantize import QuantizationSettings, quantize_onnx
from .runners import require_onnx, require_onnxruntime

FORMATS = ("onnx", "torchscript")
FP32_TOLERANCE = 1e-3  # max |logit difference| an fp32 export may have against the original model
# Verification inputs: two batch sizes, two image sizes that are not multiples of the output stride.
VERIFY_SHAPES = ((1, 3, 97, 129), (2, 3, 65, 81))


@dataclass
class ExportReport:
    """What :func:`export_model` wrote and how it checked it.

    Attributes:
        path: the export.
        format: ``onnx`` or ``torchscript``.
        precision: ``fp32``, ``bf16`` or ``int8``.
        output_stride: the stride the model was exported at.
        max_abs_diff: largest |logit difference| against the original fp32 model over the verification inputs.
        agreement: fraction of verification pixels where both predict the same class.
        miou: (int8) the export's mIoU on the validation split, or ``None`` when not measured.
        reference_miou: (int8) the original fp32 model's mIoU on the same images.
        eval_images: (int8) how many validation images the two mIoUs were measured on.
        seconds: export time, verification included.
        notes: anything the user should know (e.g. why accuracy was not measured).
    """

    path: Path
    format: str
    precision: str
    output_stride: int
    max_abs_diff: float
    agreement: float
    miou: float | None = None
    reference_miou: float | None = None
    eval_images: int | None = None
    seconds: float = 0.0
    quantization: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the CLI."""
        lines = [f"wrote {self.path} ({self.format}, {self.precision}, output stride {self.output_stride}) "
                 f"in {self.seconds:.1f} s",
                 f"verified against the original model: max |d logits| = {self.max_abs_diff:.2e}, "
                 f"same class on {100 * self.agreement:.2f}% of pixels"]
        if self.miou is not None and self.reference_miou is not None:
            drop = 100 * (self.reference_miou - self.miou)
            lines.append(f"val mIoU on {self.eval_images} images: {self.precision} {100 * self.miou:.2f}, "
                         f"fp32 {100 * self.reference_miou:.2f} ({drop:+.2f} points lost)")
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


class ExportError(RuntimeError):
    """An export failed its own check; nothing was written."""


def export_model(
    checkpoint: str | Path | Segmenter, out: str | Path, *, format: str = "onnx", precision: str = "fp32",
    output_stride: int | None = None, calibration_images: int = 64, calibration: str | Path | None = None,
    max_miou_drop: float = 1.0, eval_images: int | None = None, quantization: QuantizationSettings | None = None,
    tolerance: float = FP32_TOLERANCE, progress: bool = True, classes: Sequence[str] | None = None,
    palette: Sequence[tuple[int, int, int]] | None = None, config: Config | None = None,
) -> ExportReport:
    """Exports a training checkpoint, or a model in memory, to ``out`` and verifies the result.

    Args:
        checkpoint: a ``.pt`` written by ``deeplab train``, or a model from ``deeplab.create_model`` (it carries
            its spec); for a model, ``classes``, ``palette`` and ``config`` fill the export's card (default:
            ``class_N`` names, the VOC colours, no dataset: int8 then needs ``calibration``).
        out: the file to write (atomically, only once verified).
        format: ``onnx`` (runs on ONNX Runtime) or ``torchscript``.
        precision: ``fp32``; ``bf16`` (TorchScript, bf16 weights and arithmetic); ``int8`` (ONNX, static
            quantization calibrated on ``calibration_images`` training images).
        output_stride: rebuild the model at this stride first (e.g. 8 for the papers' evaluation setting).
        calibration_images: how many images calibrate int8.
        calibration: a folder (or glob) of calibration images, instead of the checkpoint's training split.
        max_miou_drop: int8 only: fail if the export loses more val mIoU points than this against fp32.
        eval_images: int8 only: measure mIoU on the first this-many val images (default all; 0 skips the
            accuracy check).
        quantization: int8 recipe (default :class:`~deeplab.deploy.quantize.QuantizationSettings`).
        tolerance: fp32 only: the largest |logit difference| the export may have against the original.
        progress: show progress bars.
    """
    start = time.perf_counter()
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid choices: {', '.join(FORMATS)}")
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"unknown export precision {precision!r}; valid choices: {', '.join(EXPORT_PRECISIONS)}")
    if format not in PRECISIONS[precision].exports and precision == "bf16":
        raise ValueError("bf16 is not available for ONNX (ONNX Runtime's CPU kernels have no bf16 convolutions); "
                         "use --format torchscript --precision bf16, or --precision int8")
    if format not in PRECISIONS[precision].exports:
        raise ValueError("int8 exports use ONNX Runtime's quantization: use --format onnx --precision int8")
    if precision == "int8":
        check_int8()
    if format == "onnx":
        require_onnx(), require_onnxruntime()
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name such as {out / 'model.onnx'}")
    model, info, run_config = _source(checkpoint, output_stride, classes, palette, config)
    info.format, info.precision = format, precision
    report = ExportReport(out, format, precision, model.spec.output_stride, float("nan"), float("nan"))
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / f"candidate.{'onnx' if format == 'onnx' else 'pt'}"
        if format == "onnx":
            fp32_path = Path(tmp) / "fp32.onnx"
            _write(write_onnx, model, fp32_path, info.to_json() if precision == "fp32" else None, format=format)
            if precision == "int8":
                images = calibration_inputs(run_config, model.spec.mean, model.spec.std, calibration_images,
                                            calibration)
                report.quantization = quantize_onnx(fp32_path, candidate, images, num_classes=model.spec.num_classes,
                                                    settings=quantization)
                set_onnx_metadata(candidate, info.to_json())
            else:
                fp32_path.replace(candidate)
        else:
            _write(_write_torchscript, model, candidate, info, format=format)
        _verify_logits(model, candidate, report, tolerance)
        if precision == "int8":
            _verify_accuracy(model, run_config, candidate, report, max_miou_drop, eval_images, progress)
        with atomic_write(out) as handle, open(candidate, "rb") as source:
            shutil.copyfileobj(source, handle)
    report.seconds = time.perf_counter() - start
    return report


def _source(checkpoint: str | Path | Segmenter, output_stride: int | None, classes: Sequence[str] | None,
            palette: Sequence[tuple[int, int, int]] | None,
            config: Config | None) -> tuple[Segmenter, ModelCard, Config | None]:
    """(the model in eval mode at ``output_stride``, its card, the run's config) of a checkpoint or a model."""
    if isinstance(checkpoint, nn.Module):
        spec = getattr(checkpoint, "spec", None)
        if spec is None:
            raise ValueError("the model has no .spec; build it with deeplab.create_model or deeplab.load_checkpoint")
        model = checkpoint
        if output_stride is not None and output_stride != spec.output_stride:
            model = build_with_weights(spec.at_output_stride(output_stride), checkpoint.state_dict())
        model = model.eval()
        names = list(classes) if classes is not None else [f"class_{i}" for i in range(spec.num_classes)]
        colours = list(palette) if palette is not None else default_palette(spec.num_classes)
        card = ModelCard(model.spec, names, colours, "onnx", config=config.to_dict() if config else {},
                         source="a model in memory")
        return model, card, config
    model_file = read_model(checkpoint)
    if model_file.card.is_export:
        raise ValueError(f"{checkpoint} is already an export; export from the checkpoint it came from")
    model = model_file.open(output_stride=output_stride)
    source = model_file.card
    card = ModelCard(model.spec, list(source.classes), list(source.palette), "onnx", config=source.config or {},
                     source=str(checkpoint), extra={"source": Path(checkpoint).name, **source.extra})
    return model, card, from_dict(source.config) if source.config else None


def _write(writer: Any, *args: Any, format: str) -> None:
    """``writer(*args)``; an exporter that cannot take the model is an :class:`ExportError` saying why."""
    try:
        writer(*args)
    except Exception as err:  # the exporters raise many types (tracer, ONNX symbolic, TorchScript errors)
        raise ExportError(f"this model cannot be exported to {format} ({type(err).__name__}: {err}); "
                          "nothing written") from err


class _CastTo(nn.Module):
    """Runs ``model`` in ``dtype`` (weights and arithmetic) behind a float32 interface."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def _write_torchscript(model: nn.Module, path: Path, info: ModelCard) -> None:
    """The folded model traced and frozen; the metadata goes in an extra file."""
    folded: nn.Module = fast_copy(model, "cpu", channels_last=False)
    if info.precision == "bf16":
        folded = _CastTo(folded, PRECISIONS["bf16"].dtype).eval()
    with quiet_exporters(), torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(folded, trace_input(model.spec.in_channels), check_trace=False))
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": info.to_json()})


def _verify_logits(model: nn.Module, candidate: Path, report: ExportReport, tolerance: float) -> None:
    """Runs the export and the original on the same inputs; an fp32 export must match within ``tolerance``."""
    runner = read_model(candidate).open()
    generator = torch.Generator().manual_seed(1)
    worst, same, total = 0.0, 0, 0
    for batch, _, height, width in VERIFY_SHAPES:
        shape = (batch, model.spec.in_channels, height, width)
        x = torch.randn(*shape, generator=generator)
        with torch.inference_mode(), quiet_exporters():
            expected, got = model(x), runner(x).float()
        if got.shape != expected.shape:
            raise ExportError(f"the export returned {tuple(got.shape)} for input {shape}, expected "
                              f"{tuple(expected.shape)}; nothing written")
        worst = max(worst, (got - expected).abs().max().item())
        same += (class_map(got, 1) == class_map(expected, 1)).sum().item()
        total += expected[:, 0].numel()
    report.max_abs_diff, report.agreement = worst, same / total
    if report.precision == "fp32" and not worst <= tolerance:
        raise ExportError(f"the {report.format} export differs from the original model by {worst:.2e} "
                          f"(> {tolerance:g}) in its logits; nothing written")


def calibration_inputs(config: Config | None, mean: Sequence[float], std: Sequence[float], count: int,
                       folder: str | Path | None = None) -> list[torch.Tensor]:
    """``count`` normalised ``1 x 3 x H x W`` images for int8 calibration, spread evenly over the source.

    The source is ``folder`` (a folder or glob of images) if given, else the training split of the
    dataset ``config`` (the checkpoint's training run) names.
    """
    if count < 1:
        raise ValueError(f"--calibration-images must be at least 1, got {count}")
    if folder is not None:
        paths, _ = expand_inputs([folder])
        if not paths:
            raise ValueError(f"--calibration {folder}: no image files found")
        images = []
        for path in _spread(paths, count):
            try:
                images.append(normalize_image(read_input(path, len(mean)), mean, std).unsqueeze(0))
            except ImageReadError as err:
                warnings.warn(f"calibration: skipped {path}: {err}", stacklevel=2)
        return images
    if config is None:
        raise ValueError("int8 calibration of a model in memory needs calibration=FOLDER (images like its "
                         "training data), or config= naming its dataset")
    dataset = _dataset(config, config.data.train_split, mean, std, "calibration images")
    return [dataset[index][0].unsqueeze(0) for index in _spread(range(len(dataset)), count)]


def _spread(items: Sequence[Any], count: int) -> list[Any]:
    """Up to ``count`` items taken at even intervals (deterministic)."""
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def _dataset(config: Config, split: str, mean: Sequence[float], std: Sequence[float], purpose: str):
    data = config.data
    try:
        return build_dataset(data, split, eval_transforms(mean=mean, std=std))
    except (OSError, ValueError) as err:
        raise ValueError(f"{purpose}: the checkpoint's dataset ({data.name}, split {split!r}, root {data.root}) "
                         f"cannot be loaded here ({err}); pass --calibration DIR with images like the "
                         "training data") from err


def _verify_accuracy(model: nn.Module, config: Config | None, candidate: Path, report: ExportReport,
                     max_drop: float, eval_images: int | None, progress: bool) -> None:
    """mIoU of the export and of the original fp32 model on the checkpoint's validation split."""
    if eval_images == 0:
        report.notes.append("accuracy not measured (eval_images=0)")
        return
    if config is None:
        report.notes.append("accuracy not measured: a model in memory without config= names no dataset")
        return
    try:
        dataset = _dataset(config, config.data.val_split, model.spec.mean, model.spec.std, "accuracy check")
    except ValueError as err:
        report.notes.append(f"accuracy not measured: {err}")
        warnings.warn(f"int8 accuracy not measured: {err}", stacklevel=3)
        return
    if eval_images is not None and eval_images < len(dataset):
        dataset = Subset(dataset, range(eval_images))
    report.eval_images = len(dataset)
    ignore = config.data.ignore_index
    reference = Predictor(model, num_classes=model.spec.num_classes)
    # on the runtime the quantization is made for (an int8 file on another runtime is checked against it at load)
    exported = Predictor.from_file(candidate, precision=report.precision, runtime="onnxruntime")
    report.reference_miou = evaluate_predictor(reference, dataset, ignore_index=ignore, progress=progress)["miou"]
    report.miou = evaluate_predictor(exported, dataset, ignore_index=ignore, progress=progress)["miou"]
    drop = 100 * (report.reference_miou - report.miou)
    if drop > max_drop:
        raise ExportError(f"int8 loses {drop:.2f} mIoU points on {len(dataset)} val images (fp32 "
                          f"{100 * report.reference_miou:.2f}, int8 {100 * report.miou:.2f}; limit {max_drop}); "
                          "nothing written. Try more --calibration-images")
