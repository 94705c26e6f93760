"""How evaluations during training measure mIoU (and so pick best.pt): stated, and as configured.

Every pass of the network an evaluation runs is recorded (its input, and the size of the backbone's deepest
features), so a protocol whose scales, flip or output stride got lost on the way from the config to the
network fails here, whatever the (barely trained) model predicts.
"""

import json
import math

import pytest
import torch

from deeplab import inference as inference_module
from deeplab.cli import main
from deeplab.engine import evaluate as evaluate_module
from deeplab.engine import train as train_module
from deeplab.inference import Predictor
from deeplab.modelfile import read_checkpoint

SIDE = 65  # the tiny runs' image size (tests/engine/conftest.py)


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def passes(monkeypatch):
    """Each Predictor the evaluation builds records, per network pass, the input and the backbone's smallest
    feature side (one list per Predictor)."""
    predictors: list[list[dict]] = []

    class Recording(Predictor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runs: list[dict] = []
            predictors.append(runs)
            self.model.register_forward_pre_hook(lambda module, args: runs.append({"x": args[0].detach().clone()}))

            def deepest(module, args, output):
                runs[-1]["feature_side"] = min(t.shape[-1] for t in output.values())

            self.model.backbone.register_forward_hook(deepest)

    monkeypatch.setattr(evaluate_module, "Predictor", Recording)  # training's evaluation
    monkeypatch.setattr(inference_module, "Predictor", Recording)  # deeplab eval's (the CLI opens the model)
    monkeypatch.setattr(train_module, "Predictor", Predictor)  # the run's preview images are no evaluation
    return predictors


def _check_passes(runs: list[dict], *, images: int, scales: list[float], flip: bool, output_stride: int) -> None:
    """The passes of evaluating ``images`` val images (batch size 1) at these settings, as they must be."""
    assert len(runs) == images * len(scales) * (2 if flip else 1)
    sides = sorted({run["x"].shape[-1] for run in runs})
    assert sides == sorted(round(SIDE * s) for s in scales)
    for run in runs:
        assert run["feature_side"] == math.ceil(run["x"].shape[-1] / output_stride)
        mirrored = sum(torch.equal(run["x"].flip(-1), other["x"]) for other in runs)
        assert mirrored == (1 if flip else 0)  # with flip, each pass has its mirror image among the passes


def test_the_default_protocol_is_fast_and_stated(tiny, tmp_path, capsys, passes):
    assert main(["train", "--set", *tiny("train.iterations=2")]) == 0
    out = capsys.readouterr().out
    assert ("best.pt: the highest val mIoU every 2 steps at output stride 16, scales [1.0], flip off "
            "(train.eval_protocol=fast)") in out
    assert _log(tmp_path / "run")[0]["eval_protocol"] == {"name": "fast", "output_stride": 16, "scales": [1.0],
                                                          "flip": False, "window": None}
    assert len(passes) == 1  # one evaluation, at step 2
    _check_passes(passes[0], images=4, scales=[1.0], flip=False, output_stride=16)


def test_eval_protocol_applies_the_eval_section_and_matches_deeplab_eval(tiny, tmp_path, capsys, passes):
    settings = ("train.eval_protocol=eval", "eval.output_stride=8", "eval.scales=[0.75, 1.0]", "eval.flip=true",
                "train.iterations=2")
    assert main(["train", "--set", *tiny(*settings)]) == 0
    assert "at output stride 8, scales [0.75, 1.0], flip on (train.eval_protocol=eval)" in capsys.readouterr().out
    assert len(passes) == 1
    _check_passes(passes[0], images=4, scales=[0.75, 1.0], flip=True, output_stride=8)
    run = tmp_path / "run"
    during = [r for r in _log(run) if "miou" in r][-1]
    assert read_checkpoint(run / "last.pt").step == during["step"] == 2
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--json", str(tmp_path / "m.json")]) == 0
    assert len(passes) == 2  # eval.* came with the checkpoint's config: the very same passes
    _check_passes(passes[1], images=4, scales=[0.75, 1.0], flip=True, output_stride=8)
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(passes[0], passes[1], strict=True))
    alone = json.loads((tmp_path / "m.json").read_text())
    assert (during["miou"], during["pixel_accuracy"]) == (alone["miou"], alone["pixel_accuracy"])
    # deeplab eval says what it ran, before its table, and records it (issue 28: OS 8 of an OS-16 model, said)
    out = capsys.readouterr().out
    stated = ("protocol: output stride 8 (trained at 16), scales 0.75, 1, flip, no padding, torch fp32, "
              "numerics: PyTorch (align_corners=False)")
    assert stated in out and out.index(stated) < out.index("mIoU")
    assert alone["protocol"] == {"output_stride": 8, "trained_output_stride": 16, "scales": [0.75, 1.0], "flip": True,
                                 "pad_to": None, "window": None, "precision": "fp32", "runtime": "torch",
                                 "numerics": "pytorch"}


def test_unknown_protocol_is_a_clear_error(tiny, capsys):
    assert main(["train", "--set", *tiny("train.eval_protocol=best")]) == 2
    assert "train.eval_protocol='best'; valid choices: fast, eval" in capsys.readouterr().err
