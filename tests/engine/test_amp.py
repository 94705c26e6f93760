"""Mixed precision through torch.autocast: bf16 runs on CPU; fp16 is refused there with a clear error."""

import torch

from deeplab.cli import main
from deeplab.engine.checkpoint import read_checkpoint
from deeplab.engine.train import autocast_for


def test_bf16_autocast_trains_on_cpu(tiny, tmp_path):
    assert main(["train", "--set", *tiny("train.amp=bf16", "train.iterations=2")]) == 0
    weights = read_checkpoint(tmp_path / "run" / "last.pt").raw["model"]
    assert weights["head.classifier.weight"].dtype == torch.float32  # master weights stay fp32
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_autocast_really_lowers_precision_on_cpu():
    with autocast_for("bf16", torch.device("cpu")):
        y = torch.nn.functional.conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3))
    assert y.dtype == torch.bfloat16


def test_bad_amp_settings_are_clear(tiny, capsys):
    assert main(["train", "--set", *tiny("train.amp=fp16")]) == 2
    assert "train.amp=fp16 needs a CUDA device; use bf16 on CPU" in capsys.readouterr().err
    assert main(["train", "--set", *tiny("train.amp=fp8")]) == 2
    assert "train.amp='fp8'; valid choices: off, bf16, fp16" in capsys.readouterr().err
