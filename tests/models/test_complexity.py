"""Multiply-add counts land on independently counted native PyTorch figures (counted here on meta tensors)."""

import pytest
import torch

from deeplab import create_model
from deeplab.models.complexity import count_macs, count_parameters

# Native PyTorch multiply-adds at 513x513 (GMACs, conv and linear weights only, 21 classes), counted apart from
# deeplab with torch.utils.flop_counter.FlopCounterMode on models built from torchvision's ResNet and timm's
# aligned Xception-65 and MobileNetV2 (ASPP rates 6/12/18 at OS 16, 12/24/36 at OS 8, 256 channels).
NATIVE = [
    ("deeplabv3_resnet101", 16, 71.06), ("deeplabv3_resnet101", 8, 246.18),
    ("deeplabv3plus_resnet101", 16, 92.82), ("deeplabv3plus_resnet101", 8, 267.92),
    ("deeplabv3plus_xception65", 16, 54.04), ("deeplabv3plus_xception65", 8, 176.85),
    ("deeplabv3_mobilenetv2", 16, 2.74),
]


@pytest.mark.parametrize(("name", "output_stride", "gmacs"), NATIVE)
def test_macs_match_native_figures(name, output_stride, gmacs):
    with torch.device("meta"):
        model = create_model(name, num_classes=21, output_stride=output_stride)
    assert count_macs(model, 513) / 1e9 == pytest.approx(gmacs, rel=0.01)


def test_macs_of_a_single_conv_by_hand():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1))

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return self.conv(x)

    assert count_macs(Wrapper(), (5, 7)) == 5 * 7 * 8 * 3 * 3 * 3


def test_parameter_count_of_v1_largefov():
    # VGG-16 convs (14.71M) + fc6 3x3x512x1024 + fc7 1024x1024 + fc8 1024x21, with biases.
    expected = 14_714_688 + (3 * 3 * 512 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 21 + 21)
    assert count_parameters(create_model("deeplabv1_vgg16", num_classes=21)) == expected


@pytest.mark.parametrize(("output_stride", "side"), [(16, 33), (8, 65)])
def test_light_mobilenetv2_costs_the_v3_model_plus_a_separable_decoder(output_stride, side):
    with torch.device("meta"):
        light = create_model("deeplabv3plus_mobilenetv2_light", num_classes=21, output_stride=output_stride)
        v3 = create_model("deeplabv3_mobilenetv2", num_classes=21, output_stride=output_stride)
        full = create_model("deeplabv3plus_mobilenetv2", num_classes=21, output_stride=output_stride)
    # Same backbone and ASPP as v3 (1x1 + image pooling); v3's classifier at the output stride is replaced by
    # the decoder on the 129 x 129 stride-4 grid of a 513 px image: low-level 1x1 24->48, two separable 3x3
    # (depthwise + pointwise to 256), the 256->21 classifier.
    decoder = (24 * 48 + 9 * 304 + 304 * 256 + 9 * 256 + 256 * 256 + 256 * 21) * 129 * 129
    expected = count_macs(v3, 513) - 256 * 21 * side * side + decoder
    assert count_macs(light, 513) == expected
    # The bound: a v3+ "MobileNet" should cost the same order as the v3 model the name stands for (the TF zoo's
    # 2.75 GMACs at OS 16), so its decoder may at most double it; the full model's plain 3x3 decoder and ASPP
    # cost 9.8x (OS 16) and 4.6x (OS 8) as much as that v3 model.
    assert count_macs(light, 513) < 2 * count_macs(v3, 513) < count_macs(full, 513)
