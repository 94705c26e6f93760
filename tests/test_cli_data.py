"""``deeplab data prepare`` and ``deeplab data check`` (deeplab/cli_data.py): wiring, reports, exit statuses."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from deeplab.cli import main
from deeplab.cli_data import add_data_commands, run_check, run_prepare
from deeplab.data import prepare as prep
from deeplab.data._standard import DatasetNotFoundError
from tests.data import layouts as L


@pytest.fixture
def damaged_voc(tmp_path: Path) -> Path:
    return L.make_damaged_voc(tmp_path)


def test_cityscapes_prepare_prints_instructions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_prepare("cityscapes", tmp_path) == 0
    out = capsys.readouterr().out
    for text in ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip", prep.CITYSCAPES_URL,
                 f"Unpack both into {tmp_path}", "train: missing"):  # fmt: skip
        assert text in out
    L.make_cityscapes(tmp_path)
    run_prepare("cityscapes", tmp_path)
    out = capsys.readouterr().out
    assert "train: 3 images, 0 without a gtFine_labelIds.png" in out and "val: 2 images" in out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deeplab")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_check_exit_codes(damaged_voc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "check", "--dataset", "voc", "--root", str(damaged_voc), "--split", "val"]
    args = _parser().parse_args(argv)
    assert args.func(args) == 1
    assert "size mismatch" in capsys.readouterr().out
    assert run_check("voc", damaged_voc, "train", progress=False) == 0
    out = capsys.readouterr().out
    assert "train" in out and "no problems found" in out
    assert run_check("voc", damaged_voc, progress=False) == 1  # all splits: train, val, trainval
    out = capsys.readouterr().out
    assert all(split in out for split in ("train", "val", "trainval"))


def test_cli_prepare_wiring(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["data", "prepare", "voc", "--root", str(tmp_path), "--no-download"])
    assert (args.name, args.root, args.no_download) == ("voc", tmp_path, True)
    with pytest.raises(DatasetNotFoundError, match="VOCtrainval_11-May-2012.tar"):
        args.func(args)  # bad input raises; cli.main turns it into one line and status 2
    assert main(["data", "prepare", "voc", "--root", str(tmp_path), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: PASCAL VOC 2012 not found") and "VOCtrainval_11-May-2012.tar" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(SystemExit):
        _parser().parse_args(["data", "prepare", "coco", "--root", "x"])


def test_cli_check_from_a_run_config(damaged_voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"data:\n  name: voc\n  root: {damaged_voc}\n  train_split: train\n  val_split: val\n")
    args = _parser().parse_args(["data", "check", "--config", str(config)])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "train" in out and "val" in out and "2007_000042" in out and "out of range" in out
    assert main(["data", "check"]) == 2
    assert capsys.readouterr().err == "error: give --config FILE, or --dataset NAME and --root DIR\n"


@pytest.mark.parametrize("argv", [
    ["--dataset", "voc", "--root", "{tmp}/absent"],
    ["--dataset", "folder", "--root", "{tmp}/absent"],
    ["--config", "{tmp}/absent.yaml"],
])
def test_cli_data_commands_exit_2_on_bad_input_like_the_rest_of_the_cli(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Status 1 means "bad samples found"; input that cannot be read at all is status 2, as for every command."""
    assert main(["data", "check", *(a.format(tmp=tmp_path) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "absent" in err and "Traceback" not in err


def _bad_folder(root: Path) -> Path:
    """Your own folder (images/ + masks/, classes.txt, splits/): a truncated image in train, an image
    without a mask and a stray label 7 in val."""
    for i in range(7):
        L.write_jpg(root / "images" / f"s{i}.jpg", i)
        L.write_gray_png(root / "masks" / f"s{i}.png", L.object_mask(1 + i % 2, border=False))
    (root / "classes.txt").write_text("background\nthing\nother\n")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("s0\ns1\ns2\ns3\n")
    (root / "splits" / "val.txt").write_text("s4\ns5\ns6\n")
    image = root / "images" / "s2.jpg"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    L.write_gray_png(root / "masks" / "s4.png", L.object_mask(7, border=False))
    (root / "masks" / "s5.png").unlink()
    return root


def _full_parser() -> argparse.ArgumentParser:
    from deeplab.cli import build_parser

    return build_parser()


def _rows(text: str, first: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.split()[:1] == [first]]


def test_cli_checks_your_own_folder_in_three_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _bad_folder(tmp_path / "mydata")
    args = _full_parser().parse_args(["data", "check", "--dataset", "folder", "--root", str(root)])
    assert args.func(args) == 1
    captured = capsys.readouterr()
    out = captured.out
    assert "skipping" not in captured.err, "the bad samples belong in the report, not in warnings"
    assert _rows(out, "split")[0] == ["split", "images", "problems"]
    assert _rows(out, "train")[0] == ["train", "4", "1"] and _rows(out, "val")[0] == ["val", "3", "2"]
    assert [row[:2] for row in _rows(out, "id")] == [["id", "class"]]
    assert "thing" in out and "(ignore)" in out
    problems = {tuple(row[1:3]) for row in _rows(out, "train") + _rows(out, "val") if len(row) > 3}
    assert problems == {("s2", "unreadable"), ("s4", "out"), ("s5", "missing")}
    assert "images/s2.jpg: unreadable image (truncated file" in out
    assert "masks/s4.png: label values 7 are neither class ids (0..2)" in out
    assert "images/s5.jpg: image without mask (expected masks/s5.png)" in out
    assert "no problems found" not in out
    assert "training stops at start on these 3 sample(s)" in out

    args = _full_parser().parse_args(["data", "check", "--dataset", "folder", "--root", str(root), "--split", "train"])
    assert args.func(args) == 1
    assert _rows(capsys.readouterr().out, "train")[0] == ["train", "4", "1"]


def test_cli_check_of_a_skip_bad_config_reports_what_training_skips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _bad_folder(tmp_path / "mydata")
    config = tmp_path / "run.yaml"
    for skip_bad in ("true", "false"):
        config.write_text(f"data:\n  name: folder\n  root: {root}\n  skip_bad: {skip_bad}\n")
        args = _full_parser().parse_args(["data", "check", "--config", str(config)])
        assert args.func(args) == 1
        captured = capsys.readouterr()
        assert "warning" not in captured.err and "skipping" not in captured.err
        assert _rows(captured.out, "train")[0] == ["train", "4", "1"]
        assert _rows(captured.out, "val")[0] == ["val", "3", "2"]
        assert "no problems found" not in captured.out and "s5" in captured.out
        expected = ("data.skip_bad=true: training leaves these 3 sample(s) out" if skip_bad == "true"
                    else "training stops at start on these 3 sample(s)")
        assert expected in captured.out


def test_cli_check_of_a_clean_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "mydata"
    for i in range(5):
        L.write_png_rgb(root / "images" / f"s{i}.png", i)
        L.write_gray_png(root / "masks" / f"s{i}.png", L.object_mask(1, border=False))
    assert run_check("folder", root, progress=False) == 0
    out = capsys.readouterr().out
    assert _rows(out, "train")[0] == ["train", "4", "0"] and _rows(out, "val")[0] == ["val", "1", "0"]
    assert "no problems found" in out and "training stops" not in out


@pytest.mark.parametrize(("options", "verdict"), [
    ("", "training stops at start on these 3 sample(s) (data.skip_bad=true leaves them out)"),
    ("  skip_bad: true\n", "data.skip_bad=true: training leaves these 3 sample(s) out, with a warning each"),
    ("  verify: false\n", "data.verify=false: training does not check these 3 sample(s) at start"),
])
def test_cli_check_of_a_config_says_what_training_does_with_the_bad_samples(
    damaged_voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: str, verdict: str
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"data:\n  name: voc\n  root: {damaged_voc}\n{options}")
    args = _parser().parse_args(["data", "check", "--config", str(config)])
    assert args.func(args) == 1
    assert capsys.readouterr().out.rstrip().endswith(verdict)
