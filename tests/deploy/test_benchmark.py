"""The deploy benchmark's report: ratios against the right baselines, targets judged, skips said."""

import importlib.util
import types

import pytest
import torch

from deeplab.cli import main
from deeplab.deploy import benchmark
from deeplab.deploy.benchmark import BenchmarkResult, Ratio, Timing, format_report, paired_ratio, run_benchmark
from deeplab.deploy.precision import cpu_has_bf16, cpu_kind


def _result() -> BenchmarkResult:
    # five rounds; the machine is busier in round 2 (every path 10% slower) and quieter in round 3
    load = (1.0, 1.1, 0.9, 1.0, 1.0)

    def row(model, path, seconds, spread=(1.0,) * 5, **extra):
        return Timing(model, path, [seconds * n * k for n, k in zip(load, spread, strict=True)], **extra)

    rows = [row("deeplabv3_resnet101", "eager fp32", 2.0),
            row("deeplabv3_resnet101", "fast fp32", 1.5, (1.0, 1.02, 0.98, 1.0, 1.01), peak_mb=612.4,
                agreement=0.99996),
            row("deeplabv3_resnet101", "ONNX Runtime int8", 0.5),
            row("deeplabv3_resnet101", "torchvision eager", 2.0),
            row("deeplabv3plus_mobilenetv2", "eager fp32", 0.4),
            row("deeplabv3plus_mobilenetv2", "ONNX Runtime int8", 0.1, (1.0, 1.6, 1.0, 0.7, 1.0))]
    return BenchmarkResult(size=513, batch=1, runs=5, threads=2, timings=rows, skipped=["x: bf16 not measured"],
                           cpu="CPU: Test CPU, 2 cores, 2 torch threads; AVX2 (no AMX); torch CPU capability AVX2",
                           notes=["x: auto (the default runtime) ran onnxruntime fp32 (fastest verified ...)"])


def test_a_speed_up_is_the_median_of_per_round_ratios_not_a_ratio_of_medians():
    # The path's rounds 3-5 ran on a busy machine, the baseline's 4-5: the medians (1.0 s each) say 1x; round by
    # round the path is 2x faster in four of five rounds, and the one round that caught only the path says 1x.
    ratio = paired_ratio([1.0, 1.0, 1.0, 2.0, 2.0], [0.5, 0.5, 1.0, 1.0, 1.0])
    assert ratio == Ratio(median=2.0, low=1.0, high=2.0, rounds=5)
    assert ratio.spread == pytest.approx(0.5) and not ratio.judgeable
    with pytest.raises(ValueError, match="the same rounds on both sides, got 3 and 2"):
        paired_ratio([1.0, 1.0, 1.0], [1.0, 1.0])


@pytest.mark.parametrize(("times", "verdict"), [
    ([0.24, 0.25, 0.245, 0.25, 0.255], "met"),  # 4.0x to 4.17x
    ([0.30, 0.29, 0.31, 0.30, 0.30], "NOT met"),  # 3.2x to 3.4x: steady and short of 4x
    ([0.20, 0.25, 0.40, 0.25, 0.25], "not judged: spread 62% over 5 rounds, needs <= 25%"),
    ([0.25, 0.25, 0.25], "not judged: 3 round(s), needs 5"),
])
def test_a_target_is_judged_only_from_enough_rounds_that_agree(times, verdict):
    assert paired_ratio([1.0] * len(times), times).judge(4.0) == verdict


def test_report_gives_per_round_speed_ups_with_their_range_warns_and_judges_the_targets_it_can():
    report = format_report(_result())
    lines = report.splitlines()
    assert lines[0] == "CPU: Test CPU, 2 cores, 2 torch threads; AVX2 (no AMX); torch CPU capability AVX2"
    assert "median/min of 5 interleaved rounds (one run of every path per round)" in lines[1]
    assert lines[2].startswith("speed-up vs eager: median over the rounds of eager fp32's time / the path's time in "
                               "the same round")
    assert lines[3].startswith("argmax = eager: pixels of the first round whose class is eager fp32's; weights are "
                               "random (seeded), so class scores lie close together")
    assert "| deeplabv3_resnet101 | fast fp32 | 1.500 | 1.323 | 1.33x | 1.31-1.36x (4%) | 100.00% | 612 |" in lines
    assert "| deeplabv3_resnet101 | eager fp32 | 2.000 | 1.800 | 1.00x | 1.00-1.00x (0%) |  |  |" in lines
    assert "| deeplabv3plus_mobilenetv2 | ONNX Runtime int8 | 0.100 | 0.070 | 4.00x | 2.50-5.71x (80%) |  |  |" in lines
    # the machine's load cancels round by round: int8 of v3 ResNet-101 is judged, MobileNetV2's is not
    assert "target: int8 >= 4x plain eager fp32 (deeplabv3_resnet101): 4.00x (rounds 4.00-4.00x) [met]" in lines
    assert ("target: int8 >= 4x plain eager fp32 (deeplabv3plus_mobilenetv2): 4.00x (rounds 2.50-5.71x) "
            "[not judged: spread 80% over 5 rounds, needs <= 25%]") in lines
    (warning,) = [line for line in lines if line.startswith("warning:")]
    assert warning.startswith("warning: per-round speed-ups spread by more than 25% of their median for "
                              "deeplabv3plus_mobilenetv2 ONNX Runtime int8 (80%): the machine was busy")
    assert "target: fast fp32" not in report  # the peer target is benchmarks/peers.py's (tests/benchmarks)
    assert lines[-2:] == ["note: x: auto (the default runtime) ran onnxruntime fp32 (fastest verified ...)",
                          "skipped: x: bf16 not measured"]


