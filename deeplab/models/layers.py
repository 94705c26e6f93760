"""Small building blocks shared by every DeepLab head."""

from __future__ import annotations

from torch import nn


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU, with "same" padding for any dilation.

    Children are indexed ``0`` (conv), ``1`` (bn), ``2`` (relu) so that state dicts line up
    with torchvision's ASPP modules.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableConv2d(nn.Sequential):
    """Atrous separable convolution (v3+): depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU.

    The BN + ReLU after the depthwise conv follows the v3+ paper (and the TF reference).
    """

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int = 1) -> None:
        super().__init__(
            ConvBNReLU(in_channels, in_channels, 3, dilation=dilation, groups=in_channels),
            ConvBNReLU(in_channels, out_channels, 1),
        )


def conv3x3_bn_relu(in_channels: int, out_channels: int, *, dilation: int = 1, separable: bool = False) -> nn.Module:
    """A 3x3 (atrous) conv block, plain or depthwise-separable."""
    if separable:
        return SeparableConv2d(in_channels, out_channels, dilation=dilation)
    return ConvBNReLU(in_channels, out_channels, 3, dilation=dilation)
