"""ResNet-v1 "beta" as in the TF DeepLab reference (``resnet_v1_beta.py`` on tf-slim's ResNet).

It differs from torchvision's ResNet in ways that change every activation, so the authors' ImageNet
checkpoints need this network, not a converted torchvision one:
- the stem is three 3x3 convs (64, 64, 128 channels; the first strided), then a 3x3 max pool;
- each block strides in its *last* unit (tf-slim), on the 3x3 conv; a unit whose input and output
  widths agree takes its shortcut by subsampling (a 1x1 max pool), not by a conv;
- past the output stride a unit runs unstrided and the rate grows after it (``stack_blocks_dense``);
  block 4's units multiply the rate by the multi-grid (the reference's default is (1, 1, 1));
- the decoder's stride-4 feature is block 1, unit 2's last BatchNorm output, before the residual sum.
TF's 'SAME' pool padding (asymmetric on even sizes) is ``tf_padding=True``; strided convs use TF's
"fixed" padding, which is PyTorch's symmetric padding for odd kernels.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from torch import Tensor, nn

from .backbones import FeatureSpec, check_output_stride
from .layers import MaxPool2dSame


class BetaBottleneck(nn.Module):
    """tf-slim's ``bottleneck_v1``: 1x1 -> 3x3 (strided, atrous) -> 1x1, each with BN; ReLU after the sum."""

    def __init__(self, in_channels: int, channels: int, *, stride: int, dilation: int, bn_eps: float) -> None:
        super().__init__()
        out_channels = channels * 4
        norm = functools.partial(nn.BatchNorm2d, eps=bn_eps)
        self.stride = stride
        self.shortcut = None
        if in_channels != out_channels:
            conv = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
            self.shortcut = nn.Sequential(conv, norm(out_channels))
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def residual(self, x: Tensor) -> Tensor:
        """The residual branch alone (the reference's ``conv3`` end point)."""
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.bn3(self.conv3(y))

    def merge(self, x: Tensor, residual: Tensor) -> Tensor:
        shortcut = self.shortcut(x) if self.shortcut is not None else x[:, :, :: self.stride, :: self.stride]
        return self.relu(shortcut + residual)

    def forward(self, x: Tensor) -> Tensor:
        return self.merge(x, self.residual(x))


class ResNetV1BetaBackbone(nn.Module):
    """ResNet-v1-50/101 "beta" with named features ``low_level`` (stride 4), ``aux`` (block 3), ``out``.

    Args:
        depth: 50 or 101.
        output_stride: 8, 16 or 32.
        multi_grid: block 4's unit rates (three entries), multiplied by the block's rate.
        bn_eps: BatchNorm epsilon (1e-5 in the reference's ResNet arg scope).
        tf_padding: TF's 'SAME' padding for the stem's max pool.
    """

    _UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
    OUTPUT_STRIDES = (8, 16, 32)

    def __init__(self, depth: int = 101, *, output_stride: int = 16, multi_grid: Sequence[int] = (1, 1, 1),
                 bn_eps: float = 1e-5, tf_padding: bool = True) -> None:
        super().__init__()
        check_output_stride(f"ResNet-v1-{depth}-beta", output_stride, self.OUTPUT_STRIDES)
        if depth not in self._UNITS:
            raise ValueError(f"ResNet-v1-beta depth must be 50 or 101, got {depth}")
        norm = functools.partial(nn.BatchNorm2d, eps=bn_eps)
        self.stem = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False), norm(cout), nn.ReLU(inplace=True))
            for cin, cout, stride in ((3, 64, 2), (64, 64, 1), (64, 128, 1))
        ])
        self.pool = MaxPool2dSame(3, 2) if tf_padding else nn.MaxPool2d(3, 2, padding=1)
        current, rate, in_channels = 4, 1, 128
        for index, (units, channels) in enumerate(zip(self._UNITS[depth], (64, 128, 256, 512), strict=True), 1):
            grid = tuple(multi_grid) if index == 4 else (1,) * units
            if len(grid) != units:
                raise ValueError(f"multi_grid needs {units} entries for block 4, got {tuple(multi_grid)}")
            block = []
            for unit in range(units):
                stride = 2 if unit == units - 1 and index < 4 else 1
                if current == output_stride:  # past the output stride: unstrided, and the rate grows after
                    block.append(BetaBottleneck(in_channels, channels, stride=1, dilation=rate * grid[unit],
                                                bn_eps=bn_eps))
                    rate *= stride
                else:
                    block.append(BetaBottleneck(in_channels, channels, stride=stride, dilation=grid[unit],
                                                bn_eps=bn_eps))
                    current *= stride
                in_channels = channels * 4
            self.add_module(f"block{index}", nn.Sequential(*block))
        self.feature_specs = {
            "low_level": FeatureSpec(256, 4),
            "aux": FeatureSpec(1024, output_stride),
            "out": FeatureSpec(2048, output_stride),
        }

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.pool(self.stem(x))
        x = self.block1[0](x)
        low_level = self.block1[1].residual(x)
        x = self.block1[1].merge(x, low_level)
        x = self.block1[2:](x)
        aux = self.block3(self.block2(x))
        return {"low_level": low_level, "aux": aux, "out": self.block4(aux)}
