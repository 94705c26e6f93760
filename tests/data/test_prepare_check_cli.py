"""``deeplab data prepare`` against file:// archives, ``data check`` reports, and the CLI wiring."""

from __future__ import annotations

import argparse
import hashlib
import inspect
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deeplab.data import prepare as prep
from deeplab.data._standard import DatasetNotFoundError
from deeplab.data.ade20k import ADE20KSegmentation
from deeplab.data.cli_data import add_data_commands, run_check, run_prepare
from deeplab.data.download import ChecksumError
from deeplab.data.registry_standard import DATASETS
from deeplab.data.voc import VOCAugSegmentation, VOCSegmentation

from . import layouts as L


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local 'server' with VOC, SBD and ADE20K archives; the module URLs point at it."""
    src, mirror = tmp_path / "src", tmp_path / "mirror"
    mirror.mkdir()
    L.make_voc_aug_sources(src)
    L.make_ade20k(src)
    voc = L.tar_folder(src, "VOCdevkit", mirror / "VOCtrainval_11-May-2012.tar")
    sbd = L.tar_folder(src, "benchmark_RELEASE", mirror / "benchmark.tgz")
    ade = mirror / "ADEChallengeData2016.zip"
    with zipfile.ZipFile(ade, "w") as bundle:
        for path in sorted((src / "ADEChallengeData2016").rglob("*")):
            bundle.write(path, path.relative_to(src).as_posix())
    for name, archive in (("VOC", voc), ("SBD", sbd), ("ADE20K", ade)):
        monkeypatch.setattr(prep, f"{name}_URL", archive.as_uri())
        monkeypatch.setattr(prep, f"{name}_MD5", _md5(archive))
    return mirror


def test_prepare_voc_downloads_extracts_and_is_idempotent(mirror: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    message = prep.prepare("voc", root)
    assert "unpacked VOCtrainval_11-May-2012.tar" in message
    assert len(VOCSegmentation(root, "trainval")) == 5
    assert "already present" in prep.prepare("voc", root)


def test_prepare_voc_aug_end_to_end(mirror: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    message = prep.prepare("voc_aug", root)
    assert f"train_aug: {len(L.TRAIN_AUG)} images" in message
    data = VOCAugSegmentation(root, "train_aug")
    assert [data.name(i) for i in range(len(data))] == L.TRAIN_AUG
    assert prep.prepare("voc_aug", root).count("already present") == 2


def test_prepare_ade20k(mirror: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    prep.prepare("ade20k", root)
    assert len(ADE20KSegmentation(root, "train")) == 3 and len(ADE20KSegmentation(root, "val")) == 2


def test_prepare_with_wrong_checksum_leaves_nothing(
    mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prep, "VOC_MD5", "f" * 32)
    root = tmp_path / "data"
    with pytest.raises(ChecksumError, match="VOCtrainval_11-May-2012.tar"):
        prep.prepare("voc", root)
    assert list(root.iterdir()) == []


def test_prepare_without_download(mirror: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError, match="VOCtrainval_11-May-2012.tar"):
        prep.prepare("voc", root, download=False)
    # An archive placed by hand is verified and unpacked without any download.
    (root / "VOCtrainval_11-May-2012.tar").write_bytes((mirror / "VOCtrainval_11-May-2012.tar").read_bytes())
    assert "unpacked" in prep.prepare("voc", root, download=False)


def test_prepare_unknown_name() -> None:
    with pytest.raises(ValueError, match="valid names: voc, voc_aug, ade20k, cityscapes"):
        prep.prepare("coco", Path("unused"))


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


@pytest.fixture
def damaged_voc(tmp_path: Path) -> Path:
    """VOC val with a corrupt JPEG, a mask of the wrong size and a mask holding class id 30."""
    voc = L.make_voc(tmp_path, {"2007_000032": 1}, {"2007_000033": 2, "2007_000042": 3, "2007_000061": 4})
    (voc / "JPEGImages" / "2007_000033.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    L.write_palette_png(voc / "SegmentationClass" / "2007_000042.png", np.zeros((10, 10), np.uint8))
    L.write_palette_png(voc / "SegmentationClass" / "2007_000061.png", L.object_mask(30))
    return tmp_path


def test_check_reports_every_bad_file(damaged_voc: Path) -> None:
    report = prep.check(VOCSegmentation(damaged_voc, "val"))
    found = {p.sample: p for p in report.problems}
    assert report.split == "val" and report.num_images == 3
    assert found["2007_000033"].kind == "unreadable" and "2007_000033.jpg" in found["2007_000033"].detail
    assert found["2007_000042"].kind == "size mismatch"
    assert "JPEGImages/2007_000042.jpg is 30x20 (W x H) but" in found["2007_000042"].detail
    assert "SegmentationClass/2007_000042.png is 10x10" in found["2007_000042"].detail
    assert found["2007_000061"].kind == "out of range"
    assert "2007_000061.png: label values 30 are neither class ids (0..20)" in found["2007_000061"].detail
    # Only 2007_000061 reaches the histogram: its background and border, not its stray class 30.
    assert report.class_pixels[0] == L.H * L.W - 12 * 18 and sum(report.class_pixels[1:]) == 0
    assert report.ignored_pixels == 12 * 18 - 10 * 16

    text = prep.format_check_report(report)
    for needle in ("unreadable", "size mismatch", "out of range", "2007_000033", "2007_000042.png"):
        assert needle in text


def test_check_histogram_and_clean_report(tmp_path: Path) -> None:
    L.make_voc(tmp_path, L.VOC_TRAIN, L.VOC_VAL)
    report = prep.check(VOCSegmentation(tmp_path, "train"))
    inside, border = 10 * 16, 12 * 18 - 10 * 16
    assert report.class_pixels[1] == report.class_pixels[5] == report.class_pixels[20] == inside
    assert report.ignored_pixels == 3 * border
    assert report.class_pixels[0] == 3 * (L.H * L.W) - 3 * inside - 3 * border
    text = prep.format_check_report([report])
    assert "no problems found" in text and "aeroplane" in text and "tvmonitor" in text


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
    assert args.func(args) == 1
    assert "VOCtrainval_11-May-2012.tar" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args(["data", "prepare", "coco", "--root", "x"])


def test_registry_has_uniform_constructors() -> None:
    assert sorted(DATASETS) == ["ade20k", "cityscapes", "voc", "voc_aug"]
    for cls in DATASETS.values():
        params = inspect.signature(cls.__init__).parameters
        assert list(params)[:3] == ["self", "root", "split"]
        assert params["transforms"].kind is inspect.Parameter.KEYWORD_ONLY
        assert params["transforms"].default is None
        assert cls.splits


def test_cli_check_from_a_run_config(damaged_voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"data:\n  name: voc\n  root: {damaged_voc}\n  train_split: train\n  val_split: val\n")
    args = _parser().parse_args(["data", "check", "--config", str(config)])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "train" in out and "val" in out and "2007_000042" in out and "out of range" in out
    args = _parser().parse_args(["data", "check"])
    assert args.func(args) == 2
    assert "give --config FILE, or --dataset NAME and --root DIR" in capsys.readouterr().err


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
