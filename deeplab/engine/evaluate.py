"""mIoU evaluation of a model on a dataset (multi-scale, flip and sliding windows through the Predictor)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import Config, EvalConfig
from ..data import SegmentationDataset, eval_transforms
from ..inference import Predictor
from ..metrics import confusion_matrix, segmentation_metrics
from ..postprocess import CRFParams, refine_many
from .data import build_dataset
from .workers import worker_options


def evaluate(
    model: torch.nn.Module, dataset: SegmentationDataset, *, num_classes: int, ignore_index: int = 255,
    device: str | torch.device = "cpu", scales: Sequence[float] = (1.0,), flip: bool = False,
    window: int | None = None, batch_size: int = 1, num_workers: int = 0, progress: bool = True,
    precision: str = "fp32", fast: bool = True, crf: CRFParams | None = None, crf_workers: int | None = None,
    pad_to: int | Sequence[int] | None = None,
) -> dict[str, Any]:
    """Accumulates one confusion matrix over ``dataset`` and returns :func:`segmentation_metrics` of it.

    The dataset must return normalised images (``eval_transforms``); batches larger than 1 need
    images of one size. The model runs through :class:`Predictor`'s fast path (a folded copy) unless
    ``fast=False``; either way every module's train/eval mode is as it was afterwards. With ``crf``,
    the softmax of every prediction is refined by the DenseCRF (``deeplab.postprocess``) on the raw
    image, in ``crf_workers`` processes (default: one per core). ``pad_to``: see :class:`Predictor`.
    """
    modes = [module.training for module in model.modules()]
    try:
        predictor = Predictor(model, num_classes=num_classes, device=device, scales=scales, flip=flip,
                              window=window, precision=precision, fast=fast, pad_to=pad_to)
        return evaluate_predictor(predictor, dataset, ignore_index=ignore_index, batch_size=batch_size,
                                  num_workers=num_workers, progress=progress, crf=crf, crf_workers=crf_workers)
    finally:
        for module, training in zip(model.modules(), modes, strict=True):
            module.training = training


def evaluate_predictor(
    predictor: Predictor, dataset: SegmentationDataset, *, ignore_index: int = 255, batch_size: int = 1,
    num_workers: int = 0, progress: bool = True, crf: CRFParams | None = None, crf_workers: int | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` for a ready :class:`Predictor` (any backend: eager, ONNX Runtime, TorchScript)."""
    num_classes = predictor.num_classes
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    if crf is None:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                            **worker_options(num_workers))
        for images, masks in tqdm(loader, desc="eval", leave=False, disable=not progress, unit="batch"):
            pred = predictor.logits_for_batch(images).argmax(1).cpu()
            cm += confusion_matrix(pred, masks, num_classes, ignore_index)
    else:
        for pred, mask in _crf_predictions(predictor, dataset, crf, batch_size=batch_size,
                                           num_workers=num_workers, crf_workers=crf_workers, progress=progress):
            cm += confusion_matrix(pred, mask, num_classes, ignore_index)
    metrics = segmentation_metrics(cm)
    metrics["confusion_matrix"] = cm.tolist()
    return metrics


# ---------------------------------------------------------------- DenseCRF hook (v1/v2 post-processing)


class WithRawImages(Dataset):
    """``(normalised image, mask, raw uint8 image)``: the DenseCRF needs the image's real colours.

    Each sample is loaded once; the dataset's transforms (which must keep the geometry, as the
    evaluation transforms do) make the first two items.
    """

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, mask = self.dataset.load(index)
        x, target = self.dataset.transforms(image, mask) if self.dataset.transforms else (image, mask)
        return x, target, image.as_subclass(torch.Tensor)


