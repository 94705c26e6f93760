"""The deploy benchmark's report: ratios against the right baselines, targets judged, skips said."""

import importlib.util

import pytest
import torch

from deeplab.cli import main
from deeplab.deploy import benchmark
from deeplab.deploy.benchmark import BenchmarkResult, Timing, format_report, run_benchmark
from deeplab.deploy.precision import cpu_has_bf16, cpu_kind


def _result() -> BenchmarkResult:
    rows = [Timing("deeplabv3_resnet101", "eager fp32", [2.0, 2.2, 1.8]),
            Timing("deeplabv3_resnet101", "fast fp32", [1.5, 1.6, 1.4], peak_mb=612.4, agreement=0.99996),
            Timing("deeplabv3_resnet101", "ONNX Runtime int8", [0.6, 0.5, 0.4]),
            Timing("deeplabv3_resnet101", "torchvision eager", [2.0, 2.1, 1.9]),
            Timing("deeplabv3plus_mobilenetv2", "eager fp32", [0.4, 0.4, 0.4]),
            Timing("deeplabv3plus_mobilenetv2", "ONNX Runtime int8", [0.1, 0.1, 0.1])]
    return BenchmarkResult(size=513, batch=1, runs=3, threads=2, timings=rows, skipped=["x: bf16 not measured"],
                           cpu="CPU: Test CPU, 2 cores, 2 torch threads; AVX2 (no AMX); torch CPU capability AVX2")


def test_report_gives_speed_ups_against_the_same_models_eager_run_and_judges_the_targets():
    report = format_report(_result())
    assert report.splitlines()[0] == "CPU: Test CPU, 2 cores, 2 torch threads; AVX2 (no AMX); torch CPU capability AVX2"
    assert "| deeplabv3_resnet101 | fast fp32 | 1.500 | 1.400 | 1.33x | 100.00% | 612 |" in report
    assert "| deeplabv3plus_mobilenetv2 | ONNX Runtime int8 | 0.100 | 0.100 | 4.00x |  |  |" in report
    assert "target: fast fp32" not in report  # the peer target is benchmarks/peers.py's (tests/benchmarks)
    assert "int8 >= 4x plain eager fp32 (deeplabv3_resnet101): 4.00x [met]" in report
    assert "skipped: x: bf16 not measured" in report


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
    assert "| 1.00x | 100.00% |" in eager_row  # the reference agrees with itself; the others are measured too
    assert all(line.count("%") == 1 for line in out.splitlines() if line.startswith("| deeplabv3_mobilenetv2 |"))
    assert "int8 >= 4x plain eager fp32 (deeplabv3_mobilenetv2)" in out
    assert out.splitlines()[0] == err.splitlines()[0] == cpu_kind()
    for step in ("building", "export TorchScript fp32", "export ONNX Runtime fp32", "export ONNX Runtime int8",
                 "round 1/1", "choosing the default runtime"):
        assert f"deeplabv3_mobilenetv2: {step}" in err
    assert "5/5" in err  # build, three exports, one round


def _fake_paths(name, model, workdir, size, skipped, extra=None, bar=None):
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
    monkeypatch.setattr(benchmark, "_auto_path", lambda model: model)  # auto's 513 px probe is not the subject
    skipped = []
    paths = benchmark.build_paths("deeplabv3_mobilenetv2", benchmark.benchmark_model("deeplabv3_mobilenetv2"),
                                  tmp_path, 33, skipped)
    assert "ONNX Runtime fp32" in paths and not any("int8" in label for label in paths)
    assert not list(tmp_path.glob("*int8*"))
    assert "deeplabv3_mobilenetv2: int8 not measured (int8 needs a CPU with 8-bit integer multiply-add" in skipped[0]
    assert "deeplabv3_mobilenetv2: ONNX Runtime int8 not measured (deeplabv3_mobilenetv2.int8.onnx was not " \
           "exported)" in skipped
