"""The training loss: pixel-wise cross-entropy that skips ``ignore_index``, over every training output."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from deeplab.constants import IGNORE_INDEX
from deeplab.models.segmenter import upsample_to


def labelled_pixels(target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """The number of pixels of ``target`` that count in the loss (a float scalar on its device)."""
    return (target != ignore_index).sum().float()


def segmentation_loss(
    outputs: Tensor | Mapping[str, Tensor],
    target: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    aux_weight: float = 0.4,
    normalizer: Tensor | float | None = None,
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
        normalizer: what each term's summed cross-entropy is divided by; by default this batch's
            labelled pixels (the mean). Data-parallel training passes the labelled pixels of the
            global batch divided by the number of processes: as DistributedDataParallel averages the
            processes' gradients, they are then those of the mean over the global batch.

    Returns:
        A scalar. If every pixel is ignored it is 0 and still backpropagates (zero gradients).
    """
    if isinstance(outputs, Tensor):
        outputs = {"out": outputs}
    target = target.long()
    if normalizer is None:
        normalizer = labelled_pixels(target, ignore_index)
    # Sum / count, not torch's "mean": with every pixel ignored it is 0 (with a graph), not NaN.
    normalizer = torch.as_tensor(normalizer, dtype=torch.float32, device=target.device).clamp(min=1e-6)
    total = None
    for name, logits in outputs.items():
        if (logits.ndim != 4 or target.ndim != 3 or logits.shape[0] != target.shape[0]
                or (name == "out" and logits.shape[-2:] != target.shape[-2:])):
            raise ValueError(f"expected logits N x C x H x W and target N x H x W of the same N (and H, W for "
                             f"'out'); got {name!r} {tuple(logits.shape)} and target {tuple(target.shape)}")
        if logits.shape[-2:] != target.shape[-2:]:
            logits = upsample_to(logits, target.shape[-2:])
        term = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum") / normalizer
        term = aux_weight * term if name == "aux" else term
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no outputs to compute a loss from")
    return total
