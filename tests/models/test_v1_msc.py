"""DeepLab-MSc-LargeFOV (v1's multi-scale features): shapes, the paper's parameter count, spec round trip."""

import pytest
import torch

from deeplab import create_model
from deeplab.models import ModelSpec, build_from_spec
from deeplab.models.heads import LargeFOVMScHead


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("size", [(65, 65), (57, 71)])
def test_shapes_in_training_and_eval(output_stride, size):
    torch.manual_seed(0)
    model = create_model("deeplabv1_vgg16", num_classes=5, output_stride=output_stride, multiscale_features=True)
    assert isinstance(model.head, LargeFOVMScHead)
    x = torch.randn(2, 3, *size)
    outputs = model.train().forward_train(x)
    assert set(outputs) == {"out"} and outputs["out"].shape == (2, 5, *size)
    outputs["out"].mean().backward()
    assert all(branch[0].weight.grad.abs().sum() > 0 for branch in model.head.multiscale.branches.values())
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 97, 43)).shape == (1, 5, 97, 43)


def test_parameter_count_matches_the_papers_description():
    # v1 paper Sec. 4.3: on the image and on pool1..pool4 (3, 64, 128, 256, 512 channels) a 3x3 conv with
    # 128 filters then a 1x1 conv with 128 filters (with biases); 5 x 128 = 640 more channels into fc8.
    num_classes = 21
    mlps = sum(c * 128 * 9 + 128 + 128 * 128 + 128 for c in (3, 64, 128, 256, 512))
    extra = mlps + 640 * num_classes
    plain = create_model("deeplabv1_vgg16", num_classes=num_classes)
    msc = create_model("deeplabv1_vgg16", num_classes=num_classes, multiscale_features=True)
    assert parameters(msc) - parameters(plain) == extra == 1_206_016
    assert parameters(msc.head.multiscale) == mlps and msc.head.classifier.in_channels == 1024 + 640


def test_the_mlps_meet_the_last_feature_map_without_resizing():
    model = create_model("deeplabv1_vgg16", num_classes=3, multiscale_features=True).eval()
    strides = {name: branch[0].stride[0] for name, branch in model.head.multiscale.branches.items()}
    assert strides == {"image": 8, "pool1": 4, "pool2": 2, "pool3": 1, "pool4": 1}
    features = model.backbone(torch.randn(1, 3, 81, 61))
    for name, branch in model.head.multiscale.branches.items():
        assert branch(features[name]).shape[-2:] == features["out"].shape[-2:], name


def test_spec_and_weights_round_trip():
    torch.manual_seed(0)
    model = create_model("deeplabv1_vgg16", num_classes=3, multiscale_features=True).eval()
    spec = ModelSpec.from_dict(model.spec.to_dict())
    assert spec.options["multiscale_features"] is True
    rebuilt = build_from_spec(spec.at_output_stride(16)).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert create_model("deeplabv1_vgg16", num_classes=3).spec.options["multiscale_features"] is False
    with pytest.raises(ValueError, match="weights do not fit this model"):
        create_model("deeplabv1_vgg16", num_classes=3, weights=model.state_dict(), multiscale_features=False)
