"""One container for every DeepLab version: backbone -> head -> logits at the input's size."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def upsample_to(logits: Tensor, size: tuple[int, int] | list[int], align_corners: bool = False) -> Tensor:
    """Bilinear: the one resize rule used for every output and feature map.

    ``align_corners=False`` by default (PyTorch's convention); ``True`` reproduces the TF reference's
    ``tf.image.resize_bilinear(..., align_corners=True)`` for models that carry its weights.
    """
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


class Segmenter(nn.Module):
    """A DeepLab model.

    ``forward(x)`` returns one logits tensor, N x num_classes x H x W, at the input's size (inference,
    export). ``forward_train(x)`` returns everything the training loss needs, as a dict.

    Args:
        backbone: returns a dict of named features and declares them in ``feature_specs``.
        head: maps that dict to logits at feature resolution.
        aux_head: optional head on the ``aux`` feature.
        num_classes: number of output classes.
        output_stride: the backbone's output stride (recorded for users and checkpoints).
        align_corners: the bilinear resize of the logits to the input's size (True: the TF reference's).
    """

    def __init__(
        self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None = None, *,
        num_classes: int, output_stride: int, align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.align_corners = align_corners

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an N x 3 x H x W image batch, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        return upsample_to(self.coarse_logits(x), x.shape[-2:], self.align_corners)

    def coarse_logits(self, x: Tensor) -> Tensor:
        """The logits at the network's own output resolution (``logits_stride``), before the resize to the input.

        The TF reference's multi-scale evaluation resizes these once, straight to the image
        (:class:`deeplab.inference.Predictor`); ``forward`` is this plus the resize to ``x``'s size.
        """
        self._check_input(x)
        return self.head(self.backbone(x))

    @property
    def logits_stride(self) -> int:
        """The stride of :meth:`coarse_logits`: the feature the head's logits are aligned with (the decoder's
        stride-4 ``low_level`` for v3+, else ``out`` at the output stride)."""
        return self.backbone.feature_specs[getattr(self.head, "logits_feature", "out")].stride

    def forward_train(self, x: Tensor) -> dict[str, Tensor]:
        """Logits for the loss, all at the input's size: ``"out"`` (main) and ``"aux"`` with an aux head.

        This is what a training module wrapped in DistributedDataParallel calls, so that every output
        the loss uses is computed inside the wrapped ``forward``.
        """
        self._check_input(x)
        features = self.backbone(x)
        size = x.shape[-2:]
        outputs = {"out": upsample_to(self.head(features), size, self.align_corners)}
        if self.aux_head is not None:
            outputs["aux"] = upsample_to(self.aux_head(features["aux"]), size, self.align_corners)
        return outputs
