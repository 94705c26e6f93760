"""Cityscapes (label id -> train id) and ADE20K (0 = other -> 255) on fixtures in the real layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import Cityscapes

from deeplab.data._standard import DatasetNotFoundError
from deeplab.data.ade20k import ADE20KSegmentation
from deeplab.data.cityscapes import CityscapesSegmentation, label_id_to_train_id

from . import layouts as L


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    L.make_cityscapes(tmp_path)
    return tmp_path


def test_cityscapes_counts_and_names(cityscapes_root: Path) -> None:
    for split, stems in L.CITYSCAPES_FILES.items():
        data = CityscapesSegmentation(cityscapes_root, split)
        assert [data.name(i) for i in range(len(data))] == sorted(stems)  # colour/instance files ignored


def test_cityscapes_maps_label_ids_to_train_ids(cityscapes_root: Path) -> None:
    image, mask = CityscapesSegmentation(cityscapes_root, "val")[0]
    assert image.dtype == torch.uint8 and image.shape == (3, L.H, L.W)
    expected = np.resize(L.CITYSCAPES_TRAIN_IDS, (L.H, L.W))
    assert mask.dtype == torch.uint8
    np.testing.assert_array_equal(mask.numpy(), expected)
    assert {0, 1, 13, 18, 255} == set(mask.unique().tolist())


def test_cityscapes_table_matches_the_official_one() -> None:
    data_cls = CityscapesSegmentation
    assert len(data_cls.classes) == 19 and data_cls.classes[0] == "road" and data_cls.classes[-1] == "bicycle"
    assert data_cls.palette[0] == (128, 64, 128) and data_cls.palette[-1] == (119, 11, 32)
    lut = label_id_to_train_id()
    for cls in Cityscapes.classes:
        if cls.id >= 0:
            assert lut[cls.id] == (cls.train_id if 0 <= cls.train_id < 255 else 255), cls.name
    assert (lut[34:] == 255).all()


def test_cityscapes_errors(cityscapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    with pytest.raises(ValueError, match="valid splits: train, val, test"):
        CityscapesSegmentation(cityscapes_root, "train_extra")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DatasetNotFoundError) as err:
        CityscapesSegmentation(empty, "train")
    assert str(empty / "leftImg8bit" / "train") in str(err.value)
    assert "deeplab data prepare cityscapes --root" in str(err.value)


@pytest.fixture
def ade_root(tmp_path: Path) -> Path:
    L.make_ade20k(tmp_path)
    return tmp_path


def test_ade20k_counts_names_and_classes(ade_root: Path) -> None:
    train, val = ADE20KSegmentation(ade_root, "train"), ADE20KSegmentation(ade_root, "val")
    assert (len(train), len(val)) == (3, 2)
    assert train.name(0) == "ADE_train_00000001" and val.name(1) == "ADE_val_00000002"
    assert train.num_classes == 150 and len(set(train.classes)) == 150
    assert train.classes[:3] == ("wall", "building", "sky") and train.classes[-1] == "flag"
    assert len(train.palette) == 150 and len(set(train.palette)) == 150


def test_ade20k_other_is_ignored_and_ids_shift_down(ade_root: Path) -> None:
    image, mask = ADE20KSegmentation(ade_root, "val")[0]
    assert image.shape == (3, L.H, L.W) and mask.dtype == torch.uint8
    stored = np.resize(L.ADE_VALUES, (L.H, L.W))
    np.testing.assert_array_equal(mask.numpy()[stored == 0], 255)  # 0 = "other"
    np.testing.assert_array_equal(mask.numpy()[stored > 0], stored[stored > 0] - 1)
    assert set(mask.unique().tolist()) == {0, 1, 12, 149, 255}


def test_ade20k_errors(ade_root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    with pytest.raises(ValueError, match="valid splits: train, val"):
        ADE20KSegmentation(ade_root, "validation")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DatasetNotFoundError, match="deeplab data prepare ade20k --root"):
        ADE20KSegmentation(empty, "train")


def test_cityscapes_root_variants(cityscapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    expected = [p.name for p in CityscapesSegmentation(cityscapes_root, "val").images]
    for root in (cityscapes_root / "leftImg8bit", cityscapes_root / "gtFine"):
        data = CityscapesSegmentation(root, "val")
        assert data.root == cityscapes_root and [p.name for p in data.images] == expected
    parent = tmp_path_factory.mktemp("parent")
    L.make_cityscapes(parent / "cityscapes")
    (parent / "notes").mkdir()
    data = CityscapesSegmentation(parent, "train")  # exactly one subfolder holds the layout: unambiguous
    assert data.root == parent / "cityscapes" and len(data) == 3
    L.make_cityscapes(parent / "cityscapes_copy")
    with pytest.raises(ValueError, match="holds several Cityscapes folders \\(cityscapes, cityscapes_copy\\)"):
        CityscapesSegmentation(parent, "train")


def test_ade20k_root_may_be_the_challenge_folder(ade_root: Path) -> None:
    from deeplab.data.prepare import prepare

    inner = ADE20KSegmentation(ade_root / "ADEChallengeData2016", "val")
    outer = ADE20KSegmentation(ade_root, "val")
    assert inner.images == outer.images and inner.masks == outer.masks and inner.root == ade_root
    np.testing.assert_array_equal(inner[1][1].numpy(), outer[1][1].numpy())
    assert "already present" in prepare("ade20k", ade_root / "ADEChallengeData2016", download=False)
    missing = ade_root / "ADEChallengeData2016" / "annotations" / "validation"
    for path in missing.iterdir():
        path.unlink()
    missing.rmdir()
    with pytest.raises(DatasetNotFoundError, match=f"deeplab data prepare ade20k --root {ade_root}`"):
        ADE20KSegmentation(ade_root / "ADEChallengeData2016", "val")
