"""The training loss: pixel-wise cross-entropy that skips ``ignore_index``, plus an optional aux term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deeplab.constants import IGNORE_INDEX


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    # Sum / count equals the "mean" reduction, but stays 0 (with a graph) when every pixel is
    # ignored, where torch's mean over zero elements gives NaN.
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    count = (target != ignore_index).sum().clamp(min=1)
    return total / count


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    aux_logits: torch.Tensor | None = None,
    aux_weight: float = 0.4,
) -> torch.Tensor:
    """Cross-entropy over the non-ignored pixels, plus ``aux_weight`` times that of the aux head.

    Args:
        logits: ``N x C x H x W`` scores at the target's size.
        target: ``N x H x W`` class ids (int64), ``ignore_index`` where unlabelled.
        ignore_index: label value that contributes nothing to the loss.
        aux_logits: optional ``N x C x h x w`` scores of an auxiliary head, at any resolution; they
            are upsampled (bilinear, ``align_corners=False``) to ``H x W``.
        aux_weight: weight of the auxiliary term.

    Returns:
        A scalar. If every pixel is ignored it is 0 and still backpropagates (zero gradients).
    """
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"expected logits N x C x H x W and target N x H x W of the same N, H, W; "
            f"got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    target = target.long()
    loss = _cross_entropy(logits, target, ignore_index)
    if aux_logits is not None:
        if aux_logits.shape[-2:] != target.shape[-2:]:
            aux_logits = F.interpolate(
                aux_logits, size=target.shape[-2:], mode="bilinear", align_corners=False
            )
        loss = loss + aux_weight * _cross_entropy(aux_logits, target, ignore_index)
    return loss
