"""The Predictor: images to class maps with any runner (the fast eager path, ONNX Runtime, TorchScript), with
multi-scale and flip averaging, sliding windows, padding and the DenseCRF (:class:`~deeplab.options.InferenceOptions`).
Files to masks is :mod:`deeplab.predict_files`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .constants import IMAGENET_MEAN, IMAGENET_STD, Palette
from .deploy.fastpath import fast_copy
from .deploy.precision import autocast_dtype, check_precision
from .deploy.runtimes import FP32_TOLERANCE, RuntimeChoice, default_runtime, open_with_runtime
from .imageio import normalize_image, overlay
from .metrics import class_map, labels_from_logits
from .modelfile import ModelCard, Runner, read_model
from .models.segmenter import upsample_to
from .models.spec import ModelSpec
from .options import InferenceOptions
from .palettes import default_palette
from .postprocess import dense_crf


class Predictor:
    """Turns images into class maps with a segmentation model (``N x in_channels x H x W -> N x C x H x W``).

    The model's spec says its task: multiclass (argmax), binary (one logit: foreground where its sigmoid exceeds
    ``threshold``) or multilabel (a sigmoid per class, each thresholded); see :meth:`decide`.

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
        options: scales, flip, sliding window, precision, DenseCRF, padding
            (:class:`~deeplab.options.InferenceOptions`; default: one plain pass in fp32).
        **option_values: the same options by name (``scales=(0.75, 1, 1.25), flip=True``), applied on top of
            ``options``.
        fast: run an ``nn.Module`` through the fast path (:func:`deeplab.runtime.fast_copy`), which
            leaves ``model`` itself untouched. ``False`` runs ``model`` as given, after putting it in
            eval mode on ``device`` (plain eager).
        spec: the model's :class:`~deeplab.models.ModelSpec`; default ``model.spec`` where it has one.

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
        fast: bool = True,
        spec: ModelSpec | None = None,
        options: InferenceOptions | None = None,
        **option_values: Any,
    ) -> None:
        self.options = (options or InferenceOptions()).replace(**option_values)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.spec = spec if spec is not None else getattr(model, "spec", None)
        self.task = getattr(self.spec, "task", "multiclass")
        self.in_channels = getattr(self.spec, "in_channels", 3)
        # The image value training read as 1.0 (its data.max_value), for readers of image files; None: the dtype's.
        self.max_value: float | None = None
        if self.task == "binary" and num_classes != 1:
            raise ValueError(f"a binary model has one output (num_classes=1), got num_classes={num_classes}")
        if self.task == "multilabel" and self.crf is not None:
            raise ValueError("the DenseCRF needs one class per pixel; a multilabel model's pixels may hold several")
        names = map_classes(self.task, num_classes)  # classes of the predicted map (binary: background, foreground)
        self.classes = _binary_names(classes) if self.task == "binary" else (
            list(classes) if classes is not None else [f"class_{i}" for i in range(names)])
        self.palette = list(palette) if palette is not None else default_palette(names)
        if self.task == "binary" and len(self.palette) == 1:  # the foreground's colour alone: background black
            self.palette = [(0, 0, 0), *self.palette]
        if len(self.classes) != names:
            raise ValueError(f"{len(self.classes)} class names for num_classes={num_classes}")
        if len(self.palette) < names:
            raise ValueError(f"palette has {len(self.palette)} colours for num_classes={num_classes}")
        self.device = torch.device(device)
        self._autocast = None
        self._channels_last = False
        if isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule):
            check_precision(self.options.precision, self.device)
            self._autocast = autocast_dtype(self.options.precision)
            self._channels_last = fast and self.device.type in ("cpu", "cuda")
            self.model = fast_copy(model, self.device) if fast else model.to(self.device).eval()
        else:
            self.model = model
        self.num_classes = num_classes
        self.runtime = RuntimeChoice("torch" if isinstance(model, nn.Module) else "callable", self.options.precision)
        self.mean = tuple(mean if mean is not None else getattr(self.spec, "mean", IMAGENET_MEAN))
        self.std = tuple(std if std is not None else getattr(self.spec, "std", IMAGENET_STD))

    # The options, read-only by name (``predictor.scales`` ...), as before they were gathered in one type.
    scales = property(lambda self: self.options.scales)
    flip = property(lambda self: self.options.flip)
    window = property(lambda self: self.options.window)
    overlap = property(lambda self: self.options.overlap)
    precision = property(lambda self: self.options.precision)
    crf = property(lambda self: self.options.crf)
    pad_to = property(lambda self: self.options.pad_to)
    threshold = property(lambda self: self.options.threshold)

    @property
    def output_stride(self) -> int | None:
        """The network's output stride (from its spec), or ``None`` when unknown."""
        return self.spec.output_stride if self.spec is not None else getattr(self.model, "output_stride", None)

    def protocol(self) -> dict[str, Any]:
        """What a prediction runs, as plain values (``deeplab eval`` prints it and records it in its JSON): the
        output stride, scales, flip, padding, sliding window, precision, runtime and the numerics, one of
        ``tf-reference`` (the TF reference's ``predict_labels_multi_scale`` steps, ``align_corners=True``),
        ``tf-align-corners`` (TF resizes, but each pass's input-size logits resized back: an export or a sliding
        window) and ``pytorch`` (``align_corners=False``)."""
        if self.uses_reference_steps:
            numerics = "tf-reference"
        else:
            numerics = "tf-align-corners" if self._tf_numerics else "pytorch"
        return {"output_stride": self.output_stride, "scales": list(self.scales), "flip": self.flip,
                "pad_to": list(self.pad_to) if self.pad_to else None,
                "window": list(self.window) if self.window else None, "precision": self.precision,
                "runtime": self.runtime.runtime, "numerics": numerics}

    @classmethod
    def from_file(
        cls, source: str | Path, *, output_stride: int | None = None, device: str | torch.device = "cpu",
        runtime: str | None = None, options: InferenceOptions | None = None, check_folder: str | Path | None = None,
        **option_values: Any,
    ) -> Predictor:
        """A predictor for any model source :func:`deeplab.modelfile.read_model` reads: a training checkpoint, an
        export (ONNX, TorchScript), a TF checkpoint, a published weights name, a ``save_pretrained`` folder or a
        Hugging Face Hub model ``hf-hub:ORG/NAME[@REVISION]``.

        The source alone says what the model is, its classes, palette and normalisation.

        Args:
            source: the model file or name; its kind is recognised from its contents.
            output_stride: rebuild the model at this output stride. An export is fixed at the stride it was
                exported at (``deeplab export --output-stride``); asking for another is an error.
            device: where the model runs (ONNX Runtime: ``cpu``, or ``cuda`` with onnxruntime-gpu).
            runtime: ``auto`` (default, or ``$DEEPLAB_RUNTIME``), ``torch``, ``onnxruntime`` or ``openvino``; see
                :mod:`deeplab.deploy.runtimes`. The choice is in the predictor's ``runtime`` attribute.
            options, **option_values: see the class. Without ``options``, ``precision`` is ``auto`` unless given:
                bf16 where the CPU computes it natively and it passes the real-image check, else fp32 (see
                :mod:`deeplab.deploy.runtimes`); ``precision="fp32"`` keeps exact numerics. An export runs at the
                precision it was exported at; ``auto``, ``fp32`` or that precision is accepted. Without
                ``options``, ``threshold`` is the training run's ``eval.threshold`` where the source records it.
            check_folder: images for the reduced-precision check (default: the sample images deeplab ships).
        """
        model_file = read_model(source)
        runner = model_file.open(output_stride=output_stride, device=device)
        if options is None:
            option_values.setdefault("precision", "auto")
            if model_file.card.eval_threshold is not None:
                option_values.setdefault("threshold", model_file.card.eval_threshold)
        return cls.from_runner(runner, model_file.card, device=device, runtime=runtime, options=options,
                               check_folder=check_folder, **option_values)

    from_published = from_file  # a published weights name is one of the sources from_file reads

    @classmethod
    def from_runner(cls, runner: Runner, card: ModelCard, *, device: str | torch.device = "cpu",
                    runtime: str | None = None, log: Callable[[str], None] | None = None,
                    tolerance: float = FP32_TOLERANCE, options: InferenceOptions | None = None,
                    check_folder: str | Path | None = None, **option_values: Any) -> Predictor:
        """A predictor for a runner :meth:`deeplab.modelfile.ModelFile.open` gave, with its card, on the runtime
        ``runtime`` asks for (see :meth:`from_file`; ``log`` receives a line for each slow step of choosing it;
        ``tolerance`` bounds the runtimes' fp32 check, see :func:`deeplab.deploy.runtimes.open_with_runtime`).
        A ``precision`` of ``auto`` is resolved here; the predictor's options carry the one chosen."""
        options = (options or InferenceOptions()).replace(**option_values)
        if card.is_export:
            if options.precision not in ("auto", "fp32", card.precision):
                raise ValueError(f"{card.source} is a {card.precision} export; its precision is fixed at export "
                                 f"time (export again with --precision {options.precision})")
            options = options.replace(precision=card.precision)
        spec = getattr(runner, "spec", None) or card.spec  # a rebuilt model's spec has its output stride
        runtime = _reference_runtime(runner, spec, options, runtime, log)
        chosen, choice = open_with_runtime(runner, card, runtime=runtime, precision=options.precision, device=device,
                                           log=log, tolerance=tolerance, check_folder=check_folder)
        predictor = cls(chosen, num_classes=spec.num_classes, classes=card.classes, palette=card.palette,
                        device=device, spec=spec, options=options.replace(precision=choice.precision))
        predictor.runtime = choice
        predictor.max_value = ((card.config or {}).get("data") or {}).get("max_value")
        return predictor

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Converts a ``C x H x W`` image (RGB, or the model's ``in_channels`` bands; uint8, or float32 on the 0..1
        scale as 16-bit data is read) to a normalised float ``1 x C x H x W`` batch."""
        scaled = image.dtype == torch.uint8 or (image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1)
        if not scaled or image.ndim != 3 or image.shape[0] != self.in_channels:
            raise TypeError(
                f"expected a uint8 (or float32 0..1) {self.in_channels} x H x W image, got {image.dtype} "
                f"{tuple(image.shape)}; "
                "pass normalised float batches to logits_for_batch instead"
            )
        return normalize_image(image.to(self.device).unsqueeze(0), self.mean, self.std)

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """Probabilities from scores (``N x C x H x W`` or ``C x H x W``): the softmax over classes for a multiclass
        model, each channel's sigmoid for a binary (the foreground's) or multilabel one."""
        return scores.softmax(dim=-3) if self.task == "multiclass" else scores.sigmoid()

    def decide(self, scores: torch.Tensor) -> torch.Tensor:
        """The prediction from scores (``N x C x H x W`` or ``C x H x W``), int64: multiclass, the class map
        (argmax, ``N x H x W``); binary, the foreground map (sigmoid > ``threshold``, 0/1, ``N x H x W``);
        multilabel, one 0/1 map per class (``N x C x H x W``)."""
        return labels_from_logits(scores, self.task, self.threshold)

    @torch.inference_mode()
    def logits_for_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Scores for a normalised float ``N x 3 x H x W`` batch, as ``N x C x H x W`` on ``device``.

        With one pass (one scale, no flip) these are the model's logits. With several they are the
        log of the averaged softmax probabilities (binary and multilabel models: the logit of the averaged
        sigmoid probabilities), so in both cases :meth:`probabilities` of the result gives the prediction's
        probabilities and :meth:`decide` its prediction.
        """
        x = x.to(self.device)
        height, width = x.shape[-2:]
        if self.pad_to is not None:  # zeros: the mean pixel, once normalised
            x = F.pad(x, (0, max(0, self.pad_to[1] - width), 0, max(0, self.pad_to[0] - height)))
        flips = (False, True) if self.flip else (False,)
        passes = [(scale, flipped) for scale in self.scales for flipped in flips]
        if len(passes) == 1:
            return self._pass(x, *passes[0])[..., :height, :width]
        probs = sum(self.probabilities(self._pass(x, scale, flipped)) for scale, flipped in passes)
        probs = probs / len(passes)
        if self.task != "multiclass":
            return torch.logit(probs, eps=1e-7)[..., :height, :width]
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()[..., :height, :width]

    def predict_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Scores (see ``logits_for_batch``) for a uint8 ``C x H x W`` image, as ``C x H x W`` on CPU."""
        return self.logits_for_batch(self.preprocess(image))[0].cpu()

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """The prediction (int64, on CPU; see :meth:`decide`: ``H x W``, or ``C x H x W`` for multilabel) for a uint8
        ``C x H x W`` image (CRF-refined with ``crf``)."""
        logits = self.logits_for_batch(self.preprocess(image))[0]
        if self.crf is not None:  # DenseCRF hook: per-class probabilities + the uint8 image
            return class_map(dense_crf(image, self._class_probabilities(logits).cpu(), self.crf), 0)
        return self.decide(logits).cpu()

    def predict_batch(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Predictions of several uint8 ``C x H x W`` images of one size, the network run once on the batch; each
        refined by the DenseCRF when the options ask for it (as :meth:`predict`)."""
        if len(images) == 1:
            return [self.predict(images[0])]
        logits = self.logits_for_batch(torch.cat([self.preprocess(image) for image in images]))
        if self.crf is None:
            return list(self.decide(logits).cpu())
        probs = self._class_probabilities(logits).cpu()
        return [class_map(dense_crf(image, prob, self.crf), 0) for image, prob in zip(images, probs, strict=True)]

    def overlay(self, image: torch.Tensor, prediction: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
        """A prediction (:meth:`decide`'s, or a mask of the same kind) drawn over a uint8 ``3 x H x W`` image, as uint8
        ``H x W x 3``: each class in its colour (binary: the foreground only; multilabel: every class that holds,
        one over the other). Other values (255, ignore) leave the image as it is."""
        prediction = torch.as_tensor(prediction).long().cpu()
        if self.task == "binary":
            return overlay(image, torch.where(prediction == 1, 1, 255), self.palette, alpha)
        if self.task == "multiclass":
            return overlay(image, prediction, self.palette, alpha)
        blended = torch.as_tensor(image).cpu()
        for index, held in enumerate(prediction):
            blended = overlay(blended, torch.where(held == 1, index, 255), self.palette, alpha).permute(2, 0, 1)
        return blended.permute(1, 2, 0)

    def _class_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """One probability per class of the map and pixel (binary: background and foreground), for the CRF."""
        probs = self.probabilities(scores)
        return torch.cat([1 - probs, probs], dim=-3) if self.task == "binary" else probs

    def _pass(self, x: torch.Tensor, scale: float, flipped: bool) -> torch.Tensor:
        """Logits of one (scale, flip) pass, resized back to the input's size."""
        if self.uses_reference_steps:
            return self._reference_pass(x, scale, flipped)
        size = x.shape[-2:]
        aligned = self._tf_numerics
        if scale != 1.0:
            if aligned:  # the TF reference's scale_dimension
                scaled = (_scale_dimension(size[0], scale), _scale_dimension(size[1], scale))
            else:
                scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            x = upsample_to(x, scaled, aligned)
        if flipped:
            x = x.flip(-1)
        logits = self._windowed(x)
        if flipped:
            logits = logits.flip(-1)
        if logits.shape[-2:] != size:
            logits = upsample_to(logits, size, aligned)
        return logits

    @property
    def _tf_numerics(self) -> bool:
        return bool(self.spec is not None and self.spec.options.get("align_corners"))

    @property
    def uses_reference_steps(self) -> bool:
        """Whether each pass follows the TF reference's ``predict_labels_multi_scale`` step by step: a model whose
        spec asks for TF numerics, run eagerly (it gives its logits before their final resize), without a sliding
        window (the reference has none). Exports and other models resize the model's input-size logits instead."""
        return (self._tf_numerics and self.window is None and callable(getattr(self.model, "coarse_logits", None))
                and hasattr(self.model, "logits_stride"))

    def _reference_pass(self, x: torch.Tensor, scale: float, flipped: bool) -> torch.Tensor:
        """One pass as the reference's ``multi_scale_logits`` + ``predict_labels_multi_scale`` compute it.

        The (padded) input is scaled to ``int((side - 1) * scale + 1)``; the network's logits (at its own stride)
        are resized to ``int((side - 1) * max(1, scale) / stride + 1)`` (the scale-1 logit size for scales below 1,
        their own size otherwise); a flipped pass's logits are flipped back there; then one resize to the input's
        size. Every resize is bilinear with ``align_corners=True``.
        """
        size = x.shape[-2:]
        if scale != 1.0:
            x = upsample_to(x, (_scale_dimension(size[0], scale), _scale_dimension(size[1], scale)), True)
        if flipped:
            x = x.flip(-1)
        logits = self._forward(x, coarse=True)
        step = max(1.0, scale) / self.model.logits_stride
        merged = (_scale_dimension(size[0], step), _scale_dimension(size[1], step))
        if logits.shape[-2:] != merged:
            logits = upsample_to(logits, merged, True)
        if flipped:
            logits = logits.flip(-1)
        return upsample_to(logits, size, True)

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

    def _forward(self, x: torch.Tensor, *, coarse: bool = False) -> torch.Tensor:
        """The model's logits for ``x``: at ``x``'s size, or with ``coarse`` at the network's own resolution."""
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        run = self.model.coarse_logits if coarse else self.model
        if self._autocast is not None:
            with torch.autocast(self.device.type, dtype=self._autocast):
                logits = run(x)
        else:
            logits = run(x)
        if coarse:
            return logits.float()
        expected = (x.shape[0], self.num_classes, *x.shape[-2:])
        if tuple(logits.shape) != expected:
            raise ValueError(
                f"model returned {tuple(logits.shape)} for input {tuple(x.shape)}; expected logits "
                f"{expected} (num_classes={self.num_classes}, at the input's size)"
            )
        return logits.float()


def map_classes(task: str, num_classes: int) -> int:
    """Classes of a model's predicted map: its outputs, except binary models' (background and foreground)."""
    return 2 if task == "binary" else num_classes


def _binary_names(classes: Sequence[str] | None) -> list[str]:
    """A binary model's two map classes from the names it was given: none, the foreground's, or both."""
    if classes is None or len(classes) == 0:
        return ["background", "foreground"]
    return ["background", classes[0]] if len(classes) == 1 else list(classes)


def _reference_runtime(runner: Runner, spec: ModelSpec, options: InferenceOptions, runtime: str | None,
                       log: Callable[[str], None] | None) -> str | None:
    """``torch`` where the runtime is left to choose (``auto``) and the TF reference's multi-scale steps apply: they
    need the network's logits before their final resize, which only the eager model gives (an export's graph ends
    with that resize). Otherwise ``runtime`` as asked."""
    scaled = options.passes > 1 or options.scales != (1.0,)
    if (runtime or default_runtime()) != "auto" or not scaled or not spec.options.get("align_corners"):
        return runtime
    if options.window is not None or not callable(getattr(runner, "coarse_logits", None)):
        return runtime
    if log is not None:
        log("runtime torch: the TF reference's multi-scale steps need the logits before their final resize")
    return "torch"


def _scale_dimension(side: int, scale: float) -> int:
    """The TF reference's ``scale_dimension``: ``int((side - 1) * scale + 1)`` (at least 1)."""
    return max(1, int((side - 1) * scale + 1))


def _tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Tile offsets covering ``size``: evenly strided, the last one flush with the end."""
    if size <= tile:
        return [0]
    stride = max(1, math.ceil(tile * (1.0 - overlap)))
    count = math.ceil((size - tile) / stride) + 1
    return [min(i * stride, size - tile) for i in range(count)]


