"""Full-decode verification: truncated files caught up front, the per-file verdict cache, and the
trainer's start-up check of both splits (through ``deeplab train``)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab.cli import main
from deeplab.config import DataConfig
from deeplab.constants import cache_dir
from deeplab.data import prepare as prep
from deeplab.data.ade20k import ADE20KSegmentation
from deeplab.data.folder import DatasetError, FolderDataset
from deeplab.data.verify import verify_dataset
from deeplab.data.voc import VOCSegmentation
from deeplab.engine.data import build_train_val

from . import layouts as L


def truncate(path: Path, keep: float = 0.6) -> None:
    """Cuts a file short, as an interrupted copy or download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def same_size_garbage(path: Path) -> None:
    """Overwrites a file with garbage of the same length and gives it back its mtime: a change that
    only a decoder (never the size + mtime key) can notice."""
    stat = path.stat()
    path.write_bytes(b"\x00" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def make_folder(root: Path, count: int = 6) -> Path:
    """images/ (JPEG and PNG alternately) + masks/ with classes 0..2, all L.H x L.W."""
    for i in range(count):
        if i % 2:
            L.write_png_rgb(root / "images" / f"s{i}.png", i)
        else:
            L.write_jpg(root / "images" / f"s{i}.jpg", i)
        L.write_gray_png(root / "masks" / f"s{i}.png", L.object_mask(1 + i % 2, border=False))
    return root


def folder_error(root: Path, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        FolderDataset(root, val_ratio=0.0, num_classes=3, **kwargs)
    return info.value


# ------------------------------------------------------------------------------------ truncated files


def test_truncated_jpeg_and_png_are_listed_in_one_error(tmp_path):
    make_folder(tmp_path)
    truncate(tmp_path / "images" / "s2.jpg")
    truncate(tmp_path / "images" / "s3.png")
    error = folder_error(tmp_path)
    assert len(error.problems) == 2, str(error)
    assert "images/s2.jpg: unreadable image (truncated file" in str(error)
    assert "images/s3.png: unreadable image (truncated file" in str(error)


def test_skip_bad_skips_truncated_pairs_with_a_warning_each(tmp_path):
    make_folder(tmp_path)
    truncate(tmp_path / "images" / "s0.jpg")
    truncate(tmp_path / "images" / "s5.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = FolderDataset(tmp_path, val_ratio=0.0, num_classes=3, skip_bad=True)
    assert data.stems == ["s1", "s2", "s3", "s4"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "s0.jpg" in messages[0] and "s5.png" in messages[1]
    assert all(data.load(i)[0].shape == (3, L.H, L.W) for i in range(len(data)))


# ----------------------------------------------------------------------------------------------- cache


def test_second_construction_decodes_nothing_until_a_file_changes(tmp_path):
    make_folder(tmp_path)
    assert len(FolderDataset(tmp_path, val_ratio=0.0)) == 6
    victim = tmp_path / "images" / "s2.jpg"
    same_size_garbage(victim)
    # Same path, size and mtime: the cached "good" verdict is used, so the garbage goes unnoticed.
    assert len(FolderDataset(tmp_path, val_ratio=0.0)) == 6
    # A new mtime makes it decode the file again, and the garbage is found.
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 1_000_000_000))
    error = folder_error(tmp_path)
    assert len(error.problems) == 1 and "images/s2.jpg: unreadable image (not an image" in str(error)


def test_cached_bad_verdicts_are_reported_again(tmp_path):
    make_folder(tmp_path)
    truncate(tmp_path / "images" / "s1.png")
    first = folder_error(tmp_path)
    assert folder_error(tmp_path).problems == first.problems


def _cache_files() -> list[Path]:
    return sorted(cache_dir().rglob("*.json"))


def test_corrupt_cache_file_is_ignored_and_rewritten(tmp_path):
    make_folder(tmp_path)
    FolderDataset(tmp_path, val_ratio=0.0)
    (cache,) = _cache_files()
    cache.write_text('{"version": 1, "files": {"' + str(tmp_path) + '": [1, 2')  # cut mid-write by hand
    truncate(tmp_path / "images" / "s4.jpg")
    assert "images/s4.jpg: unreadable image (truncated file" in str(folder_error(tmp_path))
    entries = json.loads(cache.read_text())["files"]
    assert str((tmp_path / "images" / "s4.jpg").resolve()) in entries
    for junk in ("[]", '{"version": 1, "files": {"x": 3}}', "\x00\x01"):
        cache.write_text(junk)
        with pytest.warns(UserWarning, match="skipping 's4'"):
            assert len(FolderDataset(tmp_path, val_ratio=0.0, skip_bad=True)) == 5


def test_unwritable_cache_is_not_fatal(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("DEEPLAB_CACHE", str(blocker))
    root = make_folder(tmp_path / "data")
    truncate(root / "images" / "s1.png")
    assert "images/s1.png: unreadable image (truncated file" in str(folder_error(root))
    assert "images/s1.png: unreadable image (truncated file" in str(folder_error(root))
    assert blocker.read_text().startswith("a file")


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPLAB_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("DEEPLAB_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "deeplab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "deeplab"


def test_cache_writes_leave_no_temporary_files(tmp_path):
    make_folder(tmp_path)
    FolderDataset(tmp_path, "train")
    FolderDataset(tmp_path, "val")
    files = [p for p in cache_dir().rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".json" and not files[0].name.startswith(".")


# ------------------------------------------------------------------------------- the standard datasets


def test_verify_dataset_names_every_bad_file_of_a_standard_split(tmp_path):
    voc = L.make_voc(tmp_path, L.VOC_TRAIN, {"2007_000033": 2, "2007_000042": 19, "2007_000061": 4})
    truncate(voc / "JPEGImages" / "2007_000033.jpg")
    (voc / "SegmentationClass" / "2007_000061.png").unlink()
    Image.new("RGB", (L.W, L.H)).save(voc / "SegmentationClass" / "2007_000042.png")
    report = verify_dataset(VOCSegmentation(tmp_path, "val"), progress=False)
    found = {p.sample: p for p in report.problems}
    assert report.bad == [0, 1, 2]
    assert found["2007_000033"].kind == "unreadable" and "JPEGImages/2007_000033.jpg" in found["2007_000033"].detail
    assert found["2007_000042"].kind == "mask mode" and "mask mode is 'RGB'" in found["2007_000042"].detail
    assert found["2007_000061"].kind == "missing"
    assert "SegmentationClass/2007_000061.png: unreadable mask (file not found)" in found["2007_000061"].detail


def test_label_map_is_applied_before_the_range_check(tmp_path):
    base = L.make_ade20k(tmp_path)
    label = np.resize(L.ADE_VALUES, (L.H, L.W))
    label[0, 0] = 151  # one past the 150 classes (stored 1..150)
    L.write_gray_png(base / "annotations" / "validation" / "ADE_val_00000002.png", label)
    (problem,) = verify_dataset(ADE20KSegmentation(tmp_path, "val"), progress=False).problems
    assert problem.kind == "out of range" and problem.sample == "ADE_val_00000002"
    assert "ADE_val_00000002.png: stored values 151 become 150, neither class ids (0..149)" in problem.detail


def _tiny_voc_run(root: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--set", "data.name=voc", f"data.root={root}", "data.crop_size=33", "data.num_workers=0",
            "model.name=deeplabv3plus_mobilenetv2", "train.batch_size=2", "train.iterations=4",
            "train.eval_every=2", "train.progress=false", f"train.run_dir={run}", *extra]


def test_train_stops_at_start_on_a_corrupt_val_image(tmp_path, capsys):
    root, run = tmp_path / "data", tmp_path / "run"
    voc = L.make_voc(root, L.VOC_TRAIN, L.VOC_VAL)
    truncate(voc / "JPEGImages" / "2007_000042.jpg")
    L.write_palette_png(voc / "SegmentationClass" / "2007_000039.png", np.zeros((7, 7), np.uint8))
    assert main(_tiny_voc_run(root, run)) == 2
    err = capsys.readouterr().err
    assert "VOCdevkit/VOC2012/JPEGImages/2007_000042.jpg: unreadable image (truncated file" in err
    assert "SegmentationClass/2007_000039.png is 7x7" in err  # the train split's bad file, in the same error
    assert "2 problem(s)" in err
    assert not list(run.rglob("*.pt")), "no checkpoint may be written"
    log = run / "log.jsonl"
    assert not log.exists() or not log.read_text().strip(), "no training step may run"


def test_build_train_val_checks_skips_or_trusts_as_configured(tmp_path):
    voc = L.make_voc(tmp_path, L.VOC_TRAIN, L.VOC_VAL)
    cfg = DataConfig(name="voc", root=str(tmp_path), crop_size=33)
    train, val = build_train_val(cfg, progress=False)
    assert (len(train), len(val)) == (3, 2)
    truncate(voc / "JPEGImages" / "2007_000033.jpg")
    with pytest.raises(DatasetError, match="val: VOCdevkit/VOC2012/JPEGImages/2007_000033.jpg"):
        build_train_val(cfg, progress=False)
    cfg.skip_bad = True
    with pytest.warns(UserWarning, match="skipping val sample '2007_000033'"):
        train, val = build_train_val(cfg, progress=False)
    assert (len(train), len(val)) == (3, 1) and val.name(0) == "2007_000042"
    assert val[0][0].shape[-2:] == (L.H, L.W)
    cfg.skip_bad, cfg.verify = False, False
    assert [len(d) for d in build_train_val(cfg, progress=False)] == [3, 2]


def test_data_check_shares_the_start_up_verdicts(tmp_path):
    """``deeplab data check`` and the trainer's check are one mechanism with one cache."""
    voc = L.make_voc(tmp_path, L.VOC_TRAIN, L.VOC_VAL)
    build_train_val(DataConfig(name="voc", root=str(tmp_path)), progress=False)
    same_size_garbage(voc / "SegmentationClass" / "2007_000033.png")
    assert prep.check(VOCSegmentation(tmp_path, "val")).problems == []  # cached: nothing decoded
    path = voc / "SegmentationClass" / "2007_000033.png"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    (problem,) = prep.check(VOCSegmentation(tmp_path, "val")).problems
    assert problem.sample == "2007_000033" and problem.kind == "unreadable"


def test_a_check_counts_and_lists_the_samples_skip_bad_left_out(tmp_path):
    make_folder(tmp_path)
    truncate(tmp_path / "images" / "s0.jpg")
    (tmp_path / "masks" / "s3.png").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = FolderDataset(tmp_path, val_ratio=0.0, num_classes=3, skip_bad=True)
    assert ["skipping 's0'" in str(w.message) for w in caught] == [True, False]
    assert [(p.sample, p.kind) for p in data.skipped] == [("s0", "unreadable"), ("s3", "missing")]
    report = prep.check(data)
    assert (report.num_images, report.skipped) == (6, 2)
    assert [(p.sample, p.kind) for p in report.problems] == [("s0", "unreadable"), ("s3", "missing")]
    text = prep.format_check_report(report)
    assert "no problems found" not in text and "images/s0.jpg: unreadable image" in text
