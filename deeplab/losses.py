"""The training loss: pixel-wise cross-entropy that skips ``ignore_index``, over every training output."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from deeplab.constants import IGNORE_INDEX


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    # Sum / count equals the "mean" reduction, but stays 0 (with a graph) when every pixel is
    # ignored, where torch's mean over zero elements gives NaN.
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    count = (target != ignore_index).sum().clamp(min=1)
    return total / count


def segmentation_loss(
    outputs: Tensor | Mapping[str, Tensor],
    target: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    aux_weight: float = 0.4,
) -> Tensor:
    """Cross-entropy over the non-ignored pixels, summed over a model's training outputs.

    Args:
        outputs: ``N x C x H x W`` logits, or the dict of ``Segmenter.forward_train``: every entry
            (main ``"out"``, each scale of a multi-scale model) has weight 1, except ``"aux"``, which
            has ``aux_weight``. ``"out"`` must have the target's size; other entries at another
            resolution are upsampled (bilinear, ``align_corners=False``).
        target: ``N x H x W`` class ids, ``ignore_index`` where unlabelled.
        ignore_index: label value that contributes nothing to the loss.
        aux_weight: weight of the auxiliary head's term.

    Returns:
        A scalar. If every pixel is ignored it is 0 and still backpropagates (zero gradients).
    """
    if isinstance(outputs, Tensor):
        outputs = {"out": outputs}
    target = target.long()
    total = None
    for name, logits in outputs.items():
        if (logits.ndim != 4 or target.ndim != 3 or logits.shape[0] != target.shape[0]
                or (name == "out" and logits.shape[-2:] != target.shape[-2:])):
            raise ValueError(f"expected logits N x C x H x W and target N x H x W of the same N (and H, W for "
                             f"'out'); got {name!r} {tuple(logits.shape)} and target {tuple(target.shape)}")
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        term = _cross_entropy(logits.float(), target, ignore_index)
        term = aux_weight * term if name == "aux" else term
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no outputs to compute a loss from")
    return total
