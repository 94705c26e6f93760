"""Exports: at another output stride, the card they carry, int8 keeps its accuracy, the CLI (every model round-trips
through both formats in test_defaults.py)."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab import create_model
from deeplab.cli import main
from deeplab.config import Config
from deeplab.deploy import precision
from deeplab.deploy.export import ExportError, export_model
from deeplab.engine.checkpoint import save_checkpoint
from deeplab.inference import Predictor
from deeplab.modelfile import load_checkpoint, read_checkpoint, read_export
from tests.fixtures import with_random_statistics

pytest.importorskip("onnxruntime", reason="the deploy extra (onnx, onnxruntime) is not installed")

CLASSES = ["background", "left", "right"]
PALETTE = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]


def _checkpoint(path, name: str, **options):
    torch.manual_seed(0)
    model = with_random_statistics(create_model(name, num_classes=3, **options))
    save_checkpoint(path, model=model, optimizer=None, step=3, best_miou=0.0, config=Config(), classes=CLASSES,
                    palette=PALETTE)
    return path


def _round_trip(checkpoint, out, fmt, output_stride=None):
    report = export_model(checkpoint, out, format=fmt, output_stride=output_stride)
    assert report.path == out and out.is_file() and report.max_abs_diff <= 1e-3
    model, _ = load_checkpoint(checkpoint, output_stride=output_stride)
    predictor = Predictor.from_file(out)
    assert predictor.spec == model.spec and predictor.output_stride == model.spec.output_stride
    assert (predictor.classes, predictor.palette, predictor.precision) == (CLASSES, PALETTE, "fp32")
    generator = torch.Generator().manual_seed(2)
    for shape in [(1, 3, 65, 65), (2, 3, 97, 81)]:  # one file, two sizes and batch sizes
        x = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            expected = model(x)
        assert (predictor.logits_for_batch(x) - expected).abs().max().item() < 1e-3


# Every model (or its stand-in) round-trips through both formats in tests/deploy/test_defaults.py.


@pytest.mark.parametrize("name, fmt", [("deeplabv3plus_mobilenetv2", "onnx"), ("deeplabv3_resnet50", "onnx"),
                                       ("deeplabv3plus_xception65", "torchscript")])
def test_export_at_output_stride_8_from_a_stride_16_checkpoint(tmp_path, name, fmt):
    checkpoint = _checkpoint(tmp_path / "ck.pt", name, output_stride=16)
    _round_trip(checkpoint, tmp_path / "model.os8", fmt, output_stride=8)
    assert read_export(tmp_path / "model.os8").spec.output_stride == 8


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("mobilenet") / "ck.pt", "deeplabv3plus_mobilenetv2")


def test_the_export_carries_what_the_checkpoint_carries(mobilenet, tmp_path):
    export_model(mobilenet, tmp_path / "m.onnx")
    info, checkpoint = read_export(tmp_path / "m.onnx"), read_checkpoint(mobilenet)
    assert info.spec == checkpoint.spec and info.classes == CLASSES and info.palette == PALETTE
    assert (info.mean, info.std) == (checkpoint.spec.mean, checkpoint.spec.std)
    assert info.config == checkpoint.config.to_dict() and info.format == "onnx" and info.precision == "fp32"


def test_bf16_torchscript_export_runs_in_bf16_and_says_so(mobilenet, tmp_path):
    report = export_model(mobilenet, tmp_path / "bf16.pt", format="torchscript", precision="bf16")
    assert report.max_abs_diff > 1e-5  # really reduced precision (fp32 exports differ by ~1e-7)
    assert report.agreement > 0.9
    assert Predictor.from_file(tmp_path / "bf16.pt").precision == "bf16"


@pytest.mark.parametrize("fmt, precision, message", [
    ("onnx", "bf16", "bf16 is not available for ONNX"),
    ("torchscript", "int8", "--format onnx --precision int8"),
    ("tflite", "fp32", "valid choices: onnx, torchscript"),
    ("onnx", "int4", "valid choices: fp32, bf16, int8"),
])
def test_unsupported_export_combinations_are_clear_errors(mobilenet, tmp_path, fmt, precision, message):
    with pytest.raises(ValueError, match=message):
        export_model(mobilenet, tmp_path / "m.out", format=fmt, precision=precision)
    assert not (tmp_path / "m.out").exists()


def test_an_export_is_fixed_at_its_stride_and_precision(mobilenet, tmp_path):
    export_model(mobilenet, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="export again with --output-stride 8"):
        Predictor.from_file(tmp_path / "m.onnx", output_stride=8)
    with pytest.raises(ValueError, match="fp32 export.*--precision bf16"):
        Predictor.from_file(tmp_path / "m.onnx", precision="bf16")


def test_an_export_outside_the_tolerance_is_not_written(mobilenet, tmp_path, capsys):
    report = export_model(mobilenet, tmp_path / "ok.onnx")
    assert 0 < report.max_abs_diff < 1e-3  # folded BatchNorm: rounding-level, never bit-exact
    with pytest.raises(ExportError, match=r"differs from the original model by .* \(> 1e-09\)"):
        export_model(mobilenet, tmp_path / "m.onnx", tolerance=1e-9)
    assert main(["export", "--checkpoint", str(mobilenet), "--out", str(tmp_path / "m.onnx"),
                 "--tolerance", "1e-9"]) != 0
    assert "nothing written" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()


def test_export_without_the_deploy_extra_names_the_extra(mobilenet, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"deeplab\[deploy\]"):
        export_model(mobilenet, tmp_path / "m.onnx")
    assert main(["export", "--checkpoint", str(mobilenet), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "deeplab[deploy]" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()


# --- int8 and the command line on a short demo model ----------------------------------------------

DEMO = ["model.name=deeplabv3plus_mobilenetv2", "data.name=demo", "data.image_size=65", "data.num_images=48",
        "data.crop_size=65", "data.num_workers=0", "data.scale_min=1.0", "data.scale_max=1.0",
        "train.batch_size=8", "train.iterations=60", "train.eval_every=60", "train.lr=0.05", "train.progress=false",
        "eval.output_stride=null", "eval.batch_size=8"]


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    """v3+ MobileNetV2 trained for 60 steps on the demo set: good enough that accuracy can be lost."""
    run = tmp_path_factory.mktemp("demo")
    assert main(["train", "--set", *DEMO, f"train.run_dir={run}"]) == 0
    return run / "last.pt"


def test_int8_keeps_the_demo_models_miou_within_a_point(demo_model, tmp_path):
    report = export_model(demo_model, tmp_path / "int8.onnx", precision="int8", calibration_images=16)
    assert report.eval_images == 48 and report.quantization["calibration_images"] == 16
    assert report.reference_miou > 0.3  # a model that predicts something, so int8 has accuracy to lose
    assert abs(report.reference_miou - report.miou) <= 0.01
    assert report.quantization["fp32_nodes"]  # the classifier stays in fp32
    info = read_export(tmp_path / "int8.onnx")
    assert info.precision == "int8" and info.classes == read_checkpoint(demo_model).classes


def test_int8_refuses_to_write_a_model_that_lost_accuracy(demo_model, tmp_path):
    with pytest.raises(ExportError, match="nothing written"):
        export_model(demo_model, tmp_path / "int8.onnx", precision="int8", calibration_images=2,
                     max_miou_drop=-100.0, eval_images=8)
    assert not (tmp_path / "int8.onnx").exists()


def test_int8_calibrates_on_a_folder_and_says_when_it_has_none(demo_model, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        export_model(demo_model, tmp_path / "int8.onnx", precision="int8", calibration=tmp_path / "empty")
    folder = tmp_path / "calibration"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 50, 3), np.uint8)).save(folder / f"{i}.png")
    report = export_model(demo_model, tmp_path / "int8.onnx", precision="int8", calibration=folder, eval_images=0)
    assert report.quantization["calibration_images"] == 3 and report.miou is None
    assert "accuracy not measured" in report.notes[0]


def test_int8_accuracy_is_measured_on_onnx_runtime_whatever_the_default(demo_model, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_RUNTIME", "openvino")  # OpenVINO's int8 kernels round differently
    runtimes = []
    opened = Predictor.from_file
    monkeypatch.setattr(Predictor, "from_file", lambda *args, **kwargs: runtimes.append(kwargs.get("runtime"))
                        or opened(*args, **kwargs))
    report = export_model(demo_model, tmp_path / "int8.onnx", precision="int8", calibration_images=2, eval_images=4)
    assert runtimes == ["onnxruntime"] and report.eval_images == 4


def test_int8_is_refused_on_a_cpu_without_8_bit_integer_instructions(demo_model, tmp_path, monkeypatch, capsys):
    int8 = tmp_path / "int8.onnx"
    export_model(demo_model, int8, precision="int8", calibration_images=2, eval_images=0)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"sse4_2", "avx", "fma"}))
    refusal = "int8 needs a CPU with 8-bit integer multiply-add instructions"
    with pytest.raises(ValueError, match=refusal):
        export_model(demo_model, tmp_path / "again.onnx", precision="int8")
    assert not (tmp_path / "again.onnx").exists()
    for runtime in ("onnxruntime", "openvino", "auto"):
        with pytest.raises(ValueError, match=refusal):
            Predictor.from_file(int8, runtime=runtime)
    _images(tmp_path / "images", count=1)
    assert main(["predict", "--model", str(int8), str(tmp_path / "images"), "--out", str(tmp_path / "out")]) != 0
    assert refusal in capsys.readouterr().err


def _images(folder, count=3):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (45 + 10 * i, 70, 3), np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_predict_and_eval_with_an_export_match_the_checkpoint(demo_model, tmp_path, capsys, fmt):
    out = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'ts'}"
    assert main(["export", "--checkpoint", str(demo_model), "--out", str(out), "--format", fmt]) == 0
    assert "max |d logits|" in capsys.readouterr().out
    images = _images(tmp_path / "images")
    runs = {"checkpoint": ["--checkpoint", demo_model], "model=checkpoint": ["--model", demo_model],
            "model=export": ["--model", out]}
    for name, (flag, source) in runs.items():
        assert main(["predict", flag, str(source), str(images), "--out", str(tmp_path / name), "--flip"]) == 0
    for i in range(3):
        masks = {name: np.asarray(Image.open(tmp_path / name / f"img{i}.png")) for name in runs}
        assert np.array_equal(masks["model=checkpoint"], masks["checkpoint"])
        assert (masks["model=export"] == masks["checkpoint"]).mean() > 0.999  # ties may break either way
    metrics = {}
    for name in ("checkpoint", "model=export"):
        flag, source = runs[name]
        assert main(["eval", flag, str(source), "--json", str(tmp_path / f"{name}.json")]) == 0
        metrics[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert metrics["model=export"]["miou"] == pytest.approx(metrics["checkpoint"]["miou"], abs=1e-3)


def test_cli_errors_are_one_plain_line(demo_model, tmp_path, capsys):
    images = _images(tmp_path / "images", 1)
    assert main(["predict", "--checkpoint", str(demo_model), str(images), "--out", str(tmp_path / "o"),
                 "--precision", "fp16"]) == 2
    assert main(["export", "--checkpoint", str(demo_model), "--out", str(tmp_path / "m.onnx"),
                 "--precision", "bf16"]) == 2
    (tmp_path / "fake.onnx").write_bytes(b"\x08 not an onnx model")
    assert main(["eval", "--model", str(tmp_path / "fake.onnx")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err] == ["error"] * 3, err
    assert "fp16 needs a CUDA device" in err[0] and "bf16 is not available for ONNX" in err[1]
    assert "not an ONNX model" in err[2]
