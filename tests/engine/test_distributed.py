"""Several processes train as one: torchrun + DistributedDataParallel + SyncBN on CPU (gloo).

Every run here goes through the user's entry point, ``python -m torch.distributed.run ... -m deeplab train``.
"""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from deeplab.cli import main
from deeplab.config import load_config
from deeplab.data import DemoDataset
from deeplab.engine.train import train
from deeplab.modelfile import read_checkpoint

from .launch import free_port, process_env, run_processes, torchrun_command, worker_pids

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")

# v3+ MobileNetV2 (BatchNorm everywhere: SyncBN across processes), no dropout, 5 images per split, so that
# the 4-image global batch straddles epochs and the 5 val images split 3 + 2. The backbone is held still
# (lr mult 0): at random init MobileNetV2's BatchNorms on 5 x 5 maps amplify rounding so much that ONE
# process with 1 or with 2 threads ends 0.2 apart (a running variance) after 4 steps at lr 0.01. Held
# still, rounding stays below 3e-5, while any real difference (loss normalised per process, BatchNorm
# over half the batch, a wrong slice of the batch) moves the head's weights and statistics far more.
EQUAL = ["model.name=deeplabv3plus_mobilenetv2", "model.dropout=0", "data.name=demo", "data.image_size=65",
         "data.num_images=5", "data.crop_size=65", "data.num_workers=0", "train.batch_size=4",
         "train.iterations=4", "train.eval_every=2", "train.log_every=1", "train.lr=0.002",
         "train.backbone_lr_mult=0", "train.progress=false",
         # pixel terms with class weights (each process divides by the global labelled pixels) and dice (its
         # per-class counts summed over the processes with gradients): the global batch's loss either way
         "train.loss=[{name: ce}, {name: focal, gamma: 2}, {name: dice, weight: 0.5}]", "train.class_weights=auto"]


def _weights(run_dir):
    return read_checkpoint(run_dir / "last.pt").raw["model"]


def _max_difference(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _check(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run = tmp_path_factory.mktemp("single")
    assert main(["train", "--set", *EQUAL, f"train.run_dir={run}"]) == 0
    return run


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    run = tmp_path_factory.mktemp("pair")
    result = _check(run_processes(torchrun_command("-m", "deeplab", "train", "--set", *EQUAL,
                                                   f"train.run_dir={run}")))
    return run, result.stdout


def test_two_processes_train_like_one(single, pair):
    run, stdout = pair
    assert _max_difference(_weights(single), _weights(run)) < 1e-4
    losses = [[r["loss"] for r in _log(d) if "loss" in r] for d in (single, run)]
    assert len(losses[1]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-5)  # the global batch's loss
    checkpoint = read_checkpoint(run / "last.pt")
    assert checkpoint.raw["world_size"] == 2 and read_checkpoint(single / "last.pt").raw["world_size"] == 1
    assert read_checkpoint(run / "best.pt").raw["world_size"] == 2
    # Rank 0 alone writes: each step logged once, one summary line.
    assert [r["step"] for r in _log(run) if "loss" in r] == [1, 2, 3, 4]
    assert stdout.count("finished at step 4") == 1
    assert "2 process(es), global batch 4 (2 per process)" in stdout


def test_distributed_evaluation_equals_single_process(pair, tmp_path):
    run, _ = pair
    during = [r for r in _log(run) if "miou" in r][-1]
    assert during["step"] == 4
    # The same checkpoint, the same protocol (training output stride, one scale), one process, one thread (as
    # each torchrun process).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["eval", "--checkpoint", str(run / "last.pt"), "--json", str(tmp_path / "m.json"), "--set",
                     "eval.output_stride=null"]) == 0
    finally:
        torch.set_num_threads(threads)
    alone = json.loads((tmp_path / "m.json").read_text())
    assert (during["miou"], during["pixel_accuracy"]) == (alone["miou"], alone["pixel_accuracy"])
    val = DemoDataset(split="val", image_size=65, num_images=5)
    assert during["val_pixels"] == sum(int((val.load(i)[1] != 255).sum()) for i in range(5))  # each image once


def test_resume_under_torchrun_with_another_world_size(single, tmp_path):
    run = tmp_path / "run"

    def stop_after_step_one(info):
        if info.step == 1:
            signal.raise_signal(signal.SIGTERM)

    first = train(load_config(None, [*EQUAL, f"train.run_dir={run}"]), on_step_end=stop_after_step_one)
    assert first.interrupted and first.step == 2 and read_checkpoint(run / "last.pt").raw["world_size"] == 1
    result = _check(run_processes(torchrun_command("-m", "deeplab", "train", "--resume", "--set", *EQUAL,
                                                   f"train.run_dir={run}")))
    assert "resuming from step 2 (saved by 1 process(es))" in result.stdout
    assert read_checkpoint(run / "last.pt").step == 4
    assert _max_difference(_weights(single), _weights(run)) < 1e-4


