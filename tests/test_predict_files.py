"""Files to masks at scale: names decided on the whole input list, --resume, and torchrun sharding (gloo on CPU).

The torchrun runs go through the user's entry point, ``python -m torch.distributed.run ... -m deeplab predict``.
"""

import csv
import json
import shlex
import shutil
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deeplab import create_model
from deeplab.cli import main
from deeplab.config import Config, apply_overrides
from deeplab.data import DemoDataset
from deeplab.engine import evaluate
from deeplab.engine.checkpoint import save_checkpoint
from deeplab.inference import Predictor
from deeplab.predict_files import predict_paths
from tests.engine.launch import run_processes, torchrun_command
from tests.fixtures import with_random_statistics

needs_dist = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")


def _channel_predictor() -> Predictor:
    # identity model on a zero-mean, unit-std input: the class is the strongest colour channel
    return Predictor(nn.Identity(), num_classes=3, classes=["red", "green", "blue"],
                     palette=[(1, 1, 1), (2, 2, 2), (3, 3, 3)], mean=(0, 0, 0), std=(1, 1, 1))


def _random_image(path, seed, size=(5, 7)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _tree(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_an_unreadable_input_keeps_its_name_reserved(tmp_path):
    # The names are decided before any file is decoded (so that every process agrees on them).
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _random_image(tmp_path / "x.png", 0)
    report = predict_paths(_channel_predictor(), [tmp_path / "one" / "x.png", tmp_path / "x.png"], tmp_path / "out",
                           progress=False, workers=0)
    assert [path.name for path in report.written] == ["x_1.png"]
    assert [path.name for path, _ in report.failed] == ["x.png"] and report.processes == 1
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["x_1.png", "x_1_color.png",
                                                                          "x_1_overlay.png"]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_skips_complete_outputs_and_rebuilds_the_same_area_table(tmp_path, workers):
    for index in range(4):
        _random_image(tmp_path / f"im{index}.png", index)
    out = tmp_path / "out"
    first = predict_paths(_channel_predictor(), [tmp_path], out, area_table=True, progress=False, workers=workers)
    assert [path.name for path in first.written] == ["im0.png", "im1.png", "im2.png", "im3.png"]
    reference = _tree(out)
    (out / "im1_overlay.png").unlink()  # an interrupted image: redone
    (out / "im3.png").write_bytes((out / "im3.png").read_bytes()[:20])  # a truncated mask: redone
    Image.fromarray(np.full((5, 7), 9, np.uint8)).save(out / "im2.png")  # class 9: not this model's, redone
    (out / "areas.csv").unlink()
    untouched = (out / "im0_color.png").stat().st_mtime_ns
    again = predict_paths(_channel_predictor(), [tmp_path], out, area_table=True, progress=False, workers=workers,
                          resume=True)
    assert [path.name for path in again.written] == ["im1.png", "im2.png", "im3.png"]
    assert [path.name for path in again.resumed] == ["im0.png"] and again.failed == []
    assert _tree(out) == reference
    assert (out / "im0_color.png").stat().st_mtime_ns == untouched
    without = predict_paths(_channel_predictor(), [tmp_path], out, progress=False, workers=workers, resume=True)
    assert without.written == [] and len(without.resumed) == 4 and without.areas_csv is None


def test_negative_workers_is_a_clear_error(tmp_path):
    _random_image(tmp_path / "a.png", 0)
    with pytest.raises(ValueError, match="workers must be 0 or more, got -1"):
        predict_paths(_channel_predictor(), [tmp_path / "a.png"], tmp_path / "out", workers=-1)


# --- several processes: torchrun ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A checkpoint (demo classes, demo val split of 5 images at 65 px in its config) and 8 demo images of
    65-97 px in two folders, two stems in both, plus an unreadable file."""
    root = tmp_path_factory.mktemp("scene")
    torch.manual_seed(0)
    model = with_random_statistics(create_model("deeplabv3plus_mobilenetv2", num_classes=len(DemoDataset.classes)))
    config = apply_overrides(Config(), ["model.name=deeplabv3plus_mobilenetv2", "data.name=demo",
                                        "data.image_size=65", "data.num_images=5", "data.num_workers=0"])
    save_checkpoint(root / "ck.pt", model=model, optimizer=None, step=1, best_miou=0.0, config=config,
                    classes=list(DemoDataset.classes), palette=list(DemoDataset.palette))
    first, second = root / "first", root / "second"
    first.mkdir()
    second.mkdir()
    for index, size in enumerate((65, 81, 97, 65, 81, 97, 65, 81)):
        image = DemoDataset(split="val", image_size=size, num_images=8).load(index)[0]
        folder, name = (first, f"img{index}") if index < 5 else (second, f"img{index - 5}")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{name}.png")
    (first / "broken.png").write_bytes(b"not an image at all")
    inputs = [str(first), str(second / "*.png")]
    return root, inputs


def _predict_args(scene, out, *extra):
    root, inputs = scene
    return ["predict", "--checkpoint", str(root / "ck.pt"), *inputs, "--out", str(out), "--areas",
            "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def single(scene, tmp_path_factory):
    """One process, one thread (as each torchrun process here), so that the arithmetic is the same."""
    out = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_predict_args(scene, out, "--workers", "0")) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _check(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@needs_dist
def test_two_processes_write_each_mask_once_as_one_process_does(scene, single, tmp_path):
    out = tmp_path / "out"
    result = _check(run_processes(torchrun_command("-m", "deeplab", *_predict_args(scene, out))))
    expected = {f"{stem}{suffix}.png" for stem in ("img0", "img1", "img2", "img3", "img4", "img0_1", "img1_1",
                                                   "img2_1") for suffix in ("", "_color", "_overlay")}
    assert set(_tree(single)) == expected | {"areas.csv"}
    assert _tree(out) == _tree(single)  # byte for byte, areas.csv (one row per image, input order) included
    with open(out / "areas.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert [row[1] for row in rows[1:]] == ["img0.png", "img1.png", "img2.png", "img3.png", "img4.png",
                                            "img0_1.png", "img1_1.png", "img2_1.png"]
    # Every image predicted by exactly one process (the gathered count), said once, by rank 0.
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("wrote ")]
    assert line.startswith(f"wrote 8 prediction(s) to {out} in ") and line.endswith(" images/s over 2 processes)")
    (skipped,) = [line for line in result.stderr.splitlines() if "broken.png" in line]
    assert skipped.startswith(f"skipped {scene[1][0]}/broken.png: ")


@needs_dist
def test_two_processes_resume_what_one_process_left(scene, single, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(single, out)
    for name in ("img3.png", "img3_color.png", "img3_overlay.png", "img1_1_overlay.png", "areas.csv"):
        (out / name).unlink()
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    result = _check(run_processes(torchrun_command("-m", "deeplab", *_predict_args(scene, out, "--resume"))))
    assert "skipped 6 image(s) whose outputs exist (--resume)" in result.stdout
    assert f"wrote 2 prediction(s) to {out} in " in result.stdout
    assert _tree(out) == _tree(single)
    assert all(path.stat().st_mtime_ns == before[path.name] for path in out.iterdir() if path.name in before
               and not path.name.startswith("img1_1"))


FAILING_WORKER = """
import os
import sys
from deeplab import predict_files
from deeplab.cli import main


def full_disk(*args):
    raise OSError("No space left on device")


if os.environ["RANK"] == "1":  # rank 0 keeps going, then must learn of it instead of waiting
    predict_files._write_outputs = full_disk
sys.exit(main(sys.argv[1:]))
"""


@needs_dist
def test_a_process_that_fails_stops_the_others_instead_of_leaving_them_waiting(scene, tmp_path):
    (tmp_path / "worker.py").write_text(textwrap.dedent(FAILING_WORKER))
    result = run_processes(torchrun_command(str(tmp_path / "worker.py"), *_predict_args(scene, tmp_path / "out")),
                           timeout=120)
    assert result.returncode != 0
    assert "error: No space left on device" in result.stderr
    assert "error: process 1 failed: OSError: No space left on device" in result.stderr
    assert "wrote " not in result.stdout and not (tmp_path / "out" / "areas.csv").exists()


EVAL_WORKER = """
import sys
import torch
from deeplab.cli import main
from deeplab.engine import evaluate

plain = evaluate.evaluate_predictor


def recording(*args, **kwargs):
    metrics = plain(*args, **kwargs)
    torch.save(metrics["confusion_matrix"], sys.argv[1] + str(torch.distributed.get_rank()))
    return metrics


evaluate.evaluate_predictor = recording
sys.exit(main(sys.argv[2:]))
"""


@needs_dist
def test_two_processes_evaluate_like_one(scene, tmp_path, monkeypatch, capsys):
    root, _ = scene
    args = ["eval", "--checkpoint", str(root / "ck.pt"), "--set", "train.device=cpu"]
    (tmp_path / "worker.py").write_text(textwrap.dedent(EVAL_WORKER))
    result = _check(run_processes(torchrun_command(str(tmp_path / "worker.py"), str(tmp_path / "cm"), *args,
                                                   "--json", str(tmp_path / "two.json"))))
    recorded = {}
    plain = evaluate.evaluate_predictor

    def recording(*a, **k):
        recorded.update(plain(*a, **k))
        return recorded

    monkeypatch.setattr(evaluate, "evaluate_predictor", recording)
    assert main([*args, "--json", str(tmp_path / "one.json")]) == 0
    alone = capsys.readouterr().out
    both = [torch.load(tmp_path / f"cm{rank}") for rank in range(2)]
    assert both[0] == both[1] == recorded["confusion_matrix"]  # summed over the shards, on every process
    val = DemoDataset(split="val", image_size=65, num_images=5)
    assert sum(map(sum, recorded["confusion_matrix"])) == sum(int((val.load(i)[1] != 255).sum()) for i in range(5))
    assert (tmp_path / "two.json").read_text() == (tmp_path / "one.json").read_text()
    def table(stdout):
        return [line for line in stdout.splitlines() if not line.startswith(("evaluated ", "wrote "))]

    assert table(result.stdout) == table(alone) and len(table(alone)) > 3  # printed once, by rank 0
    assert "evaluated 5 image(s) in " in alone and result.stdout.count("evaluated 5 image(s) in ") == 1
    assert "images/s over 2 processes)" in result.stdout and "images/s over 1 process)" in alone


def test_the_demo_val_split_used_above_has_pixels_of_several_classes():
    # Otherwise the equal confusion matrices above would compare little.
    mask = torch.cat([DemoDataset(split="val", image_size=65, num_images=5).load(i)[1].flatten() for i in range(5)])
    assert len(torch.unique(mask)) >= 3



# --- stops: SIGINT / SIGTERM ------------------------------------------------------------------------------------


def _stop_line(stdout):
    (line,) = [line for line in stdout.splitlines() if " received by " in line]
    return line


def test_sigint_stops_one_process_after_its_image_and_resume_finishes_the_set(scene, single, tmp_path, monkeypatch,
                                                                              capsys):
    import signal

    from deeplab import predict_files

    out, plain, written = tmp_path / "out", predict_files._write_outputs, []

    def interrupted_after_two(*args):
        plain(*args)
        written.append(args[-1])
        if len(written) == 2:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C does: the image being written is finished first

    monkeypatch.setattr(predict_files, "_write_outputs", interrupted_after_two)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_predict_args(scene, out, "--workers", "0")) == 128 + signal.SIGINT
        stdout = capsys.readouterr().out
        line = _stop_line(stdout)
        assert line.startswith(f"SIGINT received by 1 of 1 process(es): 2 of 9 image(s) have their outputs in {out}; "
                               "continue with: deeplab predict --checkpoint ")
        assert line.endswith(" --resume") and "wrote " not in stdout and not (out / "areas.csv").exists()
        assert len(written) == 2 and len(list(out.iterdir())) == 6
        monkeypatch.setattr(predict_files, "_write_outputs", plain)
        assert main(shlex.split(line.split("continue with: deeplab ")[1])) == 0
    finally:
        torch.set_num_threads(threads)
    assert "skipped 2 image(s) whose outputs exist (--resume)" in capsys.readouterr().out
    assert _tree(out) == _tree(single)


STOPPED_WORKER = """
import os
import signal
import sys
import time
from deeplab import predict_files
from deeplab.cli import main

plain = predict_files._write_outputs


def slow(*args):
    plain(*args)
    if os.environ["RANK"] == "0" and not os.path.exists(sys.argv[1]):
        open(sys.argv[1], "w").close()
        os.kill(os.getppid(), signal.SIGINT)  # Ctrl-C to torchrun, which forwards it to every process
    time.sleep(0.3)  # an image takes this long: the signal comes before the last one


predict_files._write_outputs = slow
sys.exit(main(sys.argv[2:]))
"""


@needs_dist
def test_sigint_to_torchrun_stops_every_process_without_a_traceback_and_resume_finishes(scene, single, tmp_path):
    """Through deeplab-torchrun (torchrun's own launcher, run by deeplab.launch): plain torchrun would end the same
    run with the traceback of the signal it raises again once its workers have stopped."""
    out, worker = tmp_path / "out", tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(STOPPED_WORKER))
    result = run_processes(torchrun_command(str(worker), str(tmp_path / "signalled"), *_predict_args(scene, out),
                                            module="deeplab.launch"), timeout=120)
    line = _stop_line(result.stdout)
    done = sum(1 for path in out.glob("*_overlay.png"))
    assert line.startswith(f"SIGINT received by 2 of 2 process(es): {done} of 9 image(s) have their outputs in "
                           f"{out}; continue with: deeplab-torchrun --nproc-per-node 2 -m deeplab predict "), line
    assert 1 <= done < 8 and len(list(out.iterdir())) == 3 * done  # no areas.csv, no half-written image
    assert "Traceback" not in result.stderr and "[rank" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1] == ("deeplab-torchrun: stopped by SIGINT; the processes have said above "
                                              "what they kept") and result.returncode == 130
    command = shlex.split(line.split("continue with: ")[1])
    assert command[:5] == ["deeplab-torchrun", "--nproc-per-node", "2", "-m", "deeplab"] and command[-1] == "--resume"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # --resume on any number of processes: one here, in this process, to spare a launch
        assert main([*command[5:], "--workers", "0"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert _tree(out) == _tree(single)


def test_sigterm_stops_an_evaluation_with_one_line_and_resume_gives_the_whole_splits_metrics(
        scene, monkeypatch, capsys, tmp_path):
    import signal

    from deeplab.engine import evaluate as evaluate_module

    root, _ = scene
    monkeypatch.setenv("DEEPLAB_CACHE", str(tmp_path / "cache"))
    plain, calls = evaluate_module.task_confusion, []

    def terminated_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGTERM)
        return plain(*args, **kwargs)

    args = ["eval", "--checkpoint", str(root / "ck.pt"), "--set", "train.device=cpu"]
    assert main([*args, "--json", str(tmp_path / "whole.json")]) == 0  # the reference: once, uninterrupted
    monkeypatch.setattr(evaluate_module, "task_confusion", terminated_after_one)
    assert main([*args, "eval.batch_size=2", "--json", str(tmp_path / "resumed.json")]) == 128 + signal.SIGTERM
    stdout = capsys.readouterr().out
    assert _stop_line(stdout) == ("SIGTERM received by 1 of 1 process(es): stopped after 2 of 5 image(s); no metrics "
                                  f"from part of the split; continue with: deeplab eval --checkpoint {root / 'ck.pt'} "
                                  f"--set train.device=cpu eval.batch_size=2 --json {tmp_path / 'resumed.json'} "
                                  "--resume")
    assert "mIoU" not in stdout.split("SIGTERM received")[1] and len(calls) == 1  # one batch of two
    (saved,) = (tmp_path / "cache" / "eval_progress").iterdir()
    # a setting of speed alone (the batch size) may change: the saved progress still counts
    assert main([*args, "--json", str(tmp_path / "resumed.json"), "--resume"]) == 0
    assert len(calls) == 1 + 3 and f"resumed: 2 image(s) evaluated before ({saved})" in capsys.readouterr().out
    whole, resumed = (json.loads((tmp_path / name).read_text()) for name in ("whole.json", "resumed.json"))
    assert resumed == whole and not saved.exists()  # the whole split's metrics; the progress is gone


STOPPED_EVAL_WORKER = """
import os
import signal
import sys
from deeplab.cli import main
from deeplab.engine import evaluate

plain = evaluate.task_confusion


def terminated(*args, **kwargs):
    if os.environ["RANK"] == "0":  # after its first image: every process stops at the same batch
        signal.raise_signal(signal.SIGTERM)
    return plain(*args, **kwargs)


evaluate.task_confusion = terminated
sys.exit(main(sys.argv[1:]))
"""


RESUMING_WORKER = """
import os
import sys

if os.environ["RANK"] == "1":
    os.environ["DEEPLAB_CACHE"] = sys.argv[1]
from deeplab.cli import main

sys.exit(main(sys.argv[2:]))
"""


@needs_dist
def test_an_evaluation_stopped_under_torchrun_resumes_to_the_whole_splits_metrics(scene, tmp_path, monkeypatch):
    root, _ = scene
    monkeypatch.setenv("DEEPLAB_CACHE", str(tmp_path / "cache"))
    args = ["eval", "--checkpoint", str(root / "ck.pt"), "--set", "train.device=cpu", "--json"]
    assert main([*args, str(tmp_path / "whole.json")]) == 0
    (tmp_path / "worker.py").write_text(textwrap.dedent(STOPPED_EVAL_WORKER))
    result = run_processes(torchrun_command(str(tmp_path / "worker.py"), *args, str(tmp_path / "resumed.json")),
                           timeout=120)
    line = _stop_line(result.stdout)  # each of the 2 processes had evaluated its first image: 0 and 1
    assert line.startswith("SIGTERM received by 1 of 2 process(es): stopped after 2 of 5 image(s)"), line
    assert line.endswith(f"continue with: torchrun --nproc-per-node 2 -m deeplab eval --checkpoint {root / 'ck.pt'} "
                         f"--set train.device=cpu --json {tmp_path / 'resumed.json'} --resume"), line
    # resumed under torchrun again, process 1 as if on another node, whose cache lacks the saved progress
    (tmp_path / "resume.py").write_text(textwrap.dedent(RESUMING_WORKER))
    result = _check(run_processes(torchrun_command(str(tmp_path / "resume.py"), str(tmp_path / "other-node"), *args,
                                                   str(tmp_path / "resumed.json"), "--resume"), timeout=120))
    assert "resumed: 2 image(s) evaluated before" in result.stdout
    whole, resumed = (json.loads((tmp_path / name).read_text()) for name in ("whole.json", "resumed.json"))
    assert resumed == whole and not list((tmp_path / "cache" / "eval_progress").iterdir())
