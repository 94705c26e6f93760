"""Fine-tuning any model to other classes, another task or other input channels: what loads, what starts afresh."""

import pytest
import torch

from deeplab import create_model
from deeplab.config import load_config
from deeplab.engine.checkpoint import model_from_config, save_checkpoint
from deeplab.import_tf import import_tf_checkpoint
from deeplab.models import build_from_spec
from deeplab.models.channels import adapt_input_weight, input_convolutions
from deeplab.models.tf_import import tf_spec, tf_variables
from deeplab.models.zoo import classifier_keys
from tests.fixtures import with_random_statistics
from tests.tfbundle import write_bundle


def _same_except(source: dict, target: dict, changed: set[str]) -> None:
    """Every tensor of ``target`` equals ``source``'s except ``changed``, which differ."""
    for key, value in target.items():
        if key in changed:
            assert key in source and not (value.shape == source[key].shape and torch.equal(value, source[key])), key
        else:
            assert torch.equal(value, source[key]), key


@pytest.fixture(scope="module")
def tf_imported(tmp_path_factory):
    """A 21-class MobileNetV2 DeepLab v3 written as a TF checkpoint, imported with `deeplab import-tf`'s function."""
    folder = tmp_path_factory.mktemp("tf")
    model = with_random_statistics(build_from_spec(tf_spec("deeplabv3_mobilenetv2", num_classes=21, atrous_rates=())))
    prefix = write_bundle(folder / "model.ckpt", tf_variables(model))
    return model, import_tf_checkpoint(prefix, folder / "imported.pt")


def test_tf_imported_checkpoint_fine_tunes_to_3_classes_with_its_numerics(tf_imported, caplog):
    source, path = tf_imported
    cfg = load_config(None, ["model.name=deeplabv3_mobilenetv2", f"model.weights={path}"])
    with caplog.at_level("INFO", logger="deeplab.models.zoo"):
        model = model_from_config(cfg, 3)  # what `deeplab train` builds at step 0
    assert model.spec.num_classes == 3 and model.head[-1].out_channels == 3
    for key in ("align_corners", "tf_padding", "bn_eps"):  # the TF numerics travel with the weights
        assert model.spec.options[key] == source.spec.options[key]
    assert model.spec.options["align_corners"] is True and model.spec.mean == source.spec.mean
    changed = set(classifier_keys(model.spec))
    assert changed == {"head.1.weight", "head.1.bias"}
    _same_except(source.state_dict(), model.state_dict(), changed)
    assert model.init_notes == [
        f"initial weights: {len(model.state_dict()) - 2} of {len(model.state_dict())} tensors loaded as they were; "
        "re-initialised the classifier (21 multiclass -> 3 multiclass): head.1.bias, head.1.weight"]
    assert model.init_notes[0] in caplog.text


def test_torchvision_coco_voc_layout_fine_tunes_to_3_classes(tmp_path):
    from torchvision.models.segmentation import deeplabv3_resnet50

    torch.manual_seed(0)
    reference = with_random_statistics(deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True))
    torch.save(reference.state_dict(), tmp_path / "coco_voc.pth")  # the published file's layout, random values
    model = create_model("deeplabv3_resnet50", weights=str(tmp_path / "coco_voc.pth"), num_classes=3, aux_loss=True)
    assert model.spec.output_stride == 8 and model.spec.options["head_conv"] is True  # torchvision's layout
    ours = model.state_dict()
    theirs = {k: v for k, v in reference.state_dict().items()}
    for key, value in ours.items():
        if key.startswith("backbone."):
            assert torch.equal(value, theirs[key]), key
    assert torch.equal(ours["head.1.0.weight"], theirs["classifier.1.weight"])
    assert ours["head.2.weight"].shape == (3, 256, 1, 1) and ours["aux_head.4.weight"].shape == (3, 256, 1, 1)
    assert "aux_head.4.weight, head.2.bias, head.2.weight" in model.init_notes[0]


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """One of our training checkpoints: a 21-class v3+ MobileNetV2 with an aux-free head."""
    path = tmp_path_factory.mktemp("run") / "best.pt"
    torch.manual_seed(0)
    model = with_random_statistics(create_model("deeplabv3plus_mobilenetv2", num_classes=21))
    cfg = load_config(None, ["model.name=deeplabv3plus_mobilenetv2"])
    save_checkpoint(path, model=model, optimizer=None, step=10, best_miou=0.5, config=cfg,
                    classes=[f"c{i}" for i in range(21)], palette=[(i, i, i) for i in range(21)])
    return model, path


def test_own_checkpoint_fine_tunes_to_3_classes_and_4_channels(own_run):
    source, path = own_run
    cfg = load_config(None, ["model.name=deeplabv3plus_mobilenetv2", f"model.weights={path}", "model.in_channels=4"])
    model = model_from_config(cfg, 3)
    assert (model.spec.num_classes, model.spec.in_channels, model.spec.task) == (3, 4, "multiclass")
    assert model.spec.mean == (0.485, 0.456, 0.406, 0.485)  # the weights' normalisation, spread over 4 channels
    first = "backbone.features.0.0.weight"
    assert input_convolutions(model, 4) == ["backbone.features.0.0"]
    _same_except(source.state_dict(), model.state_dict(), {"head.classifier.weight", "head.classifier.bias", first})
    assert torch.equal(model.state_dict()[first], adapt_input_weight(source.state_dict()[first], 4))
    note = model.init_notes[0]
    assert "re-initialised the classifier (21 multiclass -> 3 multiclass): head.classifier.bias, " \
           "head.classifier.weight" in note
    assert f"adapted to 4 input channels (RGB weights repeated over 4 channels and scaled by 3/4): {first}" in note
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 4, 65, 65)).shape == (1, 3, 65, 65)


def test_task_change_alone_reinitialises_the_classifier_and_nothing_else(own_run):
    source, path = own_run
    same = create_model("deeplabv3plus_mobilenetv2", weights=str(path))
    _same_except(source.state_dict(), same.state_dict(), set())
    assert same.init_notes == [f"initial weights: {len(same.state_dict())} of {len(same.state_dict())} tensors "
                               "loaded as they were"]
    multilabel = create_model("deeplabv3plus_mobilenetv2", weights=str(path), task="multilabel")
    assert multilabel.spec.num_classes == 21
    _same_except(source.state_dict(), multilabel.state_dict(), {"head.classifier.weight", "head.classifier.bias"})
    binary = create_model("deeplabv3plus_mobilenetv2", weights=str(path), task="binary")
    assert binary.spec.num_classes == 1 and binary.head.classifier.out_channels == 1


def test_any_other_mismatch_stays_an_error(own_run):
    _, path = own_run
    with pytest.raises(ValueError, match="(?s)weights do not fit this model.*missing keys: head.aspp"):
        create_model("deeplabv3plus_mobilenetv2", weights=str(path), num_classes=3, atrous_rates=(6, 12, 18),
                     separable=True)


def test_adapt_rule():
    weight = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).view(2, 3, 1, 1)
    assert torch.equal(adapt_input_weight(weight, 1), weight.sum(1, keepdim=True))
    five = adapt_input_weight(weight, 5)
    assert torch.equal(five, torch.cat([weight, weight[:, :2]], 1) * 0.6)
    grey = torch.rand(1, 1, 9, 9)  # one grey channel: the same response as the RGB model to that grey in R, G and B
    conv = torch.nn.functional.conv2d
    rgb_weight = torch.randn(4, 3, 3, 3)
    assert torch.allclose(conv(grey.expand(1, 3, 9, 9), rgb_weight), conv(grey, adapt_input_weight(rgb_weight, 1)),
                          atol=1e-6)


@pytest.mark.parametrize(("name", "options", "first"), [
    ("deeplabv1_vgg16", {"multiscale_features": True}, ["backbone.features.0", "head.multiscale.branches.image.0"]),
    ("deeplabv3plus_resnet50_beta", {}, ["backbone.stem.0.0"]),
    ("deeplabv3plus_xception41", {}, ["backbone.body.stem_0.conv"]),
    ("deeplabv3_resnet50", {"aux_loss": True}, ["backbone.conv1"]),
])
def test_every_backbone_takes_n_channels_and_every_task(name, options, first):
    model = create_model(name, num_classes=2, in_channels=5, task="multilabel", **options).eval()
    assert input_convolutions(model, 5) == first
    assert all(model.get_submodule(conv).in_channels == 5 for conv in first)
    with torch.no_grad():
        assert model(torch.randn(1, 5, 33, 33)).shape == (1, 2, 33, 33)
    with pytest.raises(ValueError, match=r"expected an N x 5 x H x W image batch, got shape \(1, 3, 33, 33\)"):
        model(torch.randn(1, 3, 33, 33))


def test_pretrained_backbone_adapts_to_one_channel(tmp_path):
    rgb = create_model("deeplabv3plus_mobilenetv2", num_classes=2)
    torch.save(rgb.backbone.state_dict(), tmp_path / "imagenet.pth")
    grey = create_model("deeplabv3plus_mobilenetv2", num_classes=2, in_channels=1,
                        pretrained_backbone=str(tmp_path / "imagenet.pth"))
    weight = rgb.backbone.features[0][0].weight
    assert torch.equal(grey.backbone.features[0][0].weight, weight.sum(1, keepdim=True))
    assert grey.spec.mean == (pytest.approx(0.449),) and grey.spec.std == (pytest.approx(0.226),)
    assert grey.init_notes == ["input: backbone.features.0.0 adapted from the pretrained backbone's 3 channels to 1 "
                               "(summed over the 3 RGB channels)"]
    image = torch.rand(1, 1, 33, 33)
    with torch.no_grad():  # a grey image: the same features as the RGB backbone's for it in every channel
        ours, theirs = grey.eval().backbone(image)["out"], rgb.eval().backbone(image.expand(1, 3, 33, 33))["out"]
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_spec_fields_are_checked():
    with pytest.raises(ValueError, match="task must be one of multiclass, binary, multilabel, got 'segment'"):
        create_model("deeplabv3plus_mobilenetv2", task="segment")
    with pytest.raises(ValueError, match="mean and std must be 4 numbers"):
        create_model("deeplabv3plus_mobilenetv2", in_channels=4, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="a binary model has one output"):
        create_model("deeplabv3plus_mobilenetv2", task="binary", num_classes=2)