def test_report_warns_when_the_rounds_are_too_few():
    rows = [Timing("m", "eager fp32", [1.0, 1.0]), Timing("m", "ONNX Runtime int8", [0.2, 0.25])]
    lines = format_report(BenchmarkResult(65, 1, 2, 2, rows, [])).splitlines()
    assert "warning: 2 round(s) are too few to trust a speed-up (targets are judged from 5); use --runs 7" in lines
    assert "target: int8 >= 4x plain eager fp32 (m): 4.50x (rounds 4.00-5.00x) [not judged: 2 round(s), needs 5]" \
        in lines


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_benchmark_command_runs_every_path_of_a_small_model_showing_progress(capsys):
    pytest.importorskip("onnxruntime")
    assert main(["benchmark", "--models", "deeplabv3_mobilenetv2", "--size", "65", "--runs", "1", "--warmup", "0",
                 "--no-memory", "--no-peers"]) == 0
    out, err = capsys.readouterr()
    paths = ["eager fp32", "fast fp32", "TorchScript fp32", "ONNX Runtime fp32", "ONNX Runtime int8",
             "auto (the default runtime)"]
    if importlib.util.find_spec("openvino"):
        paths += ["OpenVINO fp32", "OpenVINO int8"] + (["OpenVINO bf16"] if cpu_has_bf16() else [])
    for path in paths:
        assert f"| deeplabv3_mobilenetv2 | {path} |" in out
    eager_row = next(line for line in out.splitlines() if "| eager fp32 |" in line)
    assert "| 1.00x | 1.00-1.00x (0%) | 100.00% |" in eager_row  # the reference agrees with itself
    assert all(line.count("%") == 2 for line in out.splitlines() if line.startswith("| deeplabv3_mobilenetv2 |"))
    assert "warning: 1 round(s) are too few to trust a speed-up (targets are judged from 5); use --runs 7" in out
    assert "int8 >= 4x plain eager fp32 (deeplabv3_mobilenetv2): " in out and "[not judged: 1 round(s), needs 5]" in out
    assert out.splitlines()[0] == err.splitlines()[0] == cpu_kind()
    for step in ("building", "export TorchScript fp32", "export ONNX Runtime fp32", "export ONNX Runtime int8",
                 "round 1/1", "choosing the default runtime"):
        assert f"deeplabv3_mobilenetv2: {step}" in err
    assert "5/5" in err  # build, three exports, one round


def _fake_paths(name, model, workdir, size, skipped, extra=None, bar=None, notes=None):
    for _ in benchmark._EXPORTS:
        bar.update()
    return {"eager fp32": model, "fast fp32": model}


def test_progress_counts_every_step_including_the_memory_children(monkeypatch, capsys):
    monkeypatch.setattr(benchmark, "build_paths", _fake_paths)
    children = []
    monkeypatch.setattr(benchmark, "peak_memory_mb", lambda name, label, *rest: children.append((name, label)) or 1.0)
    result = run_benchmark(["a", "b"], size=9, runs=2, warmup=1, build=lambda name: torch.nn.Identity(),
                           progress=True)
    err = capsys.readouterr().err
    # per model: build, three exports, one warm-up, two rounds, then one memory child per path
    assert children == [("a", "eager fp32"), ("a", "fast fp32"), ("b", "eager fp32"), ("b", "fast fp32")]
    assert "18/18" in err and "19/18" not in err
    for step in ("a: building", "a: warm-up 1/1", "a: round 2/2", "b: memory of fast fp32"):
        assert step in err
    assert err.splitlines()[0] == result.cpu == cpu_kind()
    assert [t.peak_mb for t in result.timings] == [1.0] * 4 and all(len(t.times) == 2 for t in result.timings)


