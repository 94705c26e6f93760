"""``deeplab.data.prepare``: ``prepare`` against file:// archives, ``check`` reports; the dataset registry.

The ``deeplab data`` commands themselves are tested in tests/test_cli_data.py.
"""

from __future__ import annotations

import hashlib
import inspect
import zipfile
from pathlib import Path

import pytest

from deeplab.data import prepare as prep
from deeplab.data._standard import DatasetNotFoundError
from deeplab.data.ade20k import ADE20KSegmentation
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


@pytest.fixture
def damaged_voc(tmp_path: Path) -> Path:
    return L.make_damaged_voc(tmp_path)


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


def test_registry_has_uniform_constructors() -> None:
    assert sorted(DATASETS) == ["ade20k", "cityscapes", "voc", "voc_aug"]
    for cls in DATASETS.values():
        params = inspect.signature(cls.__init__).parameters
        assert list(params)[:3] == ["self", "root", "split"]
        assert params["transforms"].kind is inspect.Parameter.KEYWORD_ONLY
        assert params["transforms"].default is None
        assert cls.splits
