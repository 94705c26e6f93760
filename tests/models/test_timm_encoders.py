"""timm encoders under the v3 / v3+ heads (``HEAD_tu-ENCODER``): strides, decoder input, weights, files.

Tiny timm variants (timm's ``test_*`` models and the smallest real ones), 65-px inputs, nothing downloaded:
the ImageNet-weights test plants its file in a Hugging Face Hub cache of its own.
"""

import math

import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub.file_download import repo_folder_name

from deeplab import create_model
from deeplab.config import Config
from deeplab.engine.checkpoint import save_checkpoint
from deeplab.modelfile import load_checkpoint
from deeplab.models import build_model
from tests.fixtures import with_random_statistics
from tests.hubcache import offline_cache, plant

SIZE = 65
# One per family: (timm model, what it is). test_convnext's first feature is at stride 4 (no stride-2 one).
FAMILIES = {
    "test_resnet": "ResNet",
    "test_convnext": "ConvNeXt, stride 4 first",
    "test_efficientnet": "EfficientNet",
    "regnetx_002": "RegNet",
    "mobilenetv3_small_050": "MobileNetV3",
    "mobilenetv4_conv_small": "MobileNetV4",
    "test_nfnet": "NFNet",
    "test_byobnet": "ByobNet",
}


def _stride(height: int) -> int:
    """The stride that turns the 65-px input into a map ``height`` high (padded convs round the side up, a
    ConvNeXt patchify stem rounds it down)."""
    strides = [s for s in (1, 2, 4, 8, 16, 32) if SIZE // s <= height <= math.ceil(SIZE / s)]
    assert len(strides) == 1, (height, strides)
    return strides[0]


def _run_and_capture(model):
    """The logits and the features the head received."""
    seen = {}
    handle = model.head.register_forward_pre_hook(lambda _m, args: seen.update(args[0]))
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)))
    handle.remove()
    return logits, seen


@pytest.mark.parametrize("encoder", FAMILIES)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_every_family_builds_at_output_stride_8_and_16_with_the_decoder_on_stride_4(encoder, output_stride):
    model = build_model(f"deeplabv3plus_tu-{encoder}", num_classes=5, output_stride=output_stride)
    logits, features = _run_and_capture(model)
    assert logits.shape == (1, 5, SIZE, SIZE)
    assert _stride(features["out"].shape[-1]) == output_stride == model.backbone.feature_specs["out"].stride
    assert _stride(features["low_level"].shape[-1]) == 4
    info = timm.create_model(encoder, features_only=True).feature_info
    low_channels = info.channels()[info.reduction().index(4)]
    assert features["low_level"].shape[1] == low_channels == model.head.low_level[0].in_channels
    assert features["out"].shape[1] == info.channels()[-1]
    assert model.spec.options["encoder"] == encoder and model.spec.options["timm_version"] == timm.__version__


def test_v3_head_and_aux_head_on_a_timm_encoder():
    model = build_model("deeplabv3_tu-test_efficientnet", num_classes=4, output_stride=8, aux_loss=True)
    logits, features = _run_and_capture(model)
    assert logits.shape == (1, 4, SIZE, SIZE) and _stride(features["out"].shape[-1]) == 8
    model.train()
    outputs = model.forward_train(torch.randn(2, 3, SIZE, SIZE))
    assert outputs["aux"].shape == outputs["out"].shape == (2, 4, SIZE, SIZE)


def test_channels_last_features_at_stride_4_first_are_turned_to_channels_first():
    """MambaOut's timm features come N x H x W x C and start at stride 4; it cannot dilate, so OS 32 only."""
    with pytest.raises(ValueError, match="test_mambaout cannot be dilated.*only output_stride=32"):
        build_model("deeplabv3plus_tu-test_mambaout", num_classes=3, output_stride=16)
    model = build_model("deeplabv3plus_tu-test_mambaout", num_classes=3, output_stride=32)
    assert model.backbone.channels_last
    logits, features = _run_and_capture(model)
    assert logits.shape == (1, 3, SIZE, SIZE)
    assert features["low_level"].shape[1] == model.backbone.feature_specs["low_level"].channels
    assert _stride(features["low_level"].shape[-1]) == 4 and _stride(features["out"].shape[-1]) == 32


def test_multi_grid_sets_the_last_stage_rates():
    model = build_model("deeplabv3plus_tu-resnet18", num_classes=3, output_stride=16, multi_grid=(1, 2))
    rates = [{m.dilation[0] for m in unit.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1}
             for unit in model.backbone.body.layer4]
    # OS 16: the last stage's rate is 2; its two units take 2 x (1, 2), the first one included, as in the v3 paper.
    assert rates == [{2}, {4}]
    assert _run_and_capture(model)[0].shape == (1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="multi_grid needs the last stage"):
        build_model("deeplabv3plus_tu-test_resnet", num_classes=3, output_stride=32, multi_grid=(1, 2, 4))


def test_models_encoders_lists_the_fitting_timm_models_with_output_stride_support(capsys):
    from deeplab.cli import main

    assert main(["models", "--encoders", "test_[cm]*"]) == 0
    table = capsys.readouterr().out
    assert "| test_convnext | convnext | yes |" in table and "| test_mambaout | mambaout | no (32 only) |" in table
    assert main(["models", "--encoders", "no_such_net*"]) == 2
    assert "no timm model matches 'no_such_net*'" in capsys.readouterr().err


