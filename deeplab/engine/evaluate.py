"""mIoU evaluation of a model on a dataset (multi-scale, flip and sliding windows through the Predictor)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import Config
from ..data import SegmentationDataset, eval_transforms
from ..inference import Predictor
from ..metrics import confusion_matrix, segmentation_metrics
from .checkpoint import load_checkpoint
from .data import build_dataset


def evaluate(
    model: torch.nn.Module, dataset: SegmentationDataset, *, num_classes: int, ignore_index: int = 255,
    device: str | torch.device = "cpu", scales: Sequence[float] = (1.0,), flip: bool = False,
    window: int | None = None, batch_size: int = 1, num_workers: int = 0, progress: bool = True,
) -> dict[str, Any]:
    """Accumulates one confusion matrix over ``dataset`` and returns :func:`segmentation_metrics` of it.

    The dataset must return normalised images (``eval_transforms``); batches larger than 1 need
    images of one size. The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    predictor = Predictor(model, num_classes=num_classes, device=device, scales=scales, flip=flip, window=window)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    try:
        for images, masks in tqdm(loader, desc="eval", leave=False, disable=not progress, unit="batch"):
            pred = predictor.logits_for_batch(images).argmax(1).cpu()
            cm += confusion_matrix(pred, masks, num_classes, ignore_index)
    finally:
        model.train(was_training)
    metrics = segmentation_metrics(cm)
    metrics["confusion_matrix"] = cm.tolist()
    return metrics


def evaluate_checkpoint(path: str | Path, config: Config, *, device: str | torch.device = "cpu",
                        progress: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Evaluates a checkpoint on ``config.data``'s validation split at ``config.eval``'s settings."""
    model, checkpoint = load_checkpoint(path, output_stride=config.eval.output_stride or config.model.output_stride,
                                        device=device)
    dataset = build_dataset(config.data, config.data.val_split,
                            eval_transforms(mean=checkpoint.spec.mean, std=checkpoint.spec.std))
    if dataset.num_classes != len(checkpoint.classes):
        raise ValueError(f"dataset {config.data.name!r} has {dataset.num_classes} classes but the checkpoint "
                         f"was trained for {len(checkpoint.classes)}")
    metrics = evaluate(model, dataset, num_classes=len(checkpoint.classes), ignore_index=dataset.ignore_index,
                       device=device, scales=config.eval.scales, flip=config.eval.flip, window=config.eval.window,
                       batch_size=config.eval.batch_size, num_workers=config.data.num_workers, progress=progress)
    return metrics, list(checkpoint.classes)
