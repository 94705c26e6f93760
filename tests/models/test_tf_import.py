"""TF-compatible numerics against hand-computed values, the TF name mapping, and `deeplab import-tf` offline.

The comparison with the reference code itself (TensorFlow) is `make conformance`; nothing here needs TF.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deeplab.cli import main
from deeplab.modelfile import load_checkpoint
from deeplab.models import build_from_spec
from deeplab.models.layers import Conv2dSame, MaxPool2dSame, tf_same_padding
from deeplab.models.resnet_beta import ResNetV1BetaBackbone
from deeplab.models.segmenter import upsample_to
from deeplab.models.tf_import import import_tf_variables, infer_architecture, tf_spec, tf_variables
from tests.tfbundle import write_bundle, write_zoo_tarball


@pytest.mark.parametrize(("size", "kernel", "stride", "dilation", "expected"), [
    (128, 3, 2, 1, (0, 1)),  # even size, strided: TF puts the one pixel of padding after
    (129, 3, 2, 1, (1, 1)),
    (96, 3, 2, 1, (0, 1)),
    (64, 1, 2, 1, (0, 0)),
    (65, 3, 1, 2, (2, 2)),  # unstrided: symmetric, as PyTorch pads
    (33, 3, 2, 1, (1, 1)),
    (6, 3, 2, 1, (0, 1)),
])
def test_tf_same_padding_hand_computed(size, kernel, stride, dilation, expected):
    assert tf_same_padding(size, kernel, stride, dilation) == expected


def test_conv2d_same_pads_after_on_even_sizes():
    conv = Conv2dSame(1, 1, 3, 2, bias=False)
    torch.nn.init.ones_(conv.weight)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # TF 'SAME' on 4 -> 2: windows rows/cols {0,1,2} and {2,3,pad}; sums by hand.
    expected = torch.tensor([[0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10, 2 + 3 + 6 + 7 + 10 + 11],
                             [8 + 9 + 10 + 12 + 13 + 14, 10 + 11 + 14 + 15]], dtype=torch.float32)
    assert torch.equal(conv(x)[0, 0], expected)
    # PyTorch's symmetric padding gives other windows there (the misalignment the option removes).
    assert not torch.equal(F.conv2d(x, conv.weight, stride=2, padding=1)[0, 0], expected)


def test_max_pool_same_never_picks_padding():
    x = -torch.arange(16.0).view(1, 1, 4, 4) - 1  # all negative: zero padding would win
    out = MaxPool2dSame(3, 2)(x)[0, 0]
    assert torch.equal(out, torch.tensor([[-1.0, -3.0], [-9.0, -11.0]]))


def test_align_corners_resize_hand_computed():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    # Corners map to corners: output (r, c) samples input (r / 3, c / 3), so the value is (2r + c) / 3.
    expected = torch.tensor([[(2 * r + c) / 3 for c in range(4)] for r in range(4)])
    assert torch.allclose(upsample_to(x, (4, 4), align_corners=True)[0, 0], expected)
    assert not torch.allclose(upsample_to(x, (4, 4))[0, 0], expected)


@pytest.mark.parametrize("size", [65, 64])
def test_resnet_beta_strides_in_the_last_unit(size):
    net = ResNetV1BetaBackbone(50, output_stride=16).eval()
    assert [u.conv2.stride[0] for u in net.block1] == [1, 1, 2]
    assert [u.conv2.dilation[0] for u in net.block4] == [2, 2, 2]  # OS 16: block 4 at rate 2, multi-grid 1/1/1
    assert net.block3[-1].conv2.stride[0] == 1  # past the output stride: unstrided, the rate grows after it
    with torch.no_grad():
        features = net(torch.randn(1, 3, size, size))
    stem = (size + 1) // 2
    assert features["low_level"].shape[-1] == -(-stem // 2)  # the pool's 'SAME' rounding up
    assert features["out"].shape[-1] == -(-size // 16)


# ----------------------------------------------------------------------------- names


def _random_stats(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 1.5 + 0.5)
    return model.eval()


# Counts and names as the reference's graphs hold them (tf-deeplab README; its probe builds them).
@pytest.mark.parametrize(("name", "options", "count", "values", "names"), [
    ("deeplabv3plus_xception65", {}, 732, 41_258_213,
     {"xception_65/entry_flow/conv1_1/weights": (3, 3, 3, 32), "aspp1_depthwise/depthwise_weights": (3, 3, 2048, 1),
      "decoder/feature_projection0/weights": (1, 1, 256, 48), "logits/semantic/biases": (21,),
      "concat_projection/weights": (1, 1, 1280, 256)}),
    ("deeplabv3plus_resnet101_beta", {}, 602, None,
     {"resnet_v1_101/conv1_3/weights": (3, 3, 64, 128),
      "resnet_v1_101/block1/unit_1/bottleneck_v1/shortcut/weights": (1, 1, 128, 256),
      "resnet_v1_101/block3/unit_23/bottleneck_v1/conv2/BatchNorm/moving_variance": (256,)}),
    ("deeplabv3_mobilenetv2", {"atrous_rates": ()}, 272, None,
     {"MobilenetV2/expanded_conv_16/project/weights": (1, 1, 960, 320), "MobilenetV2/Conv/weights": (3, 3, 3, 32),
      "MobilenetV2/expanded_conv/depthwise/depthwise_weights": (3, 3, 32, 1), "image_pooling/weights": (1, 1, 320, 256),
      "concat_projection/weights": (1, 1, 512, 256)}),
])
def test_tf_names_and_shapes_are_the_references(name, options, count, values, names):
    variables = tf_variables(build_from_spec(tf_spec(name, num_classes=21, **options)))
    assert len(variables) == count
    if values is not None:
        assert sum(v.size for v in variables.values()) == values
    for variable, shape in names.items():
        assert variables[variable].shape == shape


def test_architecture_is_inferred_from_variables():
    variables = tf_variables(build_from_spec(tf_spec("deeplabv3plus_xception65", num_classes=5)))
    shapes = {k: v.shape for k, v in variables.items()}
    name, options = infer_architecture(shapes)
    assert name == "deeplabv3plus_xception65"
    assert options["num_classes"] == 5 and options["separable"] and options["align_corners"]
    assert options["low_level_preact"] and options["atrous_rates"] == (6, 12, 18)
    assert tuple(options["mean"]) == (0.5, 0.5, 0.5) and tuple(options["std"]) == (0.5, 0.5, 0.5)
    assert infer_architecture(shapes, output_stride=8)[1]["atrous_rates"] == (12, 24, 36)


def test_import_round_trip_gives_the_same_logits():
    model = _random_stats(build_from_spec(tf_spec("deeplabv3_mobilenetv2", num_classes=4, atrous_rates=())))
    spec, state = import_tf_variables(tf_variables(model))
    assert spec == model.spec
    imported = build_from_spec(spec).eval()
    imported.load_state_dict(state)
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        assert torch.equal(imported(x), model(x))


def test_projection_blocks_follow_tfs_concat_order():
    # TF concatenates [image pooling, 1x1, atrous...]; our ASPP ends with the pooling branch.
    model = build_from_spec(tf_spec("deeplabv3_mobilenetv2", num_classes=3, atrous_rates=()))
    variables = tf_variables(model)
    weight = np.zeros_like(variables["concat_projection/weights"])
    weight[:, :, :256, :] = 1.0  # TF's first block: image pooling
    variables["concat_projection/weights"] = weight
    _, state = import_tf_variables(variables)
    ours = state["head.0.project.0.weight"]  # out, in = [1x1 (256), pooling (256)]
    assert ours[:, :256].abs().sum() == 0 and torch.all(ours[:, 256:] == 1.0)


def test_refusals_name_the_variables():
    variables = tf_variables(build_from_spec(tf_spec("deeplabv3_mobilenetv2", num_classes=3, atrous_rates=())))
    extra = {**variables, "MobilenetV2/expanded_conv_99/project/weights": np.zeros((1, 1, 2, 2), np.float32)}
    with pytest.raises(ValueError, match=r"could not place 1: MobilenetV2/expanded_conv_99/project/weights"):
        import_tf_variables(extra)
    missing = {k: v for k, v in variables.items() if k != "MobilenetV2/expanded_conv_3/expand/weights"}
    with pytest.raises(ValueError, match=r"missing 1: MobilenetV2/expanded_conv_3/expand/weights"):
        import_tf_variables(missing)
    with pytest.raises(ValueError, match=r"top-level scopes: aspp0, concat_projection, image_pooling, logits, vgg_16"):
        import_tf_variables({**{k: v for k, v in variables.items() if not k.startswith("Mobilenet")},
                             "vgg_16/conv1/weights": np.zeros((3, 3, 3, 64), np.float32)})
    optimizer_state = {**variables, "global_step": np.int64(5), "aspp0/weights/Momentum": variables["aspp0/weights"]}
    import_tf_variables(optimizer_state)  # training state beside the network is ignored


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def mobilenet_tf(tmp_path_factory):
    model = _random_stats(build_from_spec(tf_spec("deeplabv3_mobilenetv2", num_classes=21, atrous_rates=())))
    return model, tf_variables(model), tmp_path_factory.mktemp("tf")


@pytest.mark.parametrize("layout", ["prefix", "tarball"])
def test_import_tf_command_writes_a_checkpoint_that_loads(mobilenet_tf, layout, capsys):
    model, variables, folder = mobilenet_tf
    if layout == "prefix":
        source = write_bundle(folder / "ckpt" / "model.ckpt", variables, num_shards=2)
    else:
        source = write_zoo_tarball(folder / "zoo.tar.gz", "deeplabv3_mnv2_pascal_train_aug", "model.ckpt-30000",
                                   variables)
    out = folder / f"{layout}.pt"
    assert main(["import-tf", str(source), "--out", str(out)]) == 0
    assert "deeplabv3_mobilenetv2, 21 classes" in capsys.readouterr().out
    loaded, checkpoint = load_checkpoint(out)
    assert checkpoint.classes[15] == "person" and len(checkpoint.palette) == 21
    x = torch.randn(1, 3, 65, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_import_tf_command_refuses_clearly(tmp_path, capsys):
    variables = {"resnet_v1_50/conv1/weights": np.zeros((7, 7, 3, 64), np.float32),
                 "image_pooling/weights": np.zeros((1, 1, 2048, 256), np.float32),
                 "logits/semantic/weights": np.zeros((1, 1, 256, 21), np.float32)}
    prefix = write_bundle(tmp_path / "model.ckpt", variables)
    assert main(["import-tf", str(prefix), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "only the 'beta' ResNet-v1" in err and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()


def test_tf_padded_model_exports_to_onnx_for_any_size(mobilenet_tf):
    # TF's padding depends on each input's parity; the export must compute it, not bake the probe's.
    pytest.importorskip("onnxruntime")
    from deeplab.deploy.export import export_model
    from deeplab.modelfile import open_model

    model, variables, folder = mobilenet_tf
    checkpoint = folder / "export_source.pt"
    prefix = write_bundle(folder / "exp" / "model.ckpt", variables)
    assert main(["import-tf", str(prefix), "--out", str(checkpoint)]) == 0
    export_model(checkpoint, folder / "tf.onnx")
    runner, _ = open_model(folder / "tf.onnx")
    for size in [(64, 96), (65, 65)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            ours = model(x)
        assert (runner(x) - ours).abs().max() <= 1e-4 * ours.abs().max()
