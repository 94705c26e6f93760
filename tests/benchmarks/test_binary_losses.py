"""benchmarks/binary_losses.py runs end to end on a tiny budget and prints its table."""

import json

import pytest

from tests.fixtures import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("binary_losses")


def test_tiny_run_prints_the_table(bench, tmp_path, capsys):
    out = tmp_path / "binary.json"
    argv = ["--losses", "ce", "ce+dice", "--iterations", "2", "--batch-size", "2", "--image-size", "33",
            "--num-images", "2", "--val-images", "2", "--foreground", "square", "--json", str(out)]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "foreground: square; deeplabv3_mobilenetv2, 2 iterations" in text
    assert "| loss | foreground IoU % | Dice/F1 % | precision % | recall % |" in text
    assert "| ce (= bce on the one logit) |" in text and "| ce+dice |" in text
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"ce", "ce+dice"} and all(0 <= run["miou"] <= 1 for run in results["ce"])


def test_a_bad_loss_fails_before_training(bench):
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        bench.main(["--losses", "ce", "hinge"])
