"""Resume equivalence, signals, NaN losses: checkpoints survive and runs continue exactly."""

import signal

import pytest
import torch

from deeplab.cli import main
from deeplab.engine import train as train_module
from deeplab.engine.checkpoint import read_checkpoint


def _interrupt_at(monkeypatch, step_to_stop: int, signum: int) -> None:
    """Delivers a real signal to this process right after the given step's update."""
    original = train_module._train_step

    def step_then_signal(model, optimizer, batch, cfg, device, step):
        loss = original(model, optimizer, batch, cfg, device, step)
        if step + 1 == step_to_stop:
            signal.raise_signal(signum)
        return loss

    monkeypatch.setattr(train_module, "_train_step", step_then_signal)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_resume_equals_uninterrupted(tiny, tmp_path, monkeypatch, signum, capsys):
    assert main(["train", "--set", *tiny(run="straight")]) == 0
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 2, signum)
        assert main(["train", "--set", *tiny("train.eval_every=100", run="resumed")]) == 130
    assert read_checkpoint(tmp_path / "resumed" / "last.pt").step == 2
    assert main(["train", "--resume", "--set", *tiny("train.eval_every=100", run="resumed")]) == 0
    straight = read_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = read_checkpoint(tmp_path / "resumed" / "last.pt")
    assert resumed.step == straight.step == 4
    for key, value in straight.raw["model"].items():
        assert torch.equal(value, resumed.raw["model"][key]), key


def test_resume_without_checkpoint_is_a_clear_error(tiny, tmp_path, capsys):
    assert main(["train", "--resume", "--set", *tiny(run="never")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    original = train_module.segmentation_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(train_module, "segmentation_loss", poisoned)
    assert main(["train", "--set", *tiny()]) == 2
    assert "loss became nan at step 3" in capsys.readouterr().err
    kept = read_checkpoint(tmp_path / "run" / "last.pt")
    assert kept.step == 2 and all(torch.isfinite(v).all() for v in kept.raw["model"].values() if v.is_floating_point())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    from deeplab.config import Config
    from deeplab.engine.checkpoint import save_checkpoint
    from deeplab.models import create_model

    model = create_model("deeplabv3_mobilenetv2", num_classes=2)
    path = tmp_path / "last.pt"
    save_checkpoint(path, model=model, optimizer=None, step=1, best_miou=0.5, config=Config(), classes=["a", "b"],
                    palette=[(0, 0, 0), (1, 1, 1)])
    before = path.read_bytes()

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, optimizer=None, step=2, best_miou=0.6, config=Config(),
                        classes=["a", "b"], palette=[(0, 0, 0), (1, 1, 1)])
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


def test_foreign_pickles_are_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": "deeplab-checkpoint-1", "x": Evil()}))
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "evil.pt")
