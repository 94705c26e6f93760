"""Every registered model: shapes, gradients, batch-1 training, output-stride interchange, errors."""

import pytest
import torch

from deeplab import create_model, load_checkpoint
from deeplab.config import Config
from deeplab.engine.checkpoint import save_checkpoint
from deeplab.models import list_models, model_entry
from deeplab.models.aspp import ImagePooling
from deeplab.models.layers import ConvBNReLU, SeparableConv2d
from deeplab.models.segmenter import upsample_to
from deeplab.models.weights import load_weights

ALL = list_models()


def test_registry_lists_every_published_variant():
    assert ALL == sorted([
        "deeplabv1_vgg16", "deeplabv2_vgg16", "deeplabv2_resnet101",
        "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenetv2",
        "deeplabv3plus_resnet50", "deeplabv3plus_resnet101", "deeplabv3plus_xception65",
        "deeplabv3plus_xception71", "deeplabv3plus_mobilenetv2", "deeplabv3plus_mobilenetv2_light",
        "deeplabv3plus_xception41",
        "deeplabv3_resnet50_beta", "deeplabv3_resnet101_beta", "deeplabv3plus_resnet50_beta",
        "deeplabv3plus_resnet101_beta",
    ])
    assert {model_entry(n).version for n in ALL} == {"v1", "v2", "v3", "v3+"}


# OS 8: a batch of two square images. OS 16: one odd-sized image, so the same pass also proves
# that training with batch size 1 works (the image-pooling branch) and that odd sizes come back whole.
CASES = {8: (2, 65, 65), 16: (1, 57, 71)}


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", ALL)
def test_training_step(name, output_stride):
    torch.manual_seed(0)
    batch, height, width = CASES[output_stride]
    model = create_model(name, num_classes=5, output_stride=output_stride).train()
    assert model.output_stride == output_stride and model.num_classes == 5
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.head.parameters()]
    x = torch.randn(batch, 3, height, width, requires_grad=True)
    logits = model(x)
    assert logits.shape == (batch, 5, height, width)
    loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, 5, (batch, height, width)))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and torch.isfinite(logits).all()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, model.head.parameters(), strict=False))


@pytest.mark.parametrize("name", ALL)
def test_odd_input_size_in_eval(name):
    model = create_model(name, num_classes=3).eval()
    x = torch.randn(1, 3, 97, 43)
    with torch.no_grad():
        logits, coarse = model(x), model.coarse_logits(x)
    assert logits.shape == (1, 3, 97, 43)
    # the logits before their final resize (what the TF reference's multi-scale evaluation resizes) at logits_stride
    stride = model.logits_stride
    assert stride == (4 if name.startswith("deeplabv3plus") else model.output_stride)
    assert all(abs(side - n / stride) <= 1 for side, n in zip(coarse.shape[-2:], (97, 43), strict=True))
    torch.testing.assert_close(logits, upsample_to(coarse, (97, 43), model.align_corners))


@pytest.mark.parametrize("name", ["deeplabv3plus_mobilenetv2", "deeplabv3_resnet50", "deeplabv1_vgg16"])
def test_os16_weights_load_strictly_into_os8_model(name):
    trained = create_model(name, num_classes=6, output_stride=16).eval()
    evaluator = create_model(name, num_classes=6, output_stride=8, weights=trained.state_dict()).eval()
    for key, value in trained.state_dict().items():
        assert torch.equal(value, evaluator.state_dict()[key])
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        dense, coarse = evaluator(x), trained(x)
    assert dense.shape == coarse.shape and not torch.equal(dense, coarse)


def test_training_outputs_include_the_aux_head():
    model = create_model("deeplabv3_resnet50", num_classes=4, aux_loss=True).train()
    outputs = model.forward_train(torch.randn(2, 3, 65, 65))
    assert set(outputs) == {"out", "aux"} and outputs["out"].shape == outputs["aux"].shape == (2, 4, 65, 65)
    assert model(torch.randn(2, 3, 65, 65)).shape == (2, 4, 65, 65)
    assert set(create_model("deeplabv3_resnet50", num_classes=4).forward_train(torch.randn(2, 3, 33, 33))) == {"out"}


def test_atrous_rates_follow_output_stride():
    def rates(model):
        return [branch[0].dilation[0] for branch in model.head[0].convs[1:-1]]

    assert rates(create_model("deeplabv3_resnet50", output_stride=16)) == [6, 12, 18]
    assert rates(create_model("deeplabv3_resnet50", output_stride=8)) == [12, 24, 36]
    assert rates(create_model("deeplabv3_resnet50", atrous_rates=(1, 2, 3))) == [1, 2, 3]


