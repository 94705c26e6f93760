"""ModelSpec: resolved once, complete, round-trips, rebuilds the same network; clear errors for bad keys."""

import pytest
import torch

from deeplab import create_model
from deeplab.constants import IMAGENET_MEAN, IMAGENET_STD
from deeplab.models import ModelSpec, build_from_spec, list_models, model_entry


@pytest.mark.parametrize("name", list_models())
def test_spec_records_every_architecture_argument_and_rebuilds_the_same_network(name):
    model = create_model(name, num_classes=3)
    spec = model.spec
    assert set(spec.options) | {"num_classes", "output_stride", "mean", "std"} == set(model_entry(name).options())
    assert all(value is not None for key, value in spec.options.items() if key != "multi_grid")
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec
    rebuilt = build_from_spec(again)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes


def test_rates_follow_the_output_stride_and_weights_still_fit():
    spec = create_model("deeplabv3plus_mobilenetv2", num_classes=2).spec
    assert spec.output_stride == 16 and spec.options["atrous_rates"] == (6, 12, 18)
    dense = spec.at_output_stride(8)
    assert dense.options["atrous_rates"] == (12, 24, 36) and dense.at_output_stride(16) == spec
    v1 = create_model("deeplabv1_vgg16", num_classes=2, output_stride=16).spec
    assert v1.options["atrous_rate"] == 6 and v1.at_output_stride(8).options["atrous_rate"] == 12
    custom = create_model("deeplabv3_resnet50", num_classes=2, atrous_rates=[3, 6, 9]).spec
    assert custom.at_output_stride(8).options["atrous_rates"] == (6, 12, 18)


@pytest.mark.parametrize(("name", "key"), [
    ("deeplabv1_vgg16", "atrous_rates"), ("deeplabv3plus_mobilenetv2", "aux_loss"),
    ("deeplabv2_resnet101", "dropout"), ("deeplabv3plus_xception65", "head_conv"),
])
def test_an_option_the_model_does_not_take_is_named_with_what_it_accepts(name, key):
    with pytest.raises(ValueError, match=rf"{name} does not take '{key}'; it accepts: num_classes, output_stride"):
        create_model(name, **{key: 1})


@pytest.mark.parametrize(("options", "message"), [
    ({"num_classes": 0}, "num_classes must be a positive int"),
    ({"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
    ({"atrous_rates": [6, "x"]}, "atrous_rates must be a list of positive ints"),
    ({"mean": [0.5, 0.5]}, "mean and std must be three numbers"),
    ({"output_stride": 4}, "cannot give output_stride=4; valid choices: 8, 16, 32"),
])
def test_bad_option_values_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        create_model("deeplabv3plus_mobilenetv2", **options)


def test_normalisation_belongs_to_the_backbone_weights():
    import timm
    import torchvision

    xception = create_model("deeplabv3plus_xception65", num_classes=2).spec
    timm_cfg = timm.models.get_pretrained_cfg("xception65")
    assert xception.mean == tuple(timm_cfg.mean) and xception.std == tuple(timm_cfg.std) == (0.5, 0.5, 0.5)
    resnet = create_model("deeplabv3plus_resnet50", num_classes=2).spec
    tv_transforms = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.transforms()
    assert resnet.mean == tuple(tv_transforms.mean) == IMAGENET_MEAN and resnet.std == IMAGENET_STD
    custom = create_model("deeplabv3plus_resnet50", num_classes=2, mean=[0.1, 0.2, 0.3], std=[1, 1, 1]).spec
    assert custom.mean == (0.1, 0.2, 0.3) and custom.std == (1.0, 1.0, 1.0)


def test_every_published_option_can_be_set_and_shapes_the_network():
    model = create_model("deeplabv3_resnet50", num_classes=2, multi_grid=[1, 1, 1], head_conv=True, dropout=0.0,
                         aux_loss=True)
    assert [unit.conv2.dilation[0] for unit in model.backbone.layer4] == [2, 2, 2]
    assert model.head[1][0].kernel_size == (3, 3) and model.aux_head is not None
    assert model.head[0].project[3].p == 0.0
    separable = create_model("deeplabv3plus_mobilenetv2", num_classes=2, separable=True)
    assert separable.head.aspp.convs[1][0][0].groups == 320  # depthwise 3x3 in the first atrous branch


def test_a_checkpoint_as_initial_weights_brings_its_architecture(tmp_path):
    torch.manual_seed(0)
    source = create_model("deeplabv3_resnet50", num_classes=3, multi_grid=[1, 2, 1], head_conv=True)
    torch.save({"model_spec": source.spec.to_dict(), "model": source.state_dict()}, tmp_path / "ck.pt")
    loaded = create_model("deeplabv3_resnet50", weights=tmp_path / "ck.pt").eval()
    assert loaded.spec == source.spec
    dense = create_model("deeplabv3_resnet50", weights=tmp_path / "ck.pt", output_stride=8)
    assert dense.spec == source.spec.at_output_stride(8)
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(loaded(x), source.eval()(x))


def test_spec_from_a_newer_or_damaged_file_is_a_clear_error():
    data = create_model("deeplabv3plus_mobilenetv2", num_classes=2).spec.to_dict()
    with pytest.raises(ValueError, match="spec version 99 is not supported"):
        ModelSpec.from_dict({**data, "spec_version": 99})
    with pytest.raises(ValueError, match="model spec lacks options"):
        ModelSpec.from_dict({k: v for k, v in data.items() if k != "options"})


def test_spec_carries_task_and_input_channels_and_reads_version_1():
    spec = ModelSpec("deeplabv3plus_resnet50", 1, 16, {}, (0.5,) * 4, (0.25,) * 4, task="binary", in_channels=4)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert spec.at_output_stride(8).task == "binary" and spec.at_output_stride(8).in_channels == 4
    old = {k: v for k, v in ModelSpec("deeplabv3_resnet50", 21, 16).to_dict().items()
           if k not in ("task", "in_channels")}
    old = ModelSpec.from_dict({**old, "spec_version": 1})
    assert (old.task, old.in_channels) == ("multiclass", 3)
    with pytest.raises(ValueError, match="task 'segment' is not one of multiclass, binary, multilabel"):
        ModelSpec("deeplabv3_resnet50", 21, 16, task="segment")
    with pytest.raises(ValueError, match="one value per input channel \\(4\\); got 3 and 3"):
        ModelSpec("deeplabv3_resnet50", 21, 16, in_channels=4)
    with pytest.raises(ValueError, match="binary model has one output"):
        ModelSpec("deeplabv3_resnet50", 2, 16, task="binary")