def test_unknown_names_say_what_fits():
    with pytest.raises(ValueError, match="timm .* has no model 'no_such_net'.*--encoders"):
        build_model("deeplabv3plus_tu-no_such_net")
    with pytest.raises(ValueError, match="goes under one of deeplabv3, deeplabv3plus"):
        build_model("deeplabv2_tu-test_resnet")
    with pytest.raises(ValueError, match="built on timm's test_resnet, not 'resnet50'"):
        build_model("deeplabv3plus_tu-test_resnet", encoder="resnet50")


def test_in_channels_reach_timm():
    model = build_model("deeplabv3plus_tu-test_convnext", num_classes=2, in_channels=4, mean=[0.5] * 4,
                        std=[0.25] * 4)
    assert model.spec.in_channels == 4 and model.in_channels == 4
    model.eval()
    assert model(torch.randn(1, 4, SIZE, SIZE)).shape == (1, 2, SIZE, SIZE)


def test_checkpoint_round_trip_output_stride_at_load_and_onnx_export(tmp_path):
    pytest.importorskip("onnxruntime", reason="the deploy extra (onnx, onnxruntime) is not installed")
    from deeplab.deploy.export import export_model
    from deeplab.inference import Predictor

    torch.manual_seed(0)
    model = with_random_statistics(create_model("deeplabv3plus_tu-test_convnext", num_classes=3)).eval()
    path = tmp_path / "ck.pt"
    save_checkpoint(path, model=model, optimizer=None, step=1, best_miou=0.0, config=Config(),
                    classes=["a", "b", "c"], palette=[(0, 0, 0), (1, 1, 1), (2, 2, 2)])
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    loaded, _ = load_checkpoint(path)
    assert loaded.spec == model.spec and loaded.spec.mean == (0.5, 0.5, 0.5)  # test_convnext's pretrained config
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    at_8, _ = load_checkpoint(path, output_stride=8)
    assert at_8.spec.output_stride == 8 and at_8.backbone.feature_specs["out"].stride == 8
    assert _stride(_run_and_capture(at_8)[1]["out"].shape[-1]) == 8
    report = export_model(path, tmp_path / "m.onnx", format="onnx")
    assert report.max_abs_diff <= 1e-4
    with torch.no_grad():
        assert (Predictor.from_file(tmp_path / "m.onnx").logits_for_batch(x) - model(x)).abs().max() < 1e-4


# --- ImageNet weights: timm's loader and the Hub cache, offline ---------------------------------------------


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face Hub cache of this test's own, read offline."""
    return offline_cache(tmp_path, monkeypatch)


def test_imagenet_weights_load_offline_from_timms_cache_equal_to_timms_own_model(hub_cache):
    encoder = "test_convnext"
    repo = timm.get_pretrained_cfg(encoder).hf_hub_id
    torch.manual_seed(3)
    reference = timm.create_model(encoder)  # a classifier whose weights stand in for the published ones
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    plant(hub_cache, repo, {"model.safetensors": safetensors.torch.save(state)})
    model = build_model(f"deeplabv3plus_tu-{encoder}", num_classes=3, pretrained_backbone=True)
    timms_own = timm.create_model(encoder, pretrained=True, features_only=True).state_dict()
    ours = model.backbone.body.state_dict()
    assert len(ours) > 20 and ours.keys() == timms_own.keys()
    for key, value in ours.items():
        assert torch.equal(value, timms_own[key]), key
    assert torch.equal(ours["stages_3.blocks.0.conv_dw.weight"], reference.stages[3].blocks[0].conv_dw.weight)
    assert model.spec.mean == tuple(timm.get_pretrained_cfg(encoder).mean)


def test_offline_without_the_file_names_what_to_download_and_where_it_goes(hub_cache):
    repo = timm.get_pretrained_cfg("test_efficientnet").hf_hub_id
    with pytest.raises(RuntimeError) as caught:
        build_model("deeplabv3_tu-test_efficientnet", pretrained_backbone=True)
    message = str(caught.value)
    assert f"`hf download {repo}`" in message and str(hub_cache / repo_folder_name(repo_id=repo, repo_type="model")) \
        in message and "pretrained_backbone='/path/to/model.safetensors'" in message


def test_a_file_loads_strictly_into_a_timm_encoder(tmp_path):
    torch.manual_seed(4)
    reference = timm.create_model("test_resnet")
    path = tmp_path / "test_resnet.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = build_model("deeplabv3plus_tu-test_resnet", num_classes=3, pretrained_backbone=str(path))
    timms_own = timm.create_model("test_resnet", features_only=True, pretrained=True,
                                  pretrained_cfg_overlay={"file": str(path)}).state_dict()
    ours = model.backbone.body.state_dict()
    assert ours.keys() == timms_own.keys() and all(torch.equal(v, timms_own[k]) for k, v in ours.items())
    assert torch.equal(ours["layer4.0.conv2.weight"], reference.layer4[0].conv2.weight)