def test_multi_grid_sets_block4_unit_rates():
    layer4 = create_model("deeplabv3_resnet50", output_stride=16).backbone.layer4
    assert [unit.conv2.dilation[0] for unit in layer4] == [2, 4, 8]
    layer4 = create_model("deeplabv3_resnet50", output_stride=8, multi_grid=None).backbone.layer4
    assert [unit.conv2.dilation[0] for unit in layer4] == [2, 4, 4]  # torchvision's layout


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="unknown model 'deeplabv4'.*deeplabv3plus_xception65"):
        create_model("deeplabv4")


@pytest.mark.parametrize("name", ["deeplabv3_resnet50", "deeplabv1_vgg16", "deeplabv3plus_mobilenetv2",
                                  "deeplabv3plus_xception65"])
@pytest.mark.parametrize("output_stride", [4, 12])
def test_bad_output_stride_lists_valid_ones(name, output_stride):
    with pytest.raises(ValueError, match=f"output_stride={output_stride}; valid choices: 8, 16, 32"):
        create_model(name, output_stride=output_stride)


@pytest.mark.parametrize("shape", [(3, 65, 65), (1, 1, 65, 65), (1, 4, 65, 65)])
def test_bad_input_shape_is_a_clear_error(shape):
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=2).eval()
    with pytest.raises(ValueError, match=r"expected an N x 3 x H x W image batch, got shape"):
        model(torch.randn(*shape))


def test_weights_with_other_num_classes_say_so():
    source = create_model("deeplabv3plus_mobilenetv2", num_classes=21).state_dict()
    expected = r"is num_classes right\?\): head.classifier.weight: \(21, 256, 1, 1\) vs \(5, 256, 1, 1\)"
    with pytest.raises(ValueError, match=expected):  # the strict loader (reloading a checkpoint) refuses
        load_weights(create_model("deeplabv3plus_mobilenetv2", num_classes=5), source)
    # create_model fine-tunes: the classifier starts afresh, and says so (tests/models/test_finetune.py)
    tuned = create_model("deeplabv3plus_mobilenetv2", num_classes=5, weights=source)
    assert "re-initialised the classifier (21 multiclass -> 5 multiclass)" in tuned.init_notes[0]


def test_light_mobilenetv2_is_the_reference_configuration_and_the_full_model_is_unchanged():
    light = create_model("deeplabv3plus_mobilenetv2_light", num_classes=4)
    entry = model_entry("deeplabv3plus_mobilenetv2_light")
    assert (entry.version, entry.backbone) == ("v3+", "MobileNetV2")
    assert light.spec.options["atrous_rates"] == () and light.spec.options["separable"] is True
    # ASPP: the 1x1 and image-pooling branches only (the reference's atrous_rates=None for mobilenet_v2)
    assert [type(b) for b in light.head.aspp.convs] == [ConvBNReLU, ImagePooling]
    assert light.head.aspp.project[0].in_channels == 2 * 256
    # decoder: two depthwise-separable 3x3 convs (depthwise 304 then 256 channels), 256 filters, 48 low-level
    assert [type(conv) for conv in light.head.fuse] == [SeparableConv2d, SeparableConv2d]
    assert [conv[0][0].groups for conv in light.head.fuse] == [256 + 48, 256]
    assert [conv[1][0].out_channels for conv in light.head.fuse] == [256, 256]
    full = create_model("deeplabv3plus_mobilenetv2", num_classes=4)
    assert full.spec.options["atrous_rates"] == (6, 12, 18) and full.spec.options["separable"] is False
    assert [conv[0].kernel_size for conv in full.head.fuse] == [(3, 3), (3, 3)]
    assert len(full.head.aspp.convs) == 5
    with_rates = create_model("deeplabv3plus_mobilenetv2_light", num_classes=4, atrous_rates=[6, 12, 18])
    assert [branch[0][0].dilation for branch in with_rates.head.aspp.convs[1:4]] == [(6, 6), (12, 12), (18, 18)]


def test_light_mobilenetv2_spec_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_mobilenetv2_light", num_classes=3).eval()
    save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=None, step=1, best_miou=0.0, config=Config(),
                    classes=["a", "b", "c"], palette=[(0, 0, 0), (255, 0, 0), (0, 255, 0)])
    loaded, _ = load_checkpoint(tmp_path / "ck.pt")
    assert loaded.spec == model.spec and loaded.spec.name == "deeplabv3plus_mobilenetv2_light"
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    dense, _ = load_checkpoint(tmp_path / "ck.pt", output_stride=8)
    assert dense.spec == model.spec.at_output_stride(8) and dense.spec.options["atrous_rates"] == ()