# The stops: SIGTERM and SIGINT, to torchrun (which forwards it to each training process's whole process group:
# loader workers too) and to one rank, with 0 and 2 loader workers; each stopped run is resumed and must end bit for
# bit where one uninterrupted run ends. Dropout is on (each process its own stream) and the whole network learns.
# Four runs cover every pair of the three choices (each signal to each target, each target and each signal with and
# without workers), as the eight of the full product would: the code paths differ by target, by signal and by
# workers, and none by all three at once. One of the four is resumed by torchrun's own restart, the others by
# --resume.
STOP = ["model.name=deeplabv3plus_mobilenetv2", "data.name=demo", "data.image_size=65", "data.num_images=4",
        "data.crop_size=65", "train.batch_size=4", "train.iterations=6", "train.eval_every=4", "train.log_every=1",
        "train.lr=0.01", "train.progress=false"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The stops' reference run: two torchrun launches (one process each) meeting through a c10d rendezvous on
    127.0.0.1, so that two nodes must also train bit for bit as two processes on one node do."""
    run = tmp_path_factory.mktemp("uninterrupted")
    launcher = ("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
                "--rdzv-id", "two-nodes-test")
    command = torchrun_command("-m", "deeplab", "train", "--set", *STOP, "data.num_workers=0",
                               f"train.run_dir={run}", nproc=1, launcher=launcher)
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=process_env()) for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (out, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, out[-2000:] + err[-4000:]
    return run, [out for out, _ in outputs]


def test_two_torchrun_launches_train_together(uninterrupted):
    run, stdouts = uninterrupted
    assert sorted(out.count("finished at step 6") for out in stdouts) == [0, 1]  # rank 0's node alone reports
    assert read_checkpoint(run / "last.pt").raw["world_size"] == 2 and read_checkpoint(run / "last.pt").step == 6
    assert [r["step"] for r in _log(run) if "loss" in r] == list(range(1, 7))
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "last.pt"]


def _interrupt(settings: list[str], run, target: str, signum: int,
               restarts: int = 0) -> tuple[subprocess.Popen, str, str]:
    """Starts a torchrun run (that torchrun restarts up to ``restarts`` times), signals ``target`` after step 2;
    returns the ended launcher and its output."""
    command = torchrun_command("--max-restarts", str(restarts), "-m", "deeplab", "train", "--set", *settings)
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=process_env())
    try:
        deadline = time.monotonic() + 240
        while not (run / "log.jsonl").is_file() or not any(r.get("step", 0) >= 2 for r in _log(run)):
            assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before the signal"
            time.sleep(0.05)
        if target == "torchrun":
            os.kill(launcher.pid, signum)
        else:
            pids = worker_pids(launcher.pid)
            if pids is None:
                pytest.skip("this system does not list a process's children in /proc")
            assert set(pids) == {0, 1}, pids
            os.kill(pids[1], signum)  # rank 1: it does not write checkpoints, rank 0 must learn of it
        out, err = launcher.communicate(timeout=240)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    return launcher, out, err


def _equal_to(run, uninterrupted) -> bool:
    ours, theirs = _weights(run), _weights(uninterrupted[0])
    return all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.parametrize(("target", "signum", "workers"), [
    ("torchrun", signal.SIGTERM, 2), ("torchrun", signal.SIGINT, 0), ("rank1", signal.SIGINT, 2)],
    ids=["torchrun-SIGTERM-2", "torchrun-SIGINT-0", "rank1-SIGINT-2"])
def test_a_stop_signal_saves_and_the_resumed_run_equals_the_uninterrupted_one(uninterrupted, tmp_path, target,
                                                                              signum, workers):
    run = tmp_path / "run"
    settings = [*STOP, f"data.num_workers={workers}", f"train.run_dir={run}"]
    launcher, out, err = _interrupt(settings, run, target, signum)
    saved = read_checkpoint(run / "last.pt").step
    name, stopped_by = signal.Signals(signum).name, "2 of 2" if target == "torchrun" else "1 of 2"
    assert f"{name} received by {stopped_by} process(es): saved {run / 'last.pt'} at step {saved}; continue " \
           "with --resume" in out, out + err[-3000:]
    best = "no evaluation yet" if saved < 4 else "best val mIoU 0."
    # Signalled alone, rank 1 may exit first, and torchrun then stops rank 0 before its last line.
    assert f"interrupted at step {saved}; {best}" in out or target == "rank1"
    assert "mIoU -1" not in out
    # deeplab prints no error and no traceback; torchrun reports the stop with one of its own (docs/distributed.md)
    assert "error:" not in err and "DataLoader worker" not in err and launcher.returncode == 1, err[-3000:]
    assert err.count("Traceback (most recent call last)") == 1
    if target == "torchrun":
        assert err.rstrip().endswith(f"SignalException: Process {launcher.pid} got signal: {signum}")
    else:
        assert "ChildFailedError" in err and f"exitcode  : {128 + signum} (pid: " in err
    resumed = _check(run_processes(torchrun_command("-m", "deeplab", "train", "--resume", "--set", *settings)))
    assert f"resuming from step {saved} (saved by 2 process(es))" in resumed.stdout
    equal = _equal_to(run, uninterrupted)
    print(f"stop matrix: {target} {name} workers={workers}: saved at step {saved}, resumed == uninterrupted: {equal}")
    assert equal


def test_sigterm_to_one_rank_stops_both_and_a_torchrun_restart_resumes_exactly(uninterrupted, tmp_path):
    """The fourth stop (rank 1, SIGTERM, no loader workers), resumed by torchrun's restart (--max-restarts 1)."""
    run = tmp_path / "run"
    launcher, out, err = _interrupt([*STOP, "data.num_workers=0", f"train.run_dir={run}"], run, "rank1",
                                    signal.SIGTERM, restarts=1)
    assert launcher.returncode == 0, out[-2000:] + err[-4000:]
    stop = next(line for line in out.splitlines() if "SIGTERM received" in line)
    assert stop.startswith(f"SIGTERM received by 1 of 2 process(es): saved {run / 'last.pt'} at step ")
    assert out.count("SIGTERM received") == 1 and "error:" not in err and "DataLoader worker" not in err
    stopped_at = int(stop.split("at step ")[1].split(";")[0])
    assert 2 <= stopped_at < 6 and f"resuming from step {stopped_at} (saved by 2 process(es))" in out
    assert out.count("finished at step 6") == 1 and read_checkpoint(run / "last.pt").step == 6
    assert _equal_to(run, uninterrupted)
