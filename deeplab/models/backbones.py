"""Backbones that return *named* features and declare their channels and strides.

Every backbone takes ``output_stride`` when it is built: once the running stride reaches the
target, each further stride becomes dilation instead (the first unit of a dilated stage keeps the
previous dilation, as in torchvision and timm). Parameter names follow torchvision (ResNet, VGG,
MobileNetV2) or timm (aligned Xception) so their ImageNet weights load unchanged.

Feature names: ``"low_level"`` (stride 4, for the v3+ decoder), ``"aux"`` (ResNet stage 3, for
the auxiliary head), ``"out"`` (stride = ``output_stride``), and on VGG-16 the taps of v1's
multi-scale features (``"image"``, ``"pool1"`` ... ``"pool4"``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck
from torchvision.ops import Conv2dNormActivation

from .layers import Conv2dSame


@dataclass(frozen=True)
class FeatureSpec:
    """What a backbone promises about one named feature."""

    channels: int
    stride: int


def check_output_stride(backbone: str, output_stride: int, valid: Sequence[int]) -> None:
    if output_stride not in valid:
        choices = ", ".join(str(v) for v in valid)
        raise ValueError(f"{backbone} cannot give output_stride={output_stride}; valid choices: {choices}")


class _StridePlanner:
    """Turns nominal strides into (stride, dilation) pairs for a target output stride."""

    def __init__(self, start_stride: int, output_stride: int) -> None:
        self.stride = start_stride
        self.dilation = 1
        self.output_stride = output_stride

    def step(self, stride: int) -> tuple[int, int, int]:
        """Returns (stride to use, dilation before this step, dilation after it)."""
        previous = self.dilation
        if stride > 1 and self.stride >= self.output_stride:
            self.dilation *= stride
            return 1, previous, self.dilation
        self.stride *= stride
        return stride, previous, self.dilation


class ResNetBackbone(nn.Module):
    """torchvision's ResNet (stride in the 3x3 conv, 7x7 stem), dilated, with optional multi-grid.

    Args:
        depth: 50 or 101.
        output_stride: 8, 16 or 32.
        multi_grid: unit rates of the last stage (v3's Multi_Grid); each unit's dilation is the
            stage's rate times its entry. ``None`` keeps the torchvision/timm convention.
    """

    _LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
    OUTPUT_STRIDES = (8, 16, 32)

    def __init__(self, depth: int = 101, *, output_stride: int = 16, multi_grid: Sequence[int] | None = None):
        super().__init__()
        check_output_stride(f"ResNet-{depth}", output_stride, self.OUTPUT_STRIDES)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        planner = _StridePlanner(4, output_stride)
        self.inplanes = 64
        stages = zip(self._LAYERS[depth], (64, 128, 256, 512), (1, 2, 2, 2), strict=False)
        for index, (blocks, planes, stride) in enumerate(stages, start=1):
            grid = multi_grid if index == 4 else None
            self.add_module(f"layer{index}", self._make_layer(planner, planes, blocks, stride, grid))
        del self.inplanes
        self.feature_specs = {
            "low_level": FeatureSpec(256, 4),
            "aux": FeatureSpec(1024, min(16, output_stride)),
            "out": FeatureSpec(2048, output_stride),
        }

    def _make_layer(
        self, planner: _StridePlanner, planes: int, blocks: int, stride: int, grid: Sequence[int] | None
    ) -> nn.Sequential:
        stride, first_dilation, dilation = planner.step(stride)
        if grid is not None:
            dilations = [dilation * grid[i % len(grid)] for i in range(blocks)]
        else:
            dilations = [first_dilation] + [dilation] * (blocks - 1)
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        units = [Bottleneck(self.inplanes, planes, stride, downsample, dilation=dilations[0])]
        self.inplanes = out_channels
        units += [Bottleneck(out_channels, planes, dilation=d) for d in dilations[1:]]
        return nn.Sequential(*units)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low_level = self.layer1(x)
        aux = self.layer3(self.layer2(low_level))
        return {"low_level": low_level, "aux": aux, "out": self.layer4(aux)}


class VGG16Backbone(nn.Module):
    """VGG-16 made dense (DeepLab v1/v2): 3x3 max pools with padding 1; pools past the output
    stride use stride 1 and the convs after them are dilated (conv5 rate 2 at output stride 8).

    Besides ``"out"`` it returns what DeepLab-MSc (v1's multi-scale features) taps: the input
    ``"image"`` and the outputs of the first four max pools, ``"pool1"`` ... ``"pool4"``.
    Module indices match ``torchvision.models.vgg16().features`` so ImageNet weights load.
    """

    _CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
    OUTPUT_STRIDES = (8, 16, 32)

    def __init__(self, *, output_stride: int = 8) -> None:
        super().__init__()
        check_output_stride("VGG-16", output_stride, self.OUTPUT_STRIDES)
        planner = _StridePlanner(1, output_stride)
        layers: list[nn.Module] = []
        in_channels, dilation = 3, 1
        self.feature_specs = {"image": FeatureSpec(3, 1)}
        self._taps: dict[int, str] = {}  # index in ``features`` -> name of its output
        for item in self._CFG:
            if item == "M":
                stride, _, dilation = planner.step(2)
                layers.append(nn.MaxPool2d(3, stride=stride, padding=1))
                if len(self._taps) < 4:
                    name = f"pool{len(self._taps) + 1}"
                    self._taps[len(layers) - 1] = name
                    self.feature_specs[name] = FeatureSpec(in_channels, planner.stride)
            else:
                layers += [nn.Conv2d(in_channels, item, 3, padding=dilation, dilation=dilation), nn.ReLU(True)]
                in_channels = item
        # DeepLab's VGG adds a 3x3 average pool ("pool5a") after pool5; it has no weights.
        layers.append(nn.AvgPool2d(3, stride=1, padding=1))
        self.features = nn.Sequential(*layers)
        self.feature_specs["out"] = FeatureSpec(512, output_stride)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outputs = {"image": x}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._taps:
                outputs[self._taps[index]] = x
        outputs["out"] = x
        return outputs


def _conv_norm_relu6(inp: int, oup: int, kernel: int, stride: int = 1, *, dilation: int = 1, groups: int = 1,
                     bn_eps: float, tf_padding: bool) -> Conv2dNormActivation:
    """torchvision's conv-BN-ReLU6 block; with ``tf_padding`` a strided conv pads as TF's 'SAME' does
    (it differs from PyTorch's symmetric padding only there, on even sizes)."""
    block = Conv2dNormActivation(inp, oup, kernel, stride, dilation=dilation, groups=groups,
                                 norm_layer=functools.partial(nn.BatchNorm2d, eps=bn_eps), activation_layer=nn.ReLU6)
    if tf_padding and stride > 1:
        block[0] = Conv2dSame(inp, oup, kernel, stride, dilation=dilation, groups=groups, bias=False)
    return block


class _InvertedResidual(nn.Module):
    """MobileNetV2 block laid out like torchvision's (same parameter names) but with dilation."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, dilation: int, *,
                 bn_eps: float = 1e-5, tf_padding: bool = False) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_norm_relu6(inp, hidden, 1, bn_eps=bn_eps, tf_padding=tf_padding))
        layers += [
            _conv_norm_relu6(hidden, hidden, 3, stride, dilation=dilation, groups=hidden, bn_eps=bn_eps,
                             tf_padding=tf_padding),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup, eps=bn_eps),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 (width 1.0) up to its 320-channel block; the final 1x1 1280 conv is dropped,
    as in the TF DeepLab reference. ``low_level`` is block 3's output (24 channels, stride 4).

    Args:
        output_stride: 8, 16 or 32.
        bn_eps: BatchNorm epsilon (torchvision's 1e-5; the TF reference's slim MobileNet uses 1e-3).
        tf_padding: TF's 'SAME' padding for the strided convs (asymmetric on even sizes), as the
            reference's weights expect.
    """

    # (expand ratio t, channels c, repeats n, stride s) from the MobileNetV2 paper.
    _SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))
    _LOW_LEVEL_INDEX = 3
    OUTPUT_STRIDES = (8, 16, 32)

    def __init__(self, *, output_stride: int = 16, bn_eps: float = 1e-5, tf_padding: bool = False) -> None:
        super().__init__()
        check_output_stride("MobileNetV2", output_stride, self.OUTPUT_STRIDES)
        planner = _StridePlanner(2, output_stride)
        layers: list[nn.Module] = [_conv_norm_relu6(3, 32, 3, 2, bn_eps=bn_eps, tf_padding=tf_padding)]
        in_channels = 32
        for t, c, n, s in self._SETTINGS:
            stride, first_dilation, dilation = planner.step(s)
            for i in range(n):
                first = i == 0
                layers.append(_InvertedResidual(in_channels, c, stride if first else 1, t,
                                                first_dilation if first else dilation, bn_eps=bn_eps,
                                                tf_padding=tf_padding))
                in_channels = c
        self.features = nn.Sequential(*layers)
        self.feature_specs = {"low_level": FeatureSpec(24, 4), "out": FeatureSpec(320, output_stride)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        low_level = self.features[: self._LOW_LEVEL_INDEX + 1](x)
        return {"low_level": low_level, "out": self.features[self._LOW_LEVEL_INDEX + 1 :](low_level)}


class XceptionBackbone(nn.Module):
    """timm's modified aligned Xception (65 or 71), built at the requested output stride.

    ``low_level`` is the 256-channel entry-flow feature at stride 4 that the v3+ decoder uses: by
    default timm's tap after the ReLU; ``low_level_preact=True`` takes it before that ReLU, as the TF
    reference's decoder does (its end point is the separable conv's BatchNorm output).
    """

    OUTPUT_STRIDES = (8, 16, 32)

    def __init__(self, depth: int = 65, *, output_stride: int = 16, pretrained: bool = False,
                 low_level_preact: bool = False) -> None:
        super().__init__()
        import timm  # imported here: only the Xception models need it

        check_output_stride(f"Xception-{depth}", output_stride, self.OUTPUT_STRIDES)
        self.body = timm.create_model(
            f"xception{depth}", features_only=True, output_stride=output_stride, pretrained=pretrained,
        )
        info = self.body.feature_info
        self._low_level_index = info.reduction().index(4)
        channels = info.channels()
        self.feature_specs = {
            "low_level": FeatureSpec(channels[self._low_level_index], 4),
            "out": FeatureSpec(channels[-1], output_stride),
        }
        self._preact = low_level_preact
        self._kept: Tensor | None = None
        if low_level_preact:
            # timm taps the output of the ReLU before the strided separable conv; keep that ReLU's input instead
            # (a bound method, so a deep copy of the model hooks its own copy).
            stack_name, relu_name = info.module_name()[self._low_level_index].rsplit(".", 1)
            relu = self.body.get_submodule(stack_name.replace(".", "_", 1)).get_submodule(relu_name)
            relu.inplace = False
            relu.register_forward_pre_hook(self._keep_input)

    def _keep_input(self, _module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self._kept = args[0]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.body(x)
        low_level = features[self._low_level_index]
        if self._preact:
            low_level, self._kept = self._kept, None
        return {"low_level": low_level, "out": features[-1]}


def feature_shapes(backbone: nn.Module, size: int = 65) -> dict[str, torch.Size]:
    """Runs a dummy batch and returns the real feature shapes (used to check declarations)."""
    with torch.no_grad():
        return {k: v.shape for k, v in backbone(torch.zeros(1, 3, size, size)).items()}
