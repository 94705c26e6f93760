"""Atrous Spatial Pyramid Pooling: v2's summed classifiers and v3's concatenated branches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ConvBNReLU, conv3x3_bn_relu
from .segmenter import upsample_to


class ASPPv2(nn.ModuleList):
    """DeepLab v2 ASPP: parallel branches, each predicting class scores; their outputs are summed."""

    def forward(self, x: Tensor) -> Tensor:
        out = self[0](x)
        for branch in self[1:]:
            out = out + branch(x)
        return out


class ImagePooling(nn.Sequential):
    """Image-level feature: global average pool -> 1x1 conv + BN + ReLU -> broadcast back.

    With one pooled value per channel (batch size 1 in training) BatchNorm cannot compute batch
    statistics, so that case normalises with the running statistics instead of crashing.
    """

    def __init__(self, in_channels: int, out_channels: int, *, align_corners: bool = False) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pool, conv, bn, relu = self
        y = conv(pool(x))
        if self.training and y.shape[0] == 1:
            y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        else:
            y = bn(y)
        return upsample_to(relu(y), size, self.align_corners)


class ASPP(nn.Module):
    """DeepLab v3 ASPP: 1x1 conv, one 3x3 atrous conv per rate, image pooling; concat; 1x1 project.

    Args:
        in_channels: channels of the backbone's ``out`` feature.
        atrous_rates: rates of the 3x3 branches; empty gives the MobileNet variant (1x1 + pooling).
        out_channels: width of every branch and of the projection (256 in the papers).
        separable: use atrous separable convs (v3+ with Xception).
        dropout: after the projection (0.1 in the TF reference, 0.5 in torchvision).
        align_corners: the image-pooling branch's resize (True: the TF reference's).
    """

    def __init__(
        self,
        in_channels: int,
        atrous_rates: Sequence[int],
        out_channels: int = 256,
        *,
        separable: bool = False,
        image_pooling: bool = True,
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        branches += [
            conv3x3_bn_relu(in_channels, out_channels, dilation=rate, separable=separable) for rate in atrous_rates
        ]
        if image_pooling:
            branches.append(ImagePooling(in_channels, out_channels, align_corners=align_corners))
        self.convs = nn.ModuleList(branches)
        # Indices 0-3 mirror torchvision's ASPP.project so its weights load unchanged.
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))