def _crf_predictions(predictor: Predictor, dataset: SegmentationDataset, crf: CRFParams, *, batch_size: int,
                     num_workers: int, crf_workers: int | None,
                     progress: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(CRF-refined class map, mask) per image; the network runs here while worker processes refine."""
    masks: deque[torch.Tensor] = deque()

    def pairs():
        loader = DataLoader(WithRawImages(dataset), batch_size=batch_size, num_workers=num_workers,
                            **worker_options(num_workers))
        for images, batch_masks, raw in loader:
            probs = predictor.logits_for_batch(images).softmax(dim=1).cpu()
            for index in range(len(raw)):
                masks.append(batch_masks[index])
                yield raw[index], probs[index]

    for refined in refine_many(pairs(), crf, workers=crf_workers, total=len(dataset), progress=progress):
        yield torch.from_numpy(refined.argmax(axis=0)), masks.popleft()


def crf_params(config: EvalConfig) -> CRFParams | None:
    """The CRF settings ``eval.crf_*`` ask for (unset keys keep :class:`CRFParams`' defaults), or
    ``None`` when ``eval.crf`` is false."""
    if not config.crf:
        return None
    given = {f.name: getattr(config, f"crf_{f.name}") for f in fields(CRFParams)}
    return CRFParams.from_options(**{k: v for k, v in given.items() if v is not None})


def evaluate_checkpoint(path: str | Path, config: Config, *, device: str | torch.device = "cpu",
                        progress: bool = True, precision: str = "fp32") -> tuple[dict[str, Any], list[str]]:
    """Evaluates a checkpoint on ``config.data``'s validation split at ``config.eval``'s settings."""
    return evaluate_file(path, config, output_stride=config.eval.output_stride or config.model.output_stride,
                         device=device, progress=progress, precision=precision)


def evaluate_file(path: str | Path, config: Config, *, output_stride: int | None = None,
                  device: str | torch.device = "cpu", progress: bool = True,
                  precision: str = "fp32") -> tuple[dict[str, Any], list[str]]:
    """Evaluates a checkpoint or an export (ONNX, TorchScript) on ``config.data``'s validation split.

    Scales, flip, window, batch size and the DenseCRF come from ``config.eval``; ``output_stride``
    rebuilds a checkpoint's model (an export must have been exported at it).
    """
    predictor = Predictor.from_file(path, output_stride=output_stride, precision=precision, device=device,
                                    **predictor_options(config.eval))
    return evaluate_on_config(predictor, config, str(path), progress=progress)


def predictor_options(config: EvalConfig) -> dict[str, Any]:
    """The :class:`Predictor` options the ``eval`` section sets."""
    return {"scales": config.scales, "flip": config.flip, "window": config.window, "pad_to": config.pad_to}


def evaluate_published(name: str, config: Config, *, device: str | torch.device = "cpu", progress: bool = True,
                       precision: str = "fp32") -> tuple[dict[str, Any], list[str]]:
    """Evaluates published weights by name (e.g. a TF model-zoo model) at ``config.eval``'s settings."""
    predictor = Predictor.from_published(name, output_stride=config.eval.output_stride, precision=precision,
                                         device=device, **predictor_options(config.eval))
    return evaluate_on_config(predictor, config, name, progress=progress)


def evaluate_on_config(predictor: Predictor, config: Config, source: str, *,
                       progress: bool = True) -> tuple[dict[str, Any], list[str]]:
    """``predictor`` on ``config.data``'s validation split, normalised as its spec says; ``source`` names it."""
    spec = predictor.spec
    dataset = build_dataset(config.data, config.data.val_split, eval_transforms(mean=spec.mean, std=spec.std))
    if dataset.num_classes != predictor.num_classes:
        raise ValueError(f"dataset {config.data.name!r} has {dataset.num_classes} classes but {source} "
                         f"predicts {predictor.num_classes}")
    metrics = evaluate_predictor(predictor, dataset, ignore_index=dataset.ignore_index,
                                 batch_size=config.eval.batch_size, num_workers=config.data.num_workers,
                                 progress=progress, crf=crf_params(config.eval), crf_workers=config.eval.crf_workers)
    return metrics, list(predictor.classes)
