"""Heads: each turns the backbone's named features into class logits at feature resolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .aspp import ASPP, ASPPv2
from .layers import ConvBNReLU, conv3x3_bn_relu
from .segmenter import upsample_to


def fc_layers(in_channels: int, rate: int, hidden: int = 1024, dropout: float = 0.5) -> list[nn.Module]:
    """VGG's fc6 (3x3, atrous) and fc7 (1x1) made convolutional, each followed by ReLU and dropout
    (0.5 in the v1/v2 Caffe models)."""
    return [
        nn.Conv2d(in_channels, hidden, 3, padding=rate, dilation=rate),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
    ]


def fc_branch(in_channels: int, rate: int, num_classes: int, hidden: int = 1024, dropout: float = 0.5) -> nn.Sequential:
    """fc6 - fc7 - fc8: :func:`fc_layers` and a 1x1 classifier."""
    return nn.Sequential(*fc_layers(in_channels, rate, hidden, dropout), nn.Conv2d(hidden, num_classes, 1))


class LargeFOVHead(nn.Sequential):
    """DeepLab v1 LargeFOV: one fc6 (3x3, rate 12, 1024) - fc7 (1x1, 1024) - fc8 branch."""

    def __init__(self, in_channels: int, num_classes: int, *, rate: int = 12, dropout: float = 0.5) -> None:
        super().__init__(*fc_branch(in_channels, rate, num_classes, dropout=dropout))

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return super().forward(features["out"])


class MultiScaleFeatures(nn.Module):
    """DeepLab-MSc (v1 paper, Sec. 4.3 "multi-scale prediction"): a two-layer MLP on the input image and on
    each of the first four max-pooling outputs: 128 3x3 filters, then 128 1x1 filters, with ReLU.

    The 3x3 conv strides to the output stride, so the five 128-channel maps meet the main network's
    last feature map and are concatenated with it (5 x 128 = 640 channels). Dropout after each ReLU,
    like fc6/fc7 (the paper does not say; our choice).

    Args:
        taps: the backbone's declarations of the tapped features (name -> channels and stride).
        output_stride: the stride of the map they are concatenated with.
        channels: width of each MLP (128 in the paper).
        dropout: after each ReLU.
    """

    TAPS = ("image", "pool1", "pool2", "pool3", "pool4")

    def __init__(self, taps: dict, output_stride: int, *, channels: int = 128, dropout: float = 0.5) -> None:
        super().__init__()
        self.branches = nn.ModuleDict()
        for name in self.TAPS:
            spec = taps[name]
            stride = max(1, output_stride // spec.stride)
            self.branches[name] = nn.Sequential(
                nn.Conv2d(spec.channels, channels, 3, stride=stride, padding=1),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Conv2d(channels, channels, 1),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
            )
        self.out_channels = channels * len(self.TAPS)

    def forward(self, features: dict[str, Tensor], size: torch.Size | tuple[int, int]) -> Tensor:
        maps = []
        for name, branch in self.branches.items():
            y = branch(features[name])
            if y.shape[-2:] != size:  # strided conv and pooling round alike; this guards other layouts
                y = upsample_to(y, size)
            maps.append(y)
        return torch.cat(maps, dim=1)


class LargeFOVMScHead(nn.Module):
    """DeepLab-MSc-LargeFOV: the LargeFOV fc6 - fc7 trunk; its output concatenated with the
    :class:`MultiScaleFeatures` maps feeds the fc8 classifier."""

    def __init__(self, taps: dict, num_classes: int, *, output_stride: int, rate: int = 12,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.fc = nn.Sequential(*fc_layers(taps["out"].channels, rate, dropout=dropout))
        self.multiscale = MultiScaleFeatures(taps, output_stride, dropout=dropout)
        self.classifier = nn.Conv2d(1024 + self.multiscale.out_channels, num_classes, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = self.fc(features["out"])
        return self.classifier(torch.cat([x, self.multiscale(features, x.shape[-2:])], dim=1))


class DeepLabV2Head(nn.Module):
    """DeepLab v2 ASPP-L: four class-score branches at rates 6/12/18/24, summed.

    ``fc_layers=True`` gives the VGG variant (fc6-fc7-fc8 per branch); ``False`` gives the
    ResNet variant (one 3x3 atrous classifier per branch).
    """

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int], *, fc_layers: bool,
                 dropout: float = 0.5):
        super().__init__()
        if fc_layers:
            branches = [fc_branch(in_channels, rate, num_classes, dropout=dropout) for rate in atrous_rates]
        else:
            branches = [nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in atrous_rates]
        self.aspp = ASPPv2(branches)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.aspp(features["out"])


class DeepLabV3Head(nn.Sequential):
    """DeepLab v3: ASPP -> [3x3 conv, torchvision's extra layer] -> 1x1 classifier."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        atrous_rates: Sequence[int],
        *,
        channels: int = 256,
        extra_conv: bool = False,
        image_pooling: bool = True,
        dropout: float = 0.1,
        separable: bool = False,
        align_corners: bool = False,
    ) -> None:
        layers: list[nn.Module] = [
            ASPP(in_channels, atrous_rates, channels, image_pooling=image_pooling, dropout=dropout,
                 separable=separable, align_corners=align_corners)
        ]
        if extra_conv:
            layers.append(ConvBNReLU(channels, channels, 3))
        layers.append(nn.Conv2d(channels, num_classes, 1))
        super().__init__(*layers)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return super().forward(features["out"])


class DeepLabV3PlusHead(nn.Module):
    """DeepLab v3+: ASPP encoder output, upsampled to the stride-4 feature and fused with it.

    low-level 1x1 -> 48 channels; concat with the upsampled ASPP output; two 3x3 convs (256,
    separable for Xception); 1x1 classifier.
    """

    logits_feature = "low_level"  # its logits are at this feature's resolution (Segmenter.logits_stride)

    def __init__(
        self,
        in_channels: int,
        low_level_channels: int,
        num_classes: int,
        atrous_rates: Sequence[int],
        *,
        channels: int = 256,
        low_level_projection: int = 48,
        separable: bool = False,
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, atrous_rates, channels, separable=separable, dropout=dropout,
                         align_corners=align_corners)
        self.align_corners = align_corners
        self.low_level = ConvBNReLU(low_level_channels, low_level_projection, 1)
        self.fuse = nn.Sequential(
            conv3x3_bn_relu(channels + low_level_projection, channels, separable=separable),
            conv3x3_bn_relu(channels, channels, separable=separable),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        low_level = self.low_level(features["low_level"])
        x = self.aspp(features["out"])
        x = upsample_to(x, low_level.shape[-2:], self.align_corners)
        return self.classifier(self.fuse(torch.cat([x, low_level], dim=1)))


class AuxHead(nn.Sequential):
    """Auxiliary FCN head on the ``aux`` feature (ResNet stage 3), used only by the training loss.

    Flat layout (conv, bn, relu, dropout, conv) mirrors torchvision's FCNHead for weight loading.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256) -> None:
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )
