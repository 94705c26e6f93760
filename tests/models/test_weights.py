"""Weight loading: torchvision's DeepLabV3 state dicts, our checkpoints, ImageNet backbones (offline)."""

import pytest
import torch
import torchvision

from deeplab import create_model
from deeplab.models import zoo
from deeplab.models.backbones import MobileNetV2Backbone


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    """Random BN statistics so an equivalence check cannot pass by accident."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            for tensor, low, high in [(module.running_mean, -0.5, 0.5), (module.running_var, 0.5, 1.5),
                                      (module.weight.data, 0.5, 1.5), (module.bias.data, -0.2, 0.2)]:
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)


def _torchvision_model(name: str, num_classes: int, aux: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    builder = getattr(torchvision.models.segmentation, name)
    theirs = builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux).eval()
    _randomise_batchnorm(theirs)
    return theirs


@pytest.mark.parametrize("name", ["deeplabv3_resnet50", "deeplabv3_resnet101"])
def test_torchvision_state_dict_alone_reproduces_torchvision_logits(name):
    """The issue's call: no output_stride, the weights imply OS 8, rates 12/24/36 and torchvision's head."""
    theirs = _torchvision_model(name, 7, aux=False)
    ours = create_model(name, num_classes=7, weights=theirs.state_dict()).eval()
    assert ours.spec.output_stride == 8 and ours.spec.options["atrous_rates"] == (12, 24, 36)
    x = torch.randn(1, 3, 71, 65)
    with torch.no_grad():
        assert (ours(x) - theirs(x)["out"]).abs().max() < 1e-4


def test_explicit_output_stride_wins_over_torchvision_weights():
    theirs = _torchvision_model("deeplabv3_resnet50", 4, aux=False)
    ours = create_model("deeplabv3_resnet50", num_classes=4, output_stride=16, weights=theirs.state_dict())
    assert ours.spec.output_stride == 16 and ours.spec.options["atrous_rates"] == (6, 12, 18)
    assert ours.spec.options["head_conv"] is True and ours.spec.options["multi_grid"] is None


@pytest.mark.parametrize(("name", "aux"), [("deeplabv3_resnet50", True), ("deeplabv3_resnet101", False)])
def test_torchvision_deeplabv3_weights_give_the_same_logits(name, aux):
    theirs = _torchvision_model(name, 7, aux)
    ours = create_model(name, num_classes=7, output_stride=8, aux_loss=aux, weights=theirs.state_dict()).eval()
    x = torch.randn(1, 3, 71, 65)
    with torch.no_grad():
        expected = theirs(x)
        outputs = ours.forward_train(x)
    assert (outputs["out"] - expected["out"]).abs().max() < 1e-4
    if aux:
        assert (outputs["aux"] - expected["aux"]).abs().max() < 1e-4
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_torchvision_aux_weights_are_dropped_without_aux_head():
    theirs = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                                                 num_classes=3, aux_loss=True)
    ours = create_model("deeplabv3_resnet50", num_classes=3, weights=theirs.state_dict())
    assert ours.aux_head is None and ours.head[1][0].kernel_size == (3, 3)  # torchvision's extra conv


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_files_load(tmp_path, suffix):
    source = create_model("deeplabv3plus_mobilenetv2", num_classes=4)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save({"model": source.state_dict(), "step": 3}, path)  # our training checkpoint layout
    else:
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    loaded = create_model("deeplabv3plus_mobilenetv2", num_classes=4, weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def test_missing_weights_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        create_model("deeplabv3plus_mobilenetv2", weights=tmp_path / "nothing.pt")


def test_truncated_weights_file_is_a_clear_error(tmp_path):
    torch.save(create_model("deeplabv3plus_mobilenetv2", num_classes=2).state_dict(), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"w.pt is not a readable weights file"):
        create_model("deeplabv3plus_mobilenetv2", num_classes=2, weights=tmp_path / "w.pt")


def _imagenet_mobilenetv2(path):
    """What torchvision publishes: every backbone key plus the 1280 conv and classifier we drop."""
    state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    torch.save(state, path)
    return state


def test_pretrained_backbone_from_local_file(tmp_path):
    state = _imagenet_mobilenetv2(tmp_path / "mobilenet_v2.pth")
    model = create_model("deeplabv3plus_mobilenetv2", pretrained_backbone=str(tmp_path / "mobilenet_v2.pth"))
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_pretrained_backbone_through_torch_hub_with_file_url(tmp_path, monkeypatch):
    state = _imagenet_mobilenetv2(tmp_path / "mobilenet_v2-7ebf99e0.pth")
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setitem(zoo.IMAGENET_URLS, "mobilenetv2", (tmp_path / "mobilenet_v2-7ebf99e0.pth").as_uri())
    model = create_model("deeplabv3_mobilenetv2", pretrained_backbone=True)
    assert torch.equal(model.backbone.features[5].conv[1][0].weight, state["features.5.conv.1.0.weight"])
    assert (tmp_path / "hub" / "checkpoints" / "mobilenet_v2-7ebf99e0.pth").is_file()  # cached like torchvision


def test_pretrained_backbone_offline_fails_fast_and_says_what(monkeypatch, tmp_path):
    torch.hub.set_dir(str(tmp_path / "hub"))
    url = "http://127.0.0.1:9/mobilenet_v2-b0353104.pth"  # nothing listens on the discard port
    monkeypatch.setitem(zoo.IMAGENET_URLS, "mobilenetv2", url)
    with pytest.raises(RuntimeError, match=r"could not fetch the ImageNet mobilenetv2 weights from "
                                           r"http://127.0.0.1:9/.*pretrained_backbone='/path/to/file.pth'"):
        create_model("deeplabv3_mobilenetv2", pretrained_backbone=True)


def test_backbone_weights_lacking_keys_are_an_error(tmp_path):
    state = MobileNetV2Backbone().state_dict()
    del state["features.3.conv.0.0.weight"]
    torch.save(state, tmp_path / "partial.pth")
    total = len(state) + 1
    with pytest.raises(ValueError, match=rf"(?s)do not fit this backbone: {total - 1} of {total} tensors matched"
                                         r".*missing: features.3.conv.0.0.weight"):
        create_model("deeplabv3_mobilenetv2", pretrained_backbone=str(tmp_path / "partial.pth"))


# Every kind of backbone that loads ImageNet weights from a file: (model, the module the file loads into).
BACKBONE_KINDS = {
    "deeplabv3_resnet50": lambda model: model.backbone,
    "deeplabv1_vgg16": lambda model: model.backbone,
    "deeplabv3_mobilenetv2": lambda model: model.backbone,
    "deeplabv3plus_xception41": lambda model: model.backbone.body,
    "deeplabv3plus_tu-test_convnext": lambda model: model.backbone.body,
}


def _file_key(key: str) -> str:
    """The name a weights file gives a tensor of timm's feature wrapper, which flattens ``stem.0`` to ``stem_0``."""
    head, _, rest = key.partition(".")
    parent, _, child = head.rpartition("_")
    return f"{parent}.{child}.{rest}" if parent and child.isdigit() else key


