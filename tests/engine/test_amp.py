"""Mixed precision through torch.autocast, and fp16's gradient scaler (saved, restored, in the step)."""

import signal

import pytest
import torch

from deeplab import create_model
from deeplab.cli import main
from deeplab.config import load_config
from deeplab.engine import dist
from deeplab.engine.train import TrainingModule, autocast_for, grad_scaler, train, train_step
from deeplab.losses import build_loss
from deeplab.modelfile import read_checkpoint


def test_bf16_autocast_trains_on_cpu(tiny, tmp_path):
    assert main(["train", "--set", *tiny("train.amp=bf16", "train.iterations=2")]) == 0
    checkpoint = read_checkpoint(tmp_path / "run" / "last.pt")
    weights = checkpoint.raw["model"]
    assert weights["head.classifier.weight"].dtype == torch.float32  # master weights stay fp32
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert checkpoint.raw["grad_scaler"] == {}  # bf16 needs no scaler: a disabled one has no state


def test_autocast_really_lowers_precision_on_cpu():
    for amp, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast_for(amp, torch.device("cpu")):
            y = torch.nn.functional.conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3))
        assert y.dtype == dtype


def test_unknown_amp_mode_is_clear(tiny, capsys):
    assert main(["train", "--set", *tiny("train.amp=fp8")]) == 2
    assert "train.amp='fp8'; valid choices: off, bf16, fp16" in capsys.readouterr().err


def _one_step(scaler):
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=3, dropout=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images, masks = torch.randn(2, 3, 33, 33), torch.randint(0, 3, (2, 33, 33))
    cfg = load_config(None, ["train.aux_weight=0.4"])
    train_step(TrainingModule(model), optimizer, scaler, images, masks, cfg, dist.DistEnv(), build_loss("ce"))
    return model.state_dict()


def test_the_step_scales_the_loss_and_unscales_the_gradients():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1)
    scaled, plain = _one_step(scaler), _one_step(grad_scaler("off", torch.device("cpu")))
    assert scaler.get_scale() == 2.0**13  # one good step: the scale grew, so the step went through the scaler
    for key, value in plain.items():  # power-of-two scaling is exact: the same update as without it
        assert torch.equal(value, scaled[key]), key


def test_fp16_resume_restores_the_scaler_and_equals_the_uninterrupted_run(tiny, tmp_path):
    assert grad_scaler("fp16", torch.device("cpu")).is_enabled()
    assert not grad_scaler("bf16", torch.device("cpu")).is_enabled()
    fp16 = ("train.amp=fp16", "train.eval_every=100", "train.iterations=3")
    assert main(["train", "--set", *tiny(*fp16, run="straight")]) == 0

    def stop_after_one(info):
        if info.step == 1:
            signal.raise_signal(signal.SIGTERM)

    assert train(load_config(None, tiny(*fp16)), on_step_end=stop_after_one).step == 2
    assert set(read_checkpoint(tmp_path / "run" / "last.pt").raw["grad_scaler"]) >= {"scale", "_growth_tracker"}
    assert main(["train", "--resume", "--set", *tiny(*fp16)]) == 0
    straight, resumed = (read_checkpoint(tmp_path / r / "last.pt").raw for r in ("straight", "run"))
    # A fresh scaler after the resume would differ: its scale (after skipped steps) or its count of good steps.
    assert resumed["grad_scaler"] == straight["grad_scaler"]
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


@pytest.mark.parametrize("flag", ["train.channels_last=true"])
def test_channels_last_trains(tiny, tmp_path, flag):
    assert main(["train", "--set", *tiny(flag, "train.iterations=2")]) == 0
    assert read_checkpoint(tmp_path / "run" / "last.pt").step == 2
