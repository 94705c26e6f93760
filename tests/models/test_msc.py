"""v2 multi-scale input fusion (MSC): shapes, max fusion, a loss on every scale, plain weights either way."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deeplab import create_model
from deeplab.config import load_config
from deeplab.engine.checkpoint import model_from_config, save_checkpoint
from deeplab.losses import segmentation_loss
from deeplab.modelfile import load_checkpoint
from deeplab.models.msc import MSCSegmenter
from deeplab.models.segmenter import Segmenter

SCALES = (1.0, 0.75, 0.5)
KEYS = {"out", "scale_1.0", "scale_0.75", "scale_0.5"}


def test_shapes_at_odd_sizes_in_eval_and_training():
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=4, msc_scales=list(SCALES))
    assert isinstance(model, MSCSegmenter) and model.spec.options["msc_scales"] == SCALES
    x = torch.randn(2, 3, 57, 71)
    outputs = model.train().forward_train(x)
    assert set(outputs) == KEYS
    assert all(value.shape == (2, 4, 57, 71) for value in outputs.values())
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 97, 43)).shape == (1, 4, 97, 43)


def test_aux_head_runs_on_the_largest_scale():
    model = create_model("deeplabv3_resnet50", num_classes=3, aux_loss=True, msc_scales=[0.5, 1.0])
    outputs = model.train().forward_train(torch.randn(2, 3, 49, 49))
    assert set(outputs) == {"out", "scale_1.0", "scale_0.5", "aux"} and outputs["aux"].shape == (2, 3, 49, 49)


def test_fusion_is_the_pixelwise_max_at_the_largest_scales_resolution():
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=3, msc_scales=list(SCALES)).eval()
    plain = create_model("deeplabv3plus_mobilenetv2", num_classes=3, weights=model.state_dict()).eval()
    x = torch.randn(1, 3, 81, 67)
    with torch.no_grad():
        scores = {}
        for scale in SCALES:  # the definition, written out with the plain model's parts
            size = (round(81 * scale), round(67 * scale))
            scaled = x if scale == 1.0 else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            scores[scale] = plain.head(plain.backbone(scaled))
        reference = scores[1.0].shape[-2:]
        resized = [F.interpolate(s, size=reference, mode="bilinear", align_corners=False) for s in scores.values()]
        expected = F.interpolate(torch.maximum(torch.maximum(resized[0], resized[1]), resized[2]), size=(81, 67),
                                 mode="bilinear", align_corners=False)
        assert torch.allclose(model(x), expected, atol=1e-6)
        assert not torch.equal(resized[0], resized[2])  # the scales disagree, so the max has work to do


class _Constant(nn.Module):
    """A 'backbone' whose score map depends on the input size only: a different winner per scale."""

    def forward(self, x):
        height, width = x.shape[-2:]
        rows = torch.linspace(0, 1, height).view(1, 1, height, 1).expand(x.shape[0], 1, height, width)
        return {"out": torch.cat([rows * height / 10, (1 - rows) * 5], dim=1)}


class _Identity(nn.Module):
    def forward(self, features):
        return features["out"]


def test_max_fusion_on_a_hand_built_case():
    model = MSCSegmenter(_Constant(), _Identity(), num_classes=2, output_stride=1, scales=(1.0, 0.5))
    x = torch.zeros(1, 3, 8, 4)
    rows = torch.linspace(0, 1, 8).view(8, 1)
    small_rows = F.interpolate(torch.linspace(0, 1, 4).view(1, 1, 4, 1), size=(8, 1), mode="bilinear",
                               align_corners=False).view(8, 1)
    class0 = torch.maximum(rows * 0.8, small_rows * 0.4).expand(8, 4)  # heights 8 and 4, over 10
    class1 = torch.maximum((1 - rows) * 5, (1 - small_rows) * 5).expand(8, 4)
    assert torch.allclose(model(x)[0], torch.stack([class0, class1]), atol=1e-6)
    train = model.forward_train(x)
    assert torch.allclose(train["scale_1.0"][0, 0], (rows * 0.8).expand(8, 4))


def test_the_loss_covers_every_scale_and_the_fused_output():
    torch.manual_seed(0)
    model = create_model("deeplabv3_mobilenetv2", num_classes=3, msc_scales=list(SCALES)).train()
    x, target = torch.randn(2, 3, 49, 49), torch.randint(0, 3, (2, 49, 49))
    outputs = model.forward_train(x)
    loss = segmentation_loss(outputs, target, aux_weight=0.4)
    expected = sum(F.cross_entropy(outputs[key], target) for key in KEYS)
    assert torch.allclose(loss, expected, atol=1e-5)
    first_conv = model.backbone.features[0][0].weight
    for key in KEYS:  # every term carries gradient back to the shared weights
        (grad,) = torch.autograd.grad(segmentation_loss({key: outputs[key]}, target), first_conv, retain_graph=True)
        assert grad.abs().sum() > 0, key


def test_weights_load_strictly_into_the_plain_model_and_back():
    torch.manual_seed(0)
    plain = create_model("deeplabv1_vgg16", num_classes=3, output_stride=16).eval()
    msc = create_model("deeplabv1_vgg16", num_classes=3, output_stride=16, msc_scales=[1.0, 0.5],
                       weights=plain.state_dict()).eval()
    assert msc.state_dict().keys() == plain.state_dict().keys()
    back = create_model("deeplabv1_vgg16", num_classes=3, output_stride=16, weights=msc.state_dict()).eval()
    x = torch.randn(1, 3, 49, 49)
    with torch.no_grad():
        assert torch.equal(back(x), plain(x)) and not torch.allclose(msc(x), plain(x))
    single = create_model("deeplabv1_vgg16", num_classes=3, output_stride=16, msc_scales=[1.0],
                          weights=plain.state_dict()).eval()
    with torch.no_grad():
        assert torch.equal(single(x), plain(x))  # one scale: exactly the plain model


def test_checkpoints_rebuild_msc_and_it_can_be_turned_off(tmp_path):
    config = load_config(None, ["model.name=deeplabv3plus_mobilenetv2", "model.msc_scales=[1.0, 0.75, 0.5]"])
    model = model_from_config(config, num_classes=3)
    assert isinstance(model, MSCSegmenter) and model.scales == SCALES
    save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=None, step=1, best_miou=0.0, config=config,
                    classes=["a", "b", "c"], palette=[(0, 0, 0)] * 3)
    loaded, checkpoint = load_checkpoint(tmp_path / "ck.pt", output_stride=8)
    assert isinstance(loaded, MSCSegmenter) and loaded.scales == SCALES and loaded.output_stride == 8
    plain = create_model("deeplabv3plus_mobilenetv2", weights=tmp_path / "ck.pt", msc_scales=None)
    assert type(plain) is Segmenter and "msc_scales" not in plain.spec.options
    off = load_config(None, ["model.name=deeplabv3plus_mobilenetv2", "model.msc_scales=[]",
                             f"model.weights={tmp_path / 'ck.pt'}"])
    assert type(model_from_config(off, num_classes=3)) is Segmenter


@pytest.mark.parametrize(("scales", "message"), [
    ([1.0, -0.5], "msc_scales must be a list of positive numbers"),
    ("1,0.5", "msc_scales must be a list of positive numbers"),
    ([1.0, 1.0], "msc_scales must not repeat a scale"),
])
def test_bad_scales_are_clear_errors(scales, message):
    with pytest.raises(ValueError, match=message):
        create_model("deeplabv3plus_mobilenetv2", num_classes=2, msc_scales=scales)


def test_training_with_batch_size_one():
    torch.manual_seed(0)
    model = create_model("deeplabv3_mobilenetv2", num_classes=3, msc_scales=list(SCALES)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, target = torch.randn(1, 3, 65, 65), torch.randint(0, 3, (1, 65, 65))
    before = [p.detach().clone() for p in model.head.parameters()]
    for _ in range(2):
        loss = segmentation_loss(model.forward_train(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.head.parameters(), strict=True))


def test_the_final_resize_keeps_the_plain_models_align_corners():
    torch.manual_seed(0)
    plain = create_model("deeplabv3plus_mobilenetv2", num_classes=3, align_corners=True).eval()
    msc = MSCSegmenter.from_segmenter(plain, [1.0])
    x = torch.randn(1, 3, 57, 71)
    with torch.no_grad():
        assert msc.align_corners and torch.equal(msc(x), plain(x))
        outputs = []
        for model in (msc, plain):
            torch.manual_seed(1)  # the same dropout masks
            outputs.append(model.train().forward_train(x)["out"])
        assert torch.equal(*outputs)