@pytest.mark.parametrize("name", BACKBONE_KINDS)
def test_every_backbone_loader_refuses_a_file_that_does_not_fit_saying_how_many_tensors_matched(tmp_path, name):
    """A file with one fitting tensor, one of the wrong shape and one the backbone lacks: refused, never loaded
    in part (Xception's used to load 0 of its tensors and train from random weights)."""
    with torch.device("meta"):
        own = BACKBONE_KINDS[name](create_model(name)).state_dict()
    first, second = [k for k, v in own.items() if v.dim() == 4][:2]
    state = {_file_key(first): torch.zeros(own[first].shape), _file_key(second): torch.zeros(3, 1, 1, 1),
             "fc.weight": torch.zeros(2, 2)}
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=rf"(?s)weights from .*other.pth do not fit this backbone: 1 of {len(own)} "
                                         rf"tensors matched \(3 in the file\).*shape mismatches.*{second}"):
        create_model(name, pretrained_backbone=str(tmp_path / "other.pth"))


def test_the_tf_references_resnet_beta_takes_no_imagenet_file(tmp_path):
    torch.save({}, tmp_path / "any.pth")
    with pytest.raises(ValueError, match="ResNet-v1-50-beta has no torchvision ImageNet weights"):
        create_model("deeplabv3_resnet50_beta", pretrained_backbone=str(tmp_path / "any.pth"))


def test_xception_pretrained_backbone_from_local_file(tmp_path):
    import timm

    reference = timm.create_model("xception65", pretrained=False)
    torch.save(reference.state_dict(), tmp_path / "xception65.pth")
    model = create_model("deeplabv3plus_xception65", pretrained_backbone=str(tmp_path / "xception65.pth"))
    assert torch.equal(model.backbone.body.state_dict()["stem_0.conv.weight"], reference.stem[0].conv.weight)
    assert torch.equal(model.backbone.body.state_dict()["blocks_20.stack.conv3.conv_pw.weight"],
                       reference.blocks[20].stack.conv3.conv_pw.weight)


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_model_keeps_all_its_state_in_its_state_dict(name):
    """So build_with_weights never has to fall back to a randomly initialised build (structure only, on meta)."""
    with torch.device("meta"):
        model = zoo.build_from_spec(zoo.resolve_spec(name, {"num_classes": 3}))
    saved = set(model.state_dict())
    assert {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()} <= saved


def test_build_with_weights_skips_the_random_initialisation_and_equals_the_source(monkeypatch):
    torch.manual_seed(0)
    source = create_model("deeplabv3plus_mobilenetv2", num_classes=3)
    _randomise_batchnorm(source)
    initialised = []
    for name in ("kaiming_uniform_", "kaiming_normal_", "normal_", "uniform_", "zeros_", "ones_"):
        plain = getattr(torch.nn.init, name)
        monkeypatch.setattr(torch.nn.init, name, lambda tensor, *a, plain=plain, **k: initialised.append(
            tensor.device.type) or plain(tensor, *a, **k))
    model = zoo.build_with_weights(source.spec, source.state_dict())
    assert initialised and set(initialised) == {"meta"}  # the layers' initialisers ran on no memory
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()]) and model.spec == source.spec
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source.eval()(x))


def test_build_with_weights_builds_normally_where_a_buffer_is_not_saved(monkeypatch):
    """A non-persistent buffer would be left as empty memory: such a model is initialised the ordinary way."""
    plain = zoo.build_from_spec

    def with_unsaved_buffer(spec, **kwargs):
        model = plain(spec, **kwargs)
        model.register_buffer("scale", torch.full((1,), 2.0), persistent=False)
        return model

    monkeypatch.setattr(zoo, "build_from_spec", with_unsaved_buffer)
    source = create_model("deeplabv3plus_mobilenetv2", num_classes=3)
    model = zoo.build_with_weights(source.spec, source.state_dict())
    assert model.scale.item() == 2.0 and torch.equal(model.state_dict()["head.classifier.weight"],
                                                     source.state_dict()["head.classifier.weight"])
