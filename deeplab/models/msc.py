"""DeepLab v2's multi-scale input fusion (MSC): one network, shared weights, several input scales, max.

v2 paper (arXiv:1606.00915) Sec. 4.1: the image is fed at scales 1, 0.75 and 0.5; each scale's score
map is brought to the resolution of the largest scale's and the maps are fused by taking, at every
position and for every class, the maximum. Training puts the loss on every scale's output and on
the fused one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .segmenter import Segmenter, upsample_to

PAPER_SCALES = (1.0, 0.75, 0.5)


def scale_key(scale: float) -> str:
    """Name of a scale's output in ``forward_train``: ``"scale_0.75"``."""
    return f"scale_{float(scale)}"


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """The scales as a tuple of floats; raises ``ValueError`` unless they are distinct positive numbers."""
    if isinstance(scales, str | bytes) or not all(
        isinstance(s, int | float) and not isinstance(s, bool) and s > 0 for s in scales
    ):
        raise ValueError(f"msc_scales must be a list of positive numbers, e.g. [1.0, 0.75, 0.5], got {scales!r}")
    values = tuple(float(s) for s in scales)
    if len(set(values)) != len(values):
        raise ValueError(f"msc_scales must not repeat a scale, got {list(values)}")
    return values


def scaled_side(side: int | Tensor, scale: float) -> int | Tensor:
    """``max(1, round(side * scale))``, rounding half to even as Python does.

    While a model is traced for export a side is a 0-d tensor, which Python's ``round`` cannot take; then the
    same arithmetic is done with tensor operations (in float64, as Python's), so the export records it and
    computes the side of every input size rather than the traced one's.
    """
    if isinstance(side, Tensor):
        return torch.round(side.to(torch.float64) * scale).clamp_min(1).to(torch.int64)
    return max(1, round(side * scale))


class MSCSegmenter(Segmenter):
    """A :class:`Segmenter` that runs its network on every scale of the input and fuses by max.

    Its parameters are exactly those of the plain model (same names), so weights load strictly
    either way. ``forward(x)`` returns the fused logits at the input's size; ``forward_train(x)``
    returns ``"out"`` (fused), one ``"scale_<s>"`` entry per scale and ``"aux"`` (the largest
    scale's, when there is an aux head), all at the input's size.

    Args:
        scales: input scales; the fusion happens at the score resolution of the largest one.
        align_corners: the final resize of the logits to the input's size, as :class:`Segmenter`'s (the
            rescaled inputs and the fusion's resizes keep PyTorch's convention).
        Others as :class:`Segmenter`.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None = None, *,
                 num_classes: int, output_stride: int, scales: Sequence[float] = PAPER_SCALES,
                 align_corners: bool = False) -> None:
        super().__init__(backbone, head, aux_head, num_classes=num_classes, output_stride=output_stride,
                         align_corners=align_corners)
        self.scales = check_scales(scales)
        if not self.scales:
            raise ValueError("msc_scales needs at least one scale")

    @classmethod
    def from_segmenter(cls, model: Segmenter, scales: Sequence[float]) -> MSCSegmenter:
        """The same modules (so the same weights, shared) run at ``scales``, with the same final resize."""
        return cls(model.backbone, model.head, model.aux_head, num_classes=model.num_classes,
                   output_stride=model.output_stride, scales=scales, align_corners=model.align_corners)

    def _rescaled(self, x: Tensor, scale: float) -> Tensor:
        if scale == 1.0:
            return x
        return upsample_to(x, (scaled_side(x.shape[-2], scale), scaled_side(x.shape[-1], scale)))

    def _scores(self, x: Tensor, *, with_aux: bool) -> tuple[dict[float, Tensor], Tensor | None]:
        """Each scale's score map at its own resolution, and the largest scale's aux logits."""
        largest = max(self.scales)
        scores, aux = {}, None
        for scale in self.scales:
            features = self.backbone(self._rescaled(x, scale))
            scores[scale] = self.head(features)
            if with_aux and scale == largest:
                aux = self.aux_head(features["aux"])
        return scores, aux

    def _fuse(self, scores: dict[float, Tensor]) -> Tensor:
        size = scores[max(self.scales)].shape[-2:]
        resized = [s if s.shape[-2:] == size else upsample_to(s, size) for s in scores.values()]
        return torch.stack(resized).amax(dim=0)

    def forward(self, x: Tensor) -> Tensor:
        return upsample_to(self.coarse_logits(x), x.shape[-2:], self.align_corners)

    def coarse_logits(self, x: Tensor) -> Tensor:
        """The fused logits at the largest scale's score resolution (before the resize to the input)."""
        self._check_input(x)
        scores, _ = self._scores(x, with_aux=False)
        return self._fuse(scores)

    def forward_train(self, x: Tensor) -> dict[str, Tensor]:
        """``"out"`` (fused), ``"scale_<s>"`` per scale and ``"aux"`` if any, all at the input's size."""
        self._check_input(x)
        size = x.shape[-2:]
        scores, aux = self._scores(x, with_aux=self.aux_head is not None)
        outputs = {"out": upsample_to(self._fuse(scores), size, self.align_corners)}
        outputs.update({scale_key(scale): upsample_to(s, size, self.align_corners) for scale, s in scores.items()})
        if aux is not None:
            outputs["aux"] = upsample_to(aux, size, self.align_corners)
        return outputs

    def extra_repr(self) -> str:
        return f"scales={self.scales}"
