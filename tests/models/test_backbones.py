"""Backbone feature declarations are checked against real outputs."""

import math

import pytest
import torch

from deeplab.models.backbones import (
    MobileNetV2Backbone,
    ResNetBackbone,
    VGG16Backbone,
    XceptionBackbone,
    feature_shapes,
)

BACKBONES = {
    "resnet50": lambda os: ResNetBackbone(50, output_stride=os),
    "resnet101-multigrid": lambda os: ResNetBackbone(101, output_stride=os, multi_grid=(1, 2, 4)),
    "vgg16": lambda os: VGG16Backbone(output_stride=os),
    "mobilenetv2": lambda os: MobileNetV2Backbone(output_stride=os),
    "xception65": lambda os: XceptionBackbone(65, output_stride=os),
    "xception71": lambda os: XceptionBackbone(71, output_stride=os),
}


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_declared_features_match_outputs(name, output_stride):
    backbone = BACKBONES[name](output_stride).eval()
    shapes = feature_shapes(backbone, size=65)
    assert set(shapes) == set(backbone.feature_specs)
    assert shapes["out"][-1] == math.ceil(65 / output_stride)
    for feature, spec in backbone.feature_specs.items():
        side = math.ceil(65 / spec.stride)
        assert tuple(shapes[feature]) == (1, spec.channels, side, side), feature


def test_low_level_is_at_stride_four_everywhere():
    for make in BACKBONES.values():
        specs = make(16).feature_specs
        if "low_level" in specs:
            assert specs["low_level"].stride == 4


@pytest.mark.parametrize("make", [lambda: ResNetBackbone(50), lambda: VGG16Backbone(), lambda: MobileNetV2Backbone()])
def test_parameter_names_match_torchvision(make):
    import torchvision

    reference = {
        ResNetBackbone: torchvision.models.resnet50,
        VGG16Backbone: torchvision.models.vgg16,
        MobileNetV2Backbone: torchvision.models.mobilenet_v2,
    }
    ours = make()
    theirs = reference[type(ours)](weights=None).state_dict()
    for key, value in ours.state_dict().items():
        assert key in theirs and theirs[key].shape == value.shape, key


def test_vgg_largefov_layout():
    backbone = VGG16Backbone(output_stride=8)
    pools = [m for m in backbone.features if isinstance(m, torch.nn.MaxPool2d)]
    assert [p.stride for p in pools] == [2, 2, 2, 1, 1]
    convs = [m for m in backbone.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation[0] for c in convs[-3:]] == [2, 2, 2]  # conv5 at rate 2
