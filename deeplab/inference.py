"""Prediction with a trained or exported model: fast eager path, ONNX Runtime, TorchScript; multi-scale and flip
averaging, sliding windows, files to masks."""

from __future__ import annotations

import csv
import glob
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from deeplab.constants import IMAGENET_MEAN, IMAGENET_STD, Palette
from deeplab.imageio import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    atomic_write,
    colorize,
    overlay,
    read_image,
    save_index_png,
    save_rgb_png,
)
from deeplab.models.spec import ModelSpec
from deeplab.palettes import default_palette
from deeplab.postprocess import CRFParams, dense_crf
from deeplab.runtime import AUTOCAST_DTYPES, check_precision, fast_copy


class Predictor:
    """Turns images into class maps with a segmentation model (``N x 3 x H x W -> N x C x H x W``).

    One class whatever runs the network: an eager PyTorch model (by default through the fast path:
    an eval-mode copy with BatchNorm folded into the convolutions, channels-last, optional bf16/fp16
    autocast), or an export loaded by :meth:`from_file` (ONNX Runtime, TorchScript). Multi-scale, flip
    and sliding-window inference work the same on every backend.

    Args:
        model: returns logits at its input's size: an ``nn.Module`` or, for exports, any callable
            mapping a normalised float batch to logits.
        num_classes: number of classes ``C`` the model predicts (checked against its output).
        classes: class names (default ``class_0`` ...); used for tables and CSV columns.
        palette: one RGB colour per class (default: the PASCAL VOC colour map).
        mean: per-channel mean used to normalise images scaled to [0, 1]; default: the model's spec
            (what its weights expect), else ImageNet's.
        std: per-channel standard deviation used to normalise; default as for ``mean``.
        device: where the model runs.
        scales: input scales; the softmax probabilities of every scale are averaged.
        flip: also run the horizontally flipped input of every scale and average it in.
        window: sliding-window tile size ``(h, w)`` (an int for a square). An input larger than the
            window in some dimension is tiled; tiles are never padded, so an input that fits in one
            window gets exactly the plain forward pass.
        overlap: fraction of the window shared by neighbouring tiles, in ``[0, 1)``.
        precision: ``fp32``; ``bf16`` (autocast) on a GPU or a CPU with AVX512-BF16/AMX; ``fp16`` on a GPU.
        fast: run an ``nn.Module`` through the fast path (:func:`deeplab.runtime.fast_copy`), which
            leaves ``model`` itself untouched. ``False`` runs ``model`` as given, after putting it in
            eval mode on ``device`` (plain eager).
        spec: the model's :class:`~deeplab.models.ModelSpec`; default ``model.spec`` where it has one.
        crf: DenseCRF settings: ``predict(image)`` then refines the softmax on the image
            (``deeplab.postprocess``, v1/v2's post-processing); ``None``: no CRF.
        pad_to: pad each input at its bottom and right to at least ``(h, w)`` (an int for a square)
            with the mean pixel (zero once normalised) before any scaling, and crop the scores back:
            the TF reference's evaluation, which feeds VOC images padded to 513 x 513.

    A model whose spec asks for TF numerics (``align_corners``) is also scaled the TF way for
    multi-scale inference: side ``int((n - 1) * scale + 1)``, resizes with ``align_corners=True``.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        *,
        num_classes: int,
        classes: Sequence[str] | None = None,
        palette: Palette | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device: str | torch.device = "cpu",
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        window: int | tuple[int, int] | None = None,
        overlap: float = 1 / 3,
        precision: str = "fp32",
        fast: bool = True,
        spec: ModelSpec | None = None,
        crf: CRFParams | None = None,
        pad_to: int | tuple[int, int] | None = None,
    ) -> None:
        self.classes = list(classes) if classes is not None else [f"class_{i}" for i in range(num_classes)]
        self.palette = list(palette) if palette is not None else default_palette(num_classes)
        _check_options(num_classes, self.classes, self.palette, scales, window, overlap)
        self.pad_to = _check_pad_to(pad_to)
        self.device = torch.device(device)
        self.precision = precision
        self.spec = spec if spec is not None else getattr(model, "spec", None)
        self._autocast = None
        self._channels_last = False
        if isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule):
            check_precision(precision, self.device)
            self._autocast = AUTOCAST_DTYPES.get(precision)
            self._channels_last = fast and self.device.type in ("cpu", "cuda")
            self.model = fast_copy(model, self.device) if fast else model.to(self.device).eval()
        else:
            self.model = model
        self.num_classes = num_classes
        mean = mean if mean is not None else getattr(self.spec, "mean", IMAGENET_MEAN)
        std = std if std is not None else getattr(self.spec, "std", IMAGENET_STD)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.scales = tuple(float(scale) for scale in scales)
        self.flip = flip
        self.window = (window, window) if isinstance(window, int) else window
        self.overlap = overlap
        self.crf = crf

    @property
    def output_stride(self) -> int | None:
        """The network's output stride (from its spec), or ``None`` when unknown."""
        return self.spec.output_stride if self.spec is not None else getattr(self.model, "output_stride", None)

    @classmethod
    def from_file(
        cls, path: str | Path, *, output_stride: int | None = None, precision: str = "fp32",
        device: str | torch.device = "cpu", **options: Any,
    ) -> Predictor:
        """A predictor for a training checkpoint (``.pt`` from ``deeplab train``) or an export (ONNX, TorchScript).

        The file alone says what the model is, its classes, palette and normalisation.

        Args:
            path: the model file; its kind is recognised from its contents.
            output_stride: rebuild a checkpoint's model at this output stride. An export is fixed at the
                stride it was exported at (``deeplab export --output-stride``); asking for another is an error.
            precision: for a checkpoint, see the class docstring. An export runs at the precision it was
                exported at; ``fp32`` (the default) or that precision is accepted, anything else is an error.
            device: where the model runs (ONNX Runtime: ``cpu``, or ``cuda`` with onnxruntime-gpu).
            **options: the other keyword arguments of :class:`Predictor` (``scales``, ``flip``, ``window``...).
        """
        from .runtime import detect_format, load_export

        path = Path(path)
        if detect_format(path) == "checkpoint":
            from .engine.checkpoint import load_checkpoint  # engine only for training checkpoints

            model, checkpoint = load_checkpoint(path, output_stride=output_stride, device=device)
            return cls(model, num_classes=len(checkpoint.classes), classes=checkpoint.classes,
                       palette=checkpoint.palette, device=device, precision=precision, **options)
        runner, info = load_export(path, device)
        if output_stride is not None and output_stride != info.spec.output_stride:
            raise ValueError(f"{path} was exported at output stride {info.spec.output_stride}; for "
                             f"{output_stride}, export again with --output-stride {output_stride}")
        if precision not in ("fp32", info.precision):
            raise ValueError(f"{path} is a {info.precision} export; its precision is fixed at export time "
                             f"(export again with --precision {precision})")
        predictor = cls(runner, num_classes=info.spec.num_classes, classes=info.classes, palette=info.palette,
                        device=device, spec=info.spec, **options)
        predictor.precision = info.precision
        return predictor

    @classmethod
    def from_published(
        cls, name: str, *, output_stride: int | None = None, precision: str = "fp32",
        device: str | torch.device = "cpu", **options: Any,
    ) -> Predictor:
        """A predictor for published weights by name (``deeplab models`` lists them), with their classes and palette.

        The weights are fetched through torch.hub's cache (see ``deeplab.models.published``).
        """
        from .models import create_model, published_weights

        published = published_weights(name)
        model = create_model(published.model, weights=published.name, output_stride=output_stride)
        return cls(model, num_classes=len(published.classes), classes=list(published.classes),
                   palette=published.palette, device=device, precision=precision, **options)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Converts a uint8 ``3 x H x W`` RGB image to a normalised float ``1 x 3 x H x W`` batch."""
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise TypeError(
                f"expected a uint8 3 x H x W image, got {image.dtype} {tuple(image.shape)}; "
                "pass normalised float batches to logits_for_batch instead"
            )
        x = image.to(self.device).unsqueeze(0).float() / 255.0
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def logits_for_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Scores for a normalised float ``N x 3 x H x W`` batch, as ``N x C x H x W`` on ``device``.

        With one pass (one scale, no flip) these are the model's logits. With several they are the
        log of the averaged softmax probabilities, so in both cases ``softmax(dim=1)`` of the result
        gives the prediction's class probabilities and ``argmax(dim=1)`` its class map.
        """
        x = x.to(self.device)
        height, width = x.shape[-2:]
        if self.pad_to is not None:  # zeros: the mean pixel, once normalised
            x = F.pad(x, (0, max(0, self.pad_to[1] - width), 0, max(0, self.pad_to[0] - height)))
        flips = (False, True) if self.flip else (False,)
        passes = [(scale, flipped) for scale in self.scales for flipped in flips]
        if len(passes) == 1:
            return self._pass(x, *passes[0])[..., :height, :width]
        probs = sum(self._pass(x, scale, flipped).softmax(dim=1) for scale, flipped in passes)
        probs = probs / len(passes)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()[..., :height, :width]

    def predict_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Scores (see ``logits_for_batch``) for a uint8 ``3 x H x W`` image, as ``C x H x W`` on CPU."""
        return self.logits_for_batch(self.preprocess(image))[0].cpu()

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """Class map (int64 ``H x W``, on CPU) for a uint8 ``3 x H x W`` RGB image (CRF-refined with ``crf``)."""
        logits = self.logits_for_batch(self.preprocess(image))[0]
        if self.crf is not None:  # DenseCRF hook: softmax probabilities + the uint8 image
            return dense_crf(image, logits.softmax(dim=0).cpu(), self.crf).argmax(dim=0)
        return logits.argmax(dim=0).cpu()

    def _pass(self, x: torch.Tensor, scale: float, flipped: bool) -> torch.Tensor:
        """Logits of one (scale, flip) pass, resized back to the input's size."""
        size = x.shape[-2:]
        aligned = self._tf_numerics
        if scale != 1.0:
            if aligned:  # the TF reference's scale_dimension
                scaled = (max(1, int((size[0] - 1) * scale + 1)), max(1, int((size[1] - 1) * scale + 1)))
            else:
                scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            x = F.interpolate(x, size=scaled, mode="bilinear", align_corners=aligned)
        if flipped:
            x = x.flip(-1)
        logits = self._windowed(x)
        if flipped:
            logits = logits.flip(-1)
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=aligned)
        return logits

    @property
    def _tf_numerics(self) -> bool:
        return bool(self.spec is not None and self.spec.options.get("align_corners"))

    def _windowed(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the model on overlapping tiles and averages the logits where tiles overlap."""
        height, width = x.shape[-2:]
        if self.window is None or (height <= self.window[0] and width <= self.window[1]):
            return self._forward(x)
        tile_h, tile_w = min(self.window[0], height), min(self.window[1], width)
        total = torch.zeros(x.shape[0], self.num_classes, height, width, device=x.device)
        count = torch.zeros(1, 1, height, width, device=x.device)
        for top in _tile_starts(height, tile_h, self.overlap):
            for left in _tile_starts(width, tile_w, self.overlap):
                rows, cols = slice(top, top + tile_h), slice(left, left + tile_w)
                total[:, :, rows, cols] += self._forward(x[:, :, rows, cols])
                count[:, :, rows, cols] += 1
        return total / count

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._autocast is not None:
            with torch.autocast(self.device.type, dtype=self._autocast):
                logits = self.model(x)
        else:
            logits = self.model(x)
        expected = (x.shape[0], self.num_classes, *x.shape[-2:])
        if tuple(logits.shape) != expected:
            raise ValueError(
                f"model returned {tuple(logits.shape)} for input {tuple(x.shape)}; expected logits "
                f"{expected} (num_classes={self.num_classes}, at the input's size)"
            )
        return logits.float()


def _check_options(
    num_classes: int,
    classes: Sequence[str],
    palette: Palette,
    scales: Sequence[float],
    window: int | tuple[int, int] | None,
    overlap: float,
) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for num_classes={num_classes}")
    if len(palette) < num_classes:
        raise ValueError(f"palette has {len(palette)} colours for num_classes={num_classes}")
    if not scales or any(scale <= 0 for scale in scales):
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {list(scales)}")
    sides = (window, window) if isinstance(window, int) else window
    if sides is not None and (len(sides) != 2 or min(sides) < 1):
        raise ValueError(f"window must be a positive int or (h, w), got {window}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")


def _check_pad_to(pad_to: int | Sequence[int] | None) -> tuple[int, int] | None:
    if pad_to is None:
        return None
    sides = (pad_to, pad_to) if isinstance(pad_to, int) else tuple(pad_to)
    if len(sides) != 2 or not all(isinstance(side, int) and side >= 1 for side in sides):
        raise ValueError(f"pad_to must be a positive int or (h, w), got {pad_to}")
    return sides[0], sides[1]


def _tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Tile offsets covering ``size``: evenly strided, the last one flush with the end."""
    if size <= tile:
        return [0]
    stride = max(1, math.ceil(tile * (1.0 - overlap)))
    count = math.ceil((size - tile) / stride) + 1
    return [min(i * stride, size - tile) for i in range(count)]


@dataclass
class PredictionReport:
    """What ``predict_paths`` did: the index masks written and the inputs skipped, with the reason."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    areas_csv: Path | None = None


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expands files, directories (their images, not recursive) and glob patterns into image paths.

    A file named explicitly is kept whatever its extension; directories and patterns contribute the
    files with a known image extension. Duplicates are dropped, order is kept.

    Returns:
        The paths, and ``(input, reason)`` for each input that yielded nothing.
    """
    found: list[Path] = []
    missing: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = sorted(child for child in path.iterdir() if _is_image_file(child))
        elif any(char in str(item) for char in "*?["):
            matches = sorted(Path(match) for match in glob.glob(str(item), recursive=True))
            matches = [match for match in matches if _is_image_file(match)]
        else:
            missing.append((path, "no such file or directory"))
            continue
        if not matches:
            missing.append((path, "no image files found"))
        found += matches
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values()), missing


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _output_names(stem: str) -> tuple[str, str, str]:
    return f"{stem}.png", f"{stem}_color.png", f"{stem}_overlay.png"


