"""Resume is exact wherever the run is stopped; signals, NaN losses and failing evaluations lose no training."""

import multiprocessing
import os
import signal

import pytest
import torch

from deeplab.cli import main
from deeplab.config import load_config
from deeplab.engine import train as train_module
from deeplab.engine.train import train
from deeplab.modelfile import read_checkpoint

# 6 images and a batch of 2: an epoch is 3 steps. Evaluations at steps 2, 4, 6 and 7. Dropout stays on
# (the default 0.1), so the model's own random stream is exercised as well as the augmentation's.
EXACT = ("train.iterations=7", "train.eval_every=2", "data.num_images=6")


def _stop_at(step: int, signum: int = signal.SIGTERM, *, workers_too: bool = False):
    """A hook that sends a real signal to this process after ``step`` (the run stops after the next one), and
    to its loader workers too if asked, as SLURM and systemd signal every process of a job."""

    def hook(info):
        if info.step == step:
            for worker in multiprocessing.active_children() if workers_too else []:
                os.kill(worker.pid, signum)
            signal.raise_signal(signum)

    return hook


def _assert_same_weights(a, b):
    wa, wb = read_checkpoint(a / "last.pt").raw["model"], read_checkpoint(b / "last.pt").raw["model"]
    assert wa.keys() == wb.keys()
    for key, value in wa.items():
        assert torch.equal(value, wb[key]), key


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    from .conftest import TINY

    run = tmp_path_factory.mktemp("straight")
    assert main(["train", "--set", *TINY, *EXACT, f"train.run_dir={run}"]) == 0
    return run


@pytest.mark.parametrize(("hook_step", "stopped_at", "workers", "signum", "workers_too"), [
    (1, 2, 0, signal.SIGTERM, False),  # mid-epoch, and the step's evaluation ran before the stop
    (2, 3, 0, signal.SIGINT, False),  # at an epoch's end, right after an evaluation (step 2)
    (4, 5, 0, signal.SIGTERM, False),  # mid-epoch, one step after an evaluation
    (4, 5, 2, signal.SIGTERM, False),  # the same with loader worker processes
    (4, 5, 2, signal.SIGTERM, True),  # the signal reaches the loader workers too: they must not die of it
    (4, 5, 2, signal.SIGINT, True),  # Ctrl-C in a terminal reaches every process of the job
], ids=["mid-epoch-at-eval", "epoch-end-after-eval", "mid-epoch", "mid-epoch-workers", "workers-signalled-too",
        "workers-ctrl-c-too"])
def test_stopped_by_a_signal_and_resumed_equals_uninterrupted(straight, tiny, tmp_path, hook_step, stopped_at,
                                                             workers, signum, workers_too):
    config = load_config(None, tiny(*EXACT, f"data.num_workers={workers}"))
    first = train(config, on_step_end=_stop_at(hook_step, signum, workers_too=workers_too))
    assert first.interrupted and first.stop_signal == signal.Signals(signum).name and first.step == stopped_at
    assert read_checkpoint(tmp_path / "run" / "last.pt").step == stopped_at
    assert main(["train", "--resume", "--set", *tiny(*EXACT, f"data.num_workers={workers}")]) == 0
    _assert_same_weights(straight, tmp_path / "run")


def test_the_cli_exit_code_names_the_signal(tiny, tmp_path, monkeypatch, capsys):
    calls = []
    real_train = train_module.train

    def train_then_interrupt(config, resume=False):
        calls.append(resume)
        return real_train(config, resume=resume, on_step_end=_stop_at(1))

    monkeypatch.setattr(train_module, "train", train_then_interrupt)
    assert main(["train", "--set", *tiny("train.eval_every=100")]) == 128 + signal.SIGTERM
    out = capsys.readouterr().out
    assert "SIGTERM received by 1 of 1 process(es): saved" in out and "at step 2; continue with --resume" in out
    assert "interrupted at step 2; no evaluation yet; checkpoints in" in out and calls == [False]
    assert "mIoU -1" not in out  # no evaluation ran: no best mIoU to report


def test_resume_without_checkpoint_is_a_clear_error(tiny, tmp_path, capsys):
    assert main(["train", "--resume", "--set", *tiny(run="never")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    original = train_module.build_loss
    calls = {"n": 0}

    def poisoned_loss(*args, **kwargs):
        loss_fn = original(*args, **kwargs)

        def poisoned(*args, **kwargs):
            calls["n"] += 1
            loss = loss_fn(*args, **kwargs)
            return loss * float("nan") if calls["n"] == 3 else loss

        poisoned.describe = loss_fn.describe
        poisoned.class_weights = loss_fn.class_weights
        return poisoned

    monkeypatch.setattr(train_module, "build_loss", poisoned_loss)
    assert main(["train", "--set", *tiny()]) == 2
    assert "loss became nan at step 3" in capsys.readouterr().err
    kept = read_checkpoint(tmp_path / "run" / "last.pt")
    assert kept.step == 2 and all(torch.isfinite(v).all() for v in kept.raw["model"].values() if v.is_floating_point())


def test_last_checkpoint_is_written_before_evaluating(tiny, tmp_path, monkeypatch, capsys):
    def failing_evaluate(*args, **kwargs):
        raise OSError("val image unreadable")

    monkeypatch.setattr(train_module, "evaluate", failing_evaluate)
    assert main(["train", "--set", *tiny()]) == 2
    assert "val image unreadable" in capsys.readouterr().err
    assert read_checkpoint(tmp_path / "run" / "last.pt").step == 2  # step 2's training is kept
    assert not (tmp_path / "run" / "best.pt").exists()


def test_best_miou_survives_a_resume_from_a_checkpoint_written_before_its_evaluation(tiny, tmp_path):
    assert main(["train", "--set", *tiny("train.iterations=2", "train.eval_every=2")]) == 0
    best = read_checkpoint(tmp_path / "run" / "best.pt").best_miou
    assert read_checkpoint(tmp_path / "run" / "last.pt").best_miou == -1.0  # written before step 2's evaluation
    seen = []
    train(load_config(None, tiny("train.iterations=3", "train.eval_every=100")), resume=True,
          on_step_end=lambda info: seen.append(info.best_miou))
    assert seen[0] == best >= 0  # not -1: a worse later evaluation cannot replace best.pt


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    from deeplab import create_model
    from deeplab.config import Config
    from deeplab.engine.checkpoint import save_checkpoint

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
