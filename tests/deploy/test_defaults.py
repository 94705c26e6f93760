"""Every model through every default: each registered model (and v2's MSC, v1's MSc variants) opened by
Predictor.from_file with the default runtime and precision (auto), and exported to each format (the export runs
itself against the model); eval, predict and serve's loader on the v2 MSC model; a format that cannot take a model."""

import pytest
import torch

import deeplab.deploy.runtimes as runtimes
from deeplab import create_model
from deeplab.cli import main
from deeplab.config import Config
from deeplab.deploy.export import ExportError, export_model
from deeplab.engine.checkpoint import save_checkpoint
from deeplab.imageio import save_rgb_png
from deeplab.inference import Predictor
from deeplab.models import list_models
from deeplab.serve.loading import load_predictor
from tests.fixtures import with_random_statistics

pytest.importorskip("onnxruntime", reason="the deploy extra (onnx, onnxruntime) is not installed")

# One model of each kind of network: the ResNet-101s stack more of the blocks the ResNet-50s have, Xception-65 and
# 71 more of Xception-41's, so they trace to the same operators and take the same paths (checked below).
STAND_INS = {"deeplabv3_resnet101": "deeplabv3_resnet50", "deeplabv3_resnet101_beta": "deeplabv3_resnet50_beta",
             "deeplabv3plus_resnet101": "deeplabv3plus_resnet50",
             "deeplabv3plus_resnet101_beta": "deeplabv3plus_resnet50_beta",
             "deeplabv3plus_xception65": "deeplabv3plus_xception41",
             "deeplabv3plus_xception71": "deeplabv3plus_xception41"}
CASES = {name: (name, {}) for name in list_models() if name not in STAND_INS}
CASES["deeplabv2_resnet101 MSC"] = ("deeplabv2_resnet101", {"msc_scales": [1.0, 0.75, 0.5]})
CASES["deeplabv1_vgg16 MSc"] = ("deeplabv1_vgg16", {"multiscale_features": True})
FORMATS = (("onnx", "onnx"), ("torchscript", "pt"))


@pytest.fixture
def defaults(monkeypatch):
    """The defaults a user gets (the suite pins runtime torch and precision fp32), timed on a small probe."""
    monkeypatch.delenv("DEEPLAB_RUNTIME")
    monkeypatch.delenv("DEEPLAB_PRECISION")
    monkeypatch.setattr(runtimes, "PROBE_SIZE", 65)


def _checkpoint(path, name, options, num_classes=3):
    torch.manual_seed(0)
    model = with_random_statistics(create_model(name, num_classes=num_classes, **options)).eval()
    save_checkpoint(path, model=model, optimizer=None, step=1, best_miou=0.0, config=Config(),
                    classes=[f"c{i}" for i in range(num_classes)], palette=[(i, i, i) for i in range(num_classes)])
    return model


def _assert_runs_like(predictor, x, expected):
    got = predictor.logits_for_batch(x)
    assert got.shape == expected.shape
    if predictor.precision == "fp32":
        assert (got - expected).abs().max().item() <= 1e-3 * max(1.0, expected.abs().max().item())
    else:  # reduced precision on noise: most pixels keep their class (the real-image check decided it)
        assert (got.argmax(1) == expected.argmax(1)).float().mean().item() >= 0.9


@pytest.mark.parametrize(("name", "stand_in"), STAND_INS.items())
def test_a_model_not_run_here_is_built_of_the_modules_of_one_that_is(name, stand_in):
    def layers(model_name):
        with torch.device("meta"):  # the structure only: no memory, no initialisation
            return {type(module) for module in create_model(model_name, num_classes=3).modules()}

    assert stand_in in CASES and layers(name) == layers(stand_in)


@pytest.mark.parametrize("case", CASES)
def test_every_model_runs_through_every_default(case, tmp_path, defaults):
    name, options = CASES[case]
    model = _checkpoint(tmp_path / "ck.pt", name, options)  # built once, one checkpoint for every path
    x = torch.randn(1, 3, 65, 81, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    predictor = Predictor.from_file(tmp_path / "ck.pt")
    choice = predictor.runtime
    assert choice.runtime in ("torch", "onnxruntime", "openvino") and predictor.precision == choice.precision
    assert choice.describe().startswith(f"runtime: {choice.runtime} {choice.precision} (")
    assert "precision auto: " in choice.describe() and "cannot be written" not in choice.describe()
    _assert_runs_like(predictor, x, expected)
    for fmt, suffix in FORMATS:  # each export runs itself against the model (two sizes, two batch sizes)
        out = tmp_path / f"model.{suffix}"
        report = export_model(tmp_path / "ck.pt", out, format=fmt, progress=False)
        assert report.max_abs_diff <= 1e-3 and out.is_file()
        out.unlink()  # the suite's disk use: one export at a time


def test_eval_predict_and_serve_load_an_msc_model_with_their_defaults(tmp_path, defaults, capsys):
    # the regression of issue 24: runtime auto wrote the MSC model as ONNX, and round() of a traced size crashed.
    # The MSC wrapper on a light network (v2 ResNet-101 MSC itself runs through Predictor.from_file above)
    checkpoint = tmp_path / "ck.pt"
    _checkpoint(checkpoint, "deeplabv3_mobilenetv2", {"msc_scales": [1.0, 0.75, 0.5]}, num_classes=7)  # demo's
    assert main(["eval", "--checkpoint", str(checkpoint), "--set", "data.name=demo", "data.num_images=2",
                 "data.image_size=65"]) == 0
    out, err = capsys.readouterr()
    assert "runtime: " in err and "precision auto" not in err and "Traceback" not in err  # eval: fp32
    assert "evaluated 2 image(s)" in out
    image = torch.randint(0, 256, (3, 41, 53), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    save_rgb_png(image.permute(1, 2, 0), tmp_path / "x.png")
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "x.png"),
                 "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "runtime: " in err and "precision auto: " in err and "Traceback" not in err
    assert (tmp_path / "out" / "x.png").is_file()
    predictor, info = load_predictor(checkpoint)  # deeplab serve's loader: the same choice, from the cache
    assert predictor.runtime.cached and (info.runtime, info.precision) == (predictor.runtime.runtime,
                                                                           predictor.precision)


def test_a_format_that_cannot_take_the_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import deeplab.deploy.export as export

    _checkpoint(tmp_path / "ck.pt", "deeplabv3_mobilenetv2", {})

    def fail(*args, **kwargs):
        raise RuntimeError("forced: unsupported operator")

    monkeypatch.setattr(export, "write_onnx", fail)
    with pytest.raises(ExportError, match=r"this model cannot be exported to onnx \(RuntimeError: forced: "
                                          r"unsupported operator\); nothing written"):
        export_model(tmp_path / "ck.pt", tmp_path / "m.onnx", progress=False)
    assert main(["export", "--checkpoint", str(tmp_path / "ck.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "error: this model cannot be exported to onnx" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()