def _claim_stem(stem: str, taken: set[str]) -> str:
    """First of ``stem``, ``stem_1``, ... whose output names are still free (case-insensitively)."""
    candidate, counter = stem, 0
    while any(name.lower() in taken for name in _output_names(candidate)):
        counter += 1
        candidate = f"{stem}_{counter}"
    taken.update(name.lower() for name in _output_names(candidate))
    return candidate


def predict_paths(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    area_table: bool = False,
    progress: bool = True,
) -> PredictionReport:
    """Predicts every image named by ``inputs`` (files, directories, glob patterns) into ``out_dir``.

    For each image it writes ``<stem>.png`` (palette PNG, pixel = class id), ``<stem>_color.png`` and
    ``<stem>_overlay.png``; inputs sharing a stem get ``<stem>_1`` and so on. Inputs that cannot be
    read are skipped and listed, with the reason, in the report's ``failed``. With ``area_table``, ``areas.csv``
    gets one row per image with the fraction of its pixels predicted as each class.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, failed = expand_inputs(inputs)
    report = PredictionReport()
    for path, reason in failed:
        _skip(report, path, reason)
    taken: set[str] = set()
    rows: list[list[str]] = []
    for path in tqdm(paths, desc="predict", unit="image", disable=not progress):
        try:
            image = read_image(path)
        except ImageReadError as err:
            _skip(report, path, str(err.__cause__ or err))
            continue
        mask = predictor.predict(image)
        stem = _claim_stem(path.stem, taken)
        _write_outputs(predictor.palette, image, mask, out_dir, stem)
        report.written.append(out_dir / f"{stem}.png")
        fractions = torch.bincount(mask.flatten(), minlength=predictor.num_classes) / mask.numel()
        rows.append([str(path), f"{stem}.png", *(f"{value:.6f}" for value in fractions.tolist())])
    if area_table:
        report.areas_csv = out_dir / "areas.csv"
        with atomic_write(report.areas_csv, "w") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "mask", *predictor.classes])
            writer.writerows(rows)
    return report


def _skip(report: PredictionReport, path: Path, reason: str) -> None:
    report.failed.append((path, reason))


def _write_outputs(
    palette: Palette, image: torch.Tensor, mask: torch.Tensor, out_dir: Path, stem: str
) -> None:
    index_name, color_name, overlay_name = _output_names(stem)
    save_index_png(mask, out_dir / index_name, palette)
    save_rgb_png(colorize(mask, palette), out_dir / color_name)
    save_rgb_png(overlay(image, mask, palette), out_dir / overlay_name)
