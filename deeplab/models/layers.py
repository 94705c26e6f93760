"""Small building blocks shared by every DeepLab head."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def tf_same_padding(size: int | Tensor, kernel_size: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding of one side: (before, after), the extra pixel after when the total is odd.

    PyTorch pads both sides alike; TF pads asymmetrically when a strided layer meets an even size, so
    the two disagree by one pixel of alignment there (the reference's MobileNet-v2 and ResNet stem pool).
    Integer arithmetic only, so that under ONNX tracing (where ``size`` is a traced tensor) the padding
    stays a function of the input's size instead of the example's.
    """
    effective = (kernel_size - 1) * dilation + 1
    total = ((size + stride - 1) // stride - 1) * stride + effective - size
    total = total.clamp(min=0) if isinstance(total, Tensor) else max(total, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel_size: int, stride: int, dilation: int = 1, value: float = 0.0) -> Tensor:
    """Pads an N x C x H x W tensor as TF's 'SAME' would before a VALID conv or pool."""
    top, bottom = tf_same_padding(x.shape[-2], kernel_size, stride, dilation)
    left, right = tf_same_padding(x.shape[-1], kernel_size, stride, dilation)
    return F.pad(x, [left, right, top, bottom], value=value)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF's 'SAME' padding computed from each input's size (same parameters and names).

    Built like ``nn.Conv2d``; the ``padding`` argument is ignored.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        x = pad_same(x, self.kernel_size[0], self.stride[0], self.dilation[0])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MaxPool2dSame(nn.MaxPool2d):
    """``nn.MaxPool2d`` with TF's 'SAME' padding (padded pixels never win)."""

    def forward(self, x: Tensor) -> Tensor:
        x = pad_same(x, self.kernel_size, self.stride, 1, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


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
