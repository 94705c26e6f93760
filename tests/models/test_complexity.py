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
