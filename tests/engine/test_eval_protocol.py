"""How evaluations during training measure mIoU (and so pick best.pt): stated, and as configured."""

import json

from deeplab.cli import main
from deeplab.modelfile import read_checkpoint


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_the_default_protocol_is_fast_and_stated(tiny, tmp_path, capsys):
    assert main(["train", "--set", *tiny("train.iterations=2")]) == 0
    out = capsys.readouterr().out
    assert ("best.pt: the highest val mIoU every 2 steps at output stride 16, scales [1.0], flip off "
            "(train.eval_protocol=fast)") in out
    assert _log(tmp_path / "run")[0]["eval_protocol"] == {"name": "fast", "output_stride": 16, "scales": [1.0],
                                                          "flip": False, "window": None}


def test_eval_protocol_applies_the_eval_section_and_matches_deeplab_eval(tiny, tmp_path, capsys):
    settings = ("train.eval_protocol=eval", "eval.output_stride=8", "eval.scales=[0.75, 1.0]", "eval.flip=true",
                "train.iterations=2")
    assert main(["train", "--set", *tiny(*settings)]) == 0
    assert "at output stride 8, scales [0.75, 1.0], flip on (train.eval_protocol=eval)" in capsys.readouterr().out
    run = tmp_path / "run"
    during = [r for r in _log(run) if "miou" in r][-1]
    assert read_checkpoint(run / "last.pt").step == during["step"] == 2
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--json", str(tmp_path / "m.json")]) == 0
    alone = json.loads((tmp_path / "m.json").read_text())  # eval.* came with the checkpoint's config
    assert (during["miou"], during["pixel_accuracy"]) == (alone["miou"], alone["pixel_accuracy"])


def test_unknown_protocol_is_a_clear_error(tiny, capsys):
    assert main(["train", "--set", *tiny("train.eval_protocol=best")]) == 2
    assert "train.eval_protocol='best'; valid choices: fast, eval" in capsys.readouterr().err
