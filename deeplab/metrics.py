"""Segmentation metrics: a confusion matrix accumulated over a dataset, then IoU and accuracies from it.

Every function here is pure. Accumulate ``confusion_matrix`` per batch (the matrices add up), then call
``segmentation_metrics`` once on the total.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from deeplab.constants import IGNORE_INDEX


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Counts pixels per (ground truth, prediction) pair.

    Args:
        pred: predicted class ids, any integer shape.
        target: ground-truth class ids of the same shape; ``ignore_index`` marks pixels to skip.
        num_classes: number of classes ``C``.
        ignore_index: label value left out of the count.

    Returns:
        An int64 ``C x C`` matrix on ``target``'s device; rows are ground truth, columns prediction.

    Raises:
        ValueError: if the shapes differ, or a kept pixel's target or prediction is outside ``[0, C)``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long().to(target.device)
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    _check_range(target, num_classes, "target", f" (ignore_index is {ignore_index})")
    _check_range(pred, num_classes, "pred", "")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _check_range(values: torch.Tensor, num_classes: int, name: str, hint: str) -> None:
    bad = values[(values < 0) | (values >= num_classes)].unique()
    if bad.numel():
        more = " ..." if bad.numel() > 10 else ""
        raise ValueError(f"{name} has values outside [0, {num_classes}){hint}: {bad[:10].tolist()}{more}")


def segmentation_metrics(cm: torch.Tensor) -> dict[str, Any]:
    """Computes IoU and accuracy figures from a confusion matrix (rows ground truth, cols prediction).

    A class that appears neither in the ground truth nor in the prediction has an undefined IoU: it is
    NaN in ``per_class_iou``, listed in ``absent_classes`` and left out of ``miou``. Plain Python
    values are returned (floats, ints, lists).

    Returns:
        A dict with ``miou``, ``per_class_iou``, ``pixel_accuracy``, ``mean_class_accuracy`` (mean
        recall over classes present in the ground truth), ``fw_iou`` (IoU weighted by ground-truth
        frequency), ``num_valid_classes`` and ``absent_classes``. Means over nothing are NaN.
    """
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {tuple(cm.shape)}")
    cm = cm.double().cpu()
    true_pos = cm.diag()
    gt_count = cm.sum(dim=1)
    pred_count = cm.sum(dim=0)
    union = gt_count + pred_count - true_pos
    valid = union > 0
    in_gt = gt_count > 0
    iou = torch.where(valid, true_pos / union.clamp(min=1), torch.full_like(union, math.nan))
    total = cm.sum()
    freq = gt_count / total.clamp(min=1)
    return {
        "miou": _mean(iou[valid]),
        "per_class_iou": iou.tolist(),
        "pixel_accuracy": (true_pos.sum() / total).item() if total > 0 else math.nan,
        "mean_class_accuracy": _mean(true_pos[in_gt] / gt_count[in_gt]),
        "fw_iou": (freq[in_gt] * iou[in_gt]).sum().item() if in_gt.any() else math.nan,
        "num_valid_classes": int(valid.sum()),
        "absent_classes": (~valid).nonzero().flatten().tolist(),
    }


def _mean(values: torch.Tensor) -> float:
    return values.mean().item() if values.numel() else math.nan


def _percent(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.2f}"


def format_metrics_table(metrics: dict[str, Any], class_names: Sequence[str]) -> str:
    """Renders ``segmentation_metrics`` output as a plain-text table (IoU in percent) plus a summary."""
    ious = metrics["per_class_iou"]
    if len(class_names) != len(ious):
        raise ValueError(f"{len(class_names)} class names for {len(ious)} classes")
    absent = set(metrics["absent_classes"])
    width = max([len("class"), *(len(name) for name in class_names)])
    lines = [f"{'class':<{width}}  {'IoU %':>7}", f"{'-' * width}  {'-' * 7}"]
    for index, (name, iou) in enumerate(zip(class_names, ious, strict=True)):
        lines.append(f"{name:<{width}}  {'absent' if index in absent else _percent(iou):>7}")
    lines += [
        "",
        f"mIoU                 {_percent(metrics['miou'])} "
        f"(over {metrics['num_valid_classes']} of {len(ious)} classes)",
        f"pixel accuracy       {_percent(metrics['pixel_accuracy'])}",
        f"mean class accuracy  {_percent(metrics['mean_class_accuracy'])}",
        f"frequency-weighted   {_percent(metrics['fw_iou'])}",
    ]
    if absent:
        names = ", ".join(class_names[i] for i in sorted(absent))
        lines.append(
            f"Left out of the mIoU because absent from both ground truth and prediction: {names}."
        )
    else:
        lines.append("Every class appears in the ground truth or the prediction; none was left out.")
    return "\n".join(lines)


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value


def metrics_to_json(metrics: dict[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """Converts ``segmentation_metrics`` output into a JSON-safe dict keyed by class names (NaN -> None)."""
    ious = metrics["per_class_iou"]
    if len(class_names) != len(ious):
        raise ValueError(f"{len(class_names)} class names for {len(ious)} classes")
    return {
        "miou": _json_float(metrics["miou"]),
        "pixel_accuracy": _json_float(metrics["pixel_accuracy"]),
        "mean_class_accuracy": _json_float(metrics["mean_class_accuracy"]),
        "fw_iou": _json_float(metrics["fw_iou"]),
        "per_class_iou": {name: _json_float(iou) for name, iou in zip(class_names, ious, strict=True)},
        "absent_classes": [class_names[i] for i in metrics["absent_classes"]],
    }


def boundary_band(target: torch.Tensor, width: int) -> torch.Tensor:
    """The trimap of the v3+ paper's boundary experiment: pixels within ``width`` of a label change.

    A pixel is on a boundary when a 4-neighbour has another label (``ignore_index`` counts as a
    label, so VOC's void outlines mark boundaries too); the band is every pixel at most ``width``
    pixels away from one (square neighbourhood). Restrict a confusion matrix to it to get the
    "mIoU within a band around object boundaries".

    Args:
        target: ``H x W`` or ``N x H x W`` ground-truth labels.
        width: band half-width in pixels, >= 0.

    Returns:
        A bool tensor of ``target``'s shape.
    """
    if width < 0:
        raise ValueError(f"band width must be >= 0, got {width}")
    if target.ndim not in (2, 3):
        raise ValueError(f"expected an H x W or N x H x W label map, got shape {tuple(target.shape)}")
    labels = target if target.ndim == 3 else target.unsqueeze(0)
    edge = torch.zeros_like(labels, dtype=torch.bool)
    vertical = labels[:, 1:, :] != labels[:, :-1, :]
    horizontal = labels[:, :, 1:] != labels[:, :, :-1]
    edge[:, 1:, :] |= vertical
    edge[:, :-1, :] |= vertical
    edge[:, :, 1:] |= horizontal
    edge[:, :, :-1] |= horizontal
    band = torch.nn.functional.max_pool2d(edge.unsqueeze(1).float(), 2 * width + 1, stride=1, padding=width)
    band = band.squeeze(1) > 0
    return band if target.ndim == 3 else band.squeeze(0)
