"""The deploy benchmark's report: ratios against the right baselines, targets judged, skips said."""

import pytest

from deeplab.cli import main
from deeplab.deploy.benchmark import BenchmarkResult, Timing, format_report


def _result() -> BenchmarkResult:
    rows = [Timing("deeplabv3_resnet101", "eager fp32", [2.0, 2.2, 1.8]),
            Timing("deeplabv3_resnet101", "fast fp32", [1.5, 1.6, 1.4], peak_mb=612.4),
            Timing("deeplabv3_resnet101", "ONNX Runtime int8", [0.6, 0.5, 0.4]),
            Timing("deeplabv3_resnet101", "torchvision eager", [2.0, 2.1, 1.9]),
            Timing("deeplabv3plus_mobilenetv2", "eager fp32", [0.4, 0.4, 0.4]),
            Timing("deeplabv3plus_mobilenetv2", "ONNX Runtime int8", [0.1, 0.1, 0.1])]
    return BenchmarkResult(size=513, batch=1, runs=3, threads=2, timings=rows, skipped=["x: bf16 not measured"])


def test_report_gives_speed_ups_against_the_same_models_eager_run_and_judges_the_targets():
    report = format_report(_result())
    assert "| deeplabv3_resnet101 | fast fp32 | 1.500 | 1.400 | 1.33x | 612 |" in report
    assert "| deeplabv3plus_mobilenetv2 | ONNX Runtime int8 | 0.100 | 0.100 | 4.00x |  |" in report
    assert "target: fast fp32" not in report  # the peer target is benchmarks/peers.py's (tests/benchmarks)
    assert "int8 >= 4x plain eager fp32 (deeplabv3_resnet101): 4.00x [met]" in report
    assert "skipped: x: bf16 not measured" in report


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_benchmark_command_runs_every_path_of_a_small_model(capsys):
    pytest.importorskip("onnxruntime")
    assert main(["benchmark", "--models", "deeplabv3_mobilenetv2", "--size", "65", "--runs", "1", "--warmup", "0",
                 "--no-memory", "--no-peers"]) == 0
    out = capsys.readouterr().out
    for path in ("eager fp32", "fast fp32", "TorchScript fp32", "ONNX Runtime fp32", "ONNX Runtime int8"):
        assert f"| deeplabv3_mobilenetv2 | {path} |" in out
    assert "int8 >= 4x plain eager fp32 (deeplabv3_mobilenetv2)" in out