def test_no_progress_writes_nothing_to_stderr(monkeypatch, capsys):
    monkeypatch.setattr(benchmark, "build_paths", _fake_paths)
    run_benchmark(["a"], size=9, runs=1, warmup=0, memory=False, build=lambda name: torch.nn.Identity())
    assert capsys.readouterr().err == ""


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_int8_is_not_measured_on_a_cpu_without_8_bit_integer_instructions(monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(benchmark, "cpu_has_int8", lambda: False)
    auto = types.SimpleNamespace(logits_for_batch=None, runtime=types.SimpleNamespace(describe=lambda: "runtime: x"))
    monkeypatch.setattr(benchmark, "_auto_predictor", lambda model: auto)  # auto's 513 px probe is not the subject
    skipped = []
    paths = benchmark.build_paths("deeplabv3_mobilenetv2", benchmark.benchmark_model("deeplabv3_mobilenetv2"),
                                  tmp_path, 33, skipped)
    assert "ONNX Runtime fp32" in paths and not any("int8" in label for label in paths)
    assert not list(tmp_path.glob("*int8*"))
    assert "deeplabv3_mobilenetv2: int8 not measured (int8 needs a CPU with 8-bit integer multiply-add" in skipped[0]
    assert "deeplabv3_mobilenetv2: ONNX Runtime int8 not measured (deeplabv3_mobilenetv2.int8.onnx was not " \
           "exported)" in skipped


def test_a_trained_checkpoint_runs_on_demo_images_and_the_report_says_so(monkeypatch, tmp_path):
    from deeplab import create_model
    from deeplab.config import Config
    from deeplab.data import DemoDataset
    from deeplab.engine.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("deeplabv3_mobilenetv2", num_classes=len(DemoDataset.classes)).eval()
    save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=None, step=1, best_miou=0.0, config=Config(),
                    classes=list(DemoDataset.classes), palette=list(DemoDataset.palette))
    seen = []

    def paths(name, model, *args, **kwargs):
        _fake_paths(name, model, *args, **kwargs)
        return {"eager fp32": model, "fast fp32": lambda x: seen.append(x) or model(x)}

    monkeypatch.setattr(benchmark, "build_paths", paths)
    monkeypatch.setattr(benchmark, "peak_memory_mb", lambda *args: pytest.fail("no memory child for a checkpoint"))
    result = run_benchmark(["ignored"], size=33, runs=1, warmup=0, checkpoint=tmp_path / "ck.pt")
    assert [(t.model, t.path) for t in result.timings] == [("deeplabv3_mobilenetv2", "eager fp32"),
                                                           ("deeplabv3_mobilenetv2", "fast fp32")]
    expected = benchmark.demo_batch(model.spec, 33, 1)
    assert len(seen) == 1 and torch.equal(seen[0], expected) and expected.shape == (1, 3, 33, 33)
    assert result.timings[1].agreement == 1.0  # the same trained model, the same demo scene
    report = format_report(result)
    assert f"weights trained ({tmp_path / 'ck.pt'}), inputs demo val images: the pixels each path changes" in report
    assert "weights are random" not in report and "skipped: peak memory not measured (--checkpoint)" in report


def test_a_checkpoint_of_four_input_channels_is_timed_on_four_band_demo_scenes(monkeypatch, tmp_path):
    from deeplab import create_model, save_model
    from deeplab.imageio import read_bands

    torch.manual_seed(0)
    model = create_model("deeplabv3_mobilenetv2", num_classes=3, in_channels=4).eval()
    save_model(model, tmp_path / "four.pt")
    seen = []

    def paths(name, model, *args, **kwargs):
        _fake_paths(name, model, *args, **kwargs)
        return {"eager fp32": model, "fast fp32": lambda x: seen.append(x) or model(x)}

    monkeypatch.setattr(benchmark, "build_paths", paths)
    result = run_benchmark(["ignored"], size=33, runs=1, warmup=0, checkpoint=tmp_path / "four.pt")
    assert seen[0].shape == (1, 4, 33, 33) and torch.equal(seen[0], benchmark.demo_batch(model.spec, 33, 1))
    assert "1x4x33x33 (batch 1)" in format_report(result).splitlines()[1]
    scene = seen[0][0] * torch.tensor(model.spec.std).view(4, 1, 1) + torch.tensor(model.spec.mean).view(4, 1, 1)
    assert torch.allclose(scene[3], scene[0])  # R, G, B, then R again
    folder = benchmark._calibration_folder(tmp_path / "calibration", 33, count=2, channels=4)  # what int8 reads
    assert [read_bands(path, 4).shape for path in sorted(folder.iterdir())] == [(4, 33, 33)] * 2
    assert benchmark.demo_bands(torch.full((3, 2, 2), 9, dtype=torch.uint8), 1).shape == (1, 2, 2)
