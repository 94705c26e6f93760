"""train -> eval -> predict through the real CLI, on the demo set and on a folder dataset."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab.cli import main
from deeplab.modelfile import read_checkpoint


def test_demo_train_eval_predict(tiny, tmp_path, capsys):
    assert main(["train", "--set", *tiny()]) == 0
    run = tmp_path / "run"
    for name in ["best.pt", "last.pt", "config.yaml", "log.jsonl", "training_curve.png"]:
        assert (run / name).is_file(), name
    assert len(list((run / "previews").glob("*.png"))) == 4
    checkpoint = read_checkpoint(run / "last.pt")
    assert checkpoint.step == 4 and checkpoint.config.train.iterations == 4
    assert checkpoint.classes[0] == "background" and len(checkpoint.palette) == len(checkpoint.classes)

    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--json", str(tmp_path / "m.json"),
                 "--set", "model.output_stride=8", "eval.flip=true"]) == 0
    table = capsys.readouterr().out
    assert "mIoU" in table and "background" in table
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) >= {"miou", "pixel_accuracy", "per_class_iou", "mean_class_accuracy", "fw_iou"}
    assert set(metrics["per_class_iou"]) == set(checkpoint.classes) and 0 <= metrics["miou"] <= 1

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(images / f"img{i}.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    assert main(["predict", "--checkpoint", str(run / "best.pt"), str(images), "--out", str(tmp_path / "out")]) == 0
    index = Image.open(tmp_path / "out" / "img0.png")
    assert index.mode == "P" and index.size == (50, 40)
    assert (tmp_path / "out" / "img1_overlay.png").is_file() and (tmp_path / "out" / "img1_color.png").is_file()
    assert "broken.jpg" in capsys.readouterr().err


def _write_folder_dataset(root, count=6, size=40):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("sky 0 0 255\nground 0 255 0\nthing 255 0 0\n")
    rng = np.random.default_rng(0)
    for i in range(count):
        mask = np.zeros((size, size), np.uint8)
        mask[size // 2:] = 1
        mask[5:15, 5 + i:15 + i] = 2
        mask[0, :] = 255
        image = np.stack([mask * 80, 255 - mask * 60, rng.integers(0, 255, mask.shape)], -1).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"s{i}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")


def test_folder_dataset_train_eval_predict(tiny, tmp_path, capsys):
    root = tmp_path / "mydata"
    _write_folder_dataset(root)
    assert main(["train", "--set", *tiny("data.name=folder", f"data.root={root}", "data.crop_size=33",
                                         "train.iterations=2")]) == 0
    checkpoint = read_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint.classes == ["sky", "ground", "thing"] and checkpoint.palette[2] == (255, 0, 0)
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt")]) == 0
    assert "sky" in capsys.readouterr().out
    assert main(["predict", "--checkpoint", str(tmp_path / "run" / "last.pt"), str(root / "images" / "*.jpg"),
                 "--out", str(tmp_path / "pred"), "--areas"]) == 0
    assert len(list((tmp_path / "pred").glob("s?.png"))) == 6
    assert "sky" in (tmp_path / "pred" / "areas.csv").read_text().splitlines()[0]


def test_folder_dataset_errors_reach_the_user(tiny, tmp_path, capsys):
    root = tmp_path / "bad"
    _write_folder_dataset(root, count=3)
    (root / "masks" / "s1.png").unlink()
    assert main(["train", "--set", *tiny("data.name=folder", f"data.root={root}")]) == 2
    assert "s1" in capsys.readouterr().err


@pytest.mark.parametrize(("override", "message"), [
    ("train.iters=3", "unknown key 'train.iters'; valid keys in 'train': iterations"),
    ("train.iterations=many", "train.iterations: expected int, got 'many'"),
    ("model.name=deeplabv9", "unknown model 'deeplabv9'; valid choices"),
    ("data.name=nope", "unknown dataset 'nope'; valid choices: demo, folder, voc"),
])
def test_config_errors_are_clear(tiny, override, message, capsys):
    assert main(["train", "--set", *tiny(override)]) == 2
    assert message in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "deeplab.cli", "models"], capture_output=True, text=True,
                            check=True)
    assert "deeplabv3plus_xception65" in result.stdout and "params (M)" in result.stdout


def test_same_config_and_seed_give_the_same_loss_curve(tiny, tmp_path):
    for run in ("a", "b"):
        assert main(["train", "--set", *tiny("train.iterations=3", "train.log_every=1", run=run)]) == 0
    curves = [[json.loads(line).get("loss") for line in (tmp_path / r / "log.jsonl").read_text().splitlines()]
              for r in ("a", "b")]
    assert curves[0] == curves[1] and len([v for v in curves[0] if v is not None]) == 3
    assert torch.equal(read_checkpoint(tmp_path / "a" / "last.pt").raw["model"]["head.classifier.weight"],
                       read_checkpoint(tmp_path / "b" / "last.pt").raw["model"]["head.classifier.weight"])
