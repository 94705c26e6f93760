"""VOC 2012 and the SBD-augmented train_aug split, on fixtures in the real on-disk layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from deeplab.data import voc
from deeplab.data._standard import DatasetNotFoundError
from deeplab.data.folder import FolderDataset
from deeplab.data.voc import VOCAugSegmentation, VOCSegmentation, prepare_voc_aug
from deeplab.imageio import MASK_MODES, MaskModeError

from . import layouts as L


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    L.make_voc(tmp_path, L.VOC_TRAIN, L.VOC_VAL)
    return tmp_path


@pytest.fixture
def aug_root(tmp_path: Path) -> Path:
    L.make_voc_aug_sources(tmp_path)
    return tmp_path


def test_voc_split_counts_and_sample_contract(voc_root: Path) -> None:
    counts = {s: len(VOCSegmentation(voc_root, s)) for s in VOCSegmentation.splits}
    assert counts == {"train": 3, "val": 2, "trainval": 5}
    data = VOCSegmentation(voc_root, "train")
    image, mask = data[2]
    assert data.name(2) == "2007_000129"
    assert image.dtype == torch.uint8 and image.shape == (3, L.H, L.W)
    assert mask.dtype == torch.uint8 and mask.shape == (L.H, L.W)
    # The stored palette index is returned, not the colour: class 5 object with a 255 border.
    assert set(mask.unique().tolist()) == {0, 5, 255}
    assert torch.equal(mask, torch.from_numpy(L.object_mask(5)))


def test_voc_loads_only_the_mask_modes_it_declares(voc_root: Path) -> None:
    """One reader and one mode list: a colour or 1-bit label is refused with the folder dataset's message."""
    data = VOCSegmentation(voc_root, "train")
    assert data.mask_modes == ("L", "P") and FolderDataset.mask_modes == MASK_MODES == ("L", "P", "1")
    label = data.files(0)[1]
    Image.fromarray(np.zeros((L.H, L.W, 3), np.uint8)).save(label)
    with pytest.raises(MaskModeError, match=r"2007_000032.png: mask mode is 'RGB': expected a single-channel "
                                            r"index PNG \(mode L or P\)"):
        data.load(0)
    Image.fromarray(np.zeros((L.H, L.W), bool)).save(label)
    with pytest.raises(MaskModeError, match="mask mode is '1'"):
        data.load(0)


def test_voc_class_metadata(voc_root: Path) -> None:
    data = VOCSegmentation(voc_root, "val")
    assert data.num_classes == 21 and data.ignore_index == 255
    assert data.classes[0] == "background" and data.classes[1] == "aeroplane"
    assert data.classes[-1] == "tvmonitor"
    assert data.palette[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]
    assert len(data.palette) == 21


def test_voc_transforms_are_applied(voc_root: Path) -> None:
    def transforms(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image.float() / 255, mask.long()

    image, mask = VOCSegmentation(voc_root, "val", transforms=transforms)[0]
    assert image.dtype == torch.float32 and mask.dtype == torch.int64


def test_voc_bad_split_lists_valid_splits(voc_root: Path) -> None:
    with pytest.raises(ValueError, match="valid splits: train, val, trainval"):
        VOCSegmentation(voc_root, "test")


def test_voc_missing_folder_names_path_and_command(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        VOCSegmentation(tmp_path, "train")
    message = str(err.value)
    assert str(tmp_path / "VOCdevkit" / "VOC2012") in message
    assert f"deeplab data prepare voc --root {tmp_path}" in message


def test_sbd_fixture_reads_like_the_real_files(aug_root: Path) -> None:
    """The fixture .mat answers torchvision's SBDataset accessors and ours identically."""
    path = aug_root / "benchmark_RELEASE" / "dataset" / "cls" / "2008_000002.mat"
    mat = scipy.io.loadmat(path)
    assert mat["GTcls"].shape == (1, 1)
    assert set(mat["GTcls"].dtype.names) == {"Boundaries", "Segmentation", "CategoriesPresent"}
    reference = mat["GTcls"][0]["Segmentation"][0]
    assert reference.dtype == np.uint8 and reference.shape == (L.H, L.W)
    assert mat["GTcls"][0]["Boundaries"][0][6][0].toarray().any()  # class 7's boundary map
    np.testing.assert_array_equal(voc.read_sbd_segmentation(path), reference)


def test_train_aug_split_logic(aug_root: Path) -> None:
    list_file = prepare_voc_aug(aug_root)
    assert list_file.read_text().split() == L.TRAIN_AUG
    assert not set(L.VOC_VAL) & set(L.TRAIN_AUG)  # every VOC val image is excluded
    aug_dir = aug_root / "VOCdevkit" / "VOC2012" / "SegmentationClassAug"
    assert sorted(p.stem for p in aug_dir.iterdir()) == L.SBD_ONLY  # only ids without a VOC mask
    with Image.open(aug_dir / "2008_000002.png") as png:
        assert png.mode == "P"
        assert png.getpalette()[3:6] == [128, 0, 0]

    train = VOCAugSegmentation(aug_root, "train_aug")
    assert len(train) == len(L.TRAIN_AUG) and [train.name(i) for i in range(len(train))] == L.TRAIN_AUG
    val = VOCAugSegmentation(aug_root, "val")
    assert [val.name(i) for i in range(len(val))] == sorted(L.VOC_VAL)


def test_train_aug_masks_voc_precedence_and_sbd_labels(aug_root: Path) -> None:
    prepare_voc_aug(aug_root)
    data = VOCAugSegmentation(aug_root, "train_aug")
    masks = {data.name(i): data.load(i)[1] for i in range(len(data))}
    # 2007_000129 is in VOC train (class 5, with borders) and SBD (class 9): VOC's mask wins.
    assert torch.equal(masks["2007_000129"], torch.from_numpy(L.object_mask(5)))
    # SBD-only ids carry SBD's labels, converted losslessly (no borders in SBD).
    assert torch.equal(masks["2008_000007"], torch.from_numpy(L.object_mask(15, border=False)))
    assert torch.equal(masks["2008_000002"], torch.from_numpy(L.object_mask(7, border=False)))


def test_train_aug_requires_conversion(aug_root: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="deeplab data prepare voc_aug --root"):
        VOCAugSegmentation(aug_root, "train_aug")
    with pytest.raises(ValueError, match="valid splits: train_aug, val"):
        VOCAugSegmentation(aug_root, "train")


def test_conversion_is_idempotent(aug_root: Path) -> None:
    first = prepare_voc_aug(aug_root)
    stamp = first.stat().st_mtime_ns
    aug_png = aug_root / "VOCdevkit" / "VOC2012" / "SegmentationClassAug" / "2008_000003.png"
    png_stamp = aug_png.stat().st_mtime_ns
    assert prepare_voc_aug(aug_root) == first
    assert first.stat().st_mtime_ns == stamp and aug_png.stat().st_mtime_ns == png_stamp


def test_interrupted_conversion_leaves_nothing_complete_looking(
    aug_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    voc_dir = aug_root / "VOCdevkit" / "VOC2012"
    real_write = voc._write_label_png
    calls = []

    def dying_write(mask: np.ndarray, path: Path) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. Ctrl-C half-way through the masks
        real_write(mask, path)

    monkeypatch.setattr(voc, "_write_label_png", dying_write)
    with pytest.raises(KeyboardInterrupt):
        prepare_voc_aug(aug_root)
    assert not (voc_dir / "ImageSets" / "Segmentation" / "train_aug.txt").exists()
    assert not (voc_dir / "SegmentationClassAug").exists()
    with pytest.raises(DatasetNotFoundError):
        VOCAugSegmentation(aug_root, "train_aug")

    monkeypatch.setattr(voc, "_write_label_png", real_write)
    assert prepare_voc_aug(aug_root).read_text().split() == L.TRAIN_AUG
    assert sorted(p.name for p in voc_dir.iterdir() if p.name.startswith(".")) == []


def test_conversion_recovers_from_a_killed_run(aug_root: Path) -> None:
    """A hard kill leaves a stale temp folder, or a renamed mask folder without train_aug.txt."""
    voc_dir = aug_root / "VOCdevkit" / "VOC2012"
    (voc_dir / ".SegmentationClassAug.tmp").mkdir()
    (voc_dir / ".SegmentationClassAug.tmp" / "junk.png").write_bytes(b"half")
    (voc_dir / "SegmentationClassAug").mkdir()
    (voc_dir / "SegmentationClassAug" / "stale.png").write_bytes(b"old")
    with pytest.raises(DatasetNotFoundError):  # a mask folder alone does not count as converted
        VOCAugSegmentation(aug_root, "train_aug")
    prepare_voc_aug(aug_root)
    assert sorted(p.stem for p in (voc_dir / "SegmentationClassAug").iterdir()) == L.SBD_ONLY
    assert not (voc_dir / ".SegmentationClassAug.tmp").exists()


def test_voc_root_may_be_the_holder_vocdevkit_or_voc2012(voc_root: Path) -> None:
    reference = VOCSegmentation(voc_root, "val")
    for root in (voc_root, voc_root / "VOCdevkit", voc_root / "VOCdevkit" / "VOC2012"):
        data = VOCSegmentation(root, "val")
        assert data.images == reference.images and data.masks == reference.masks, root
        assert data.root == voc_root  # the folder `deeplab data prepare --root` takes
        assert torch.equal(data[1][1], torch.from_numpy(L.object_mask(19)))


def test_voc_aug_roots_and_sbd_beside_vocdevkit(aug_root: Path) -> None:
    voc2012 = aug_root / "VOCdevkit" / "VOC2012"
    with pytest.raises(DatasetNotFoundError) as err:  # the command to run names the folder holding VOCdevkit
        VOCAugSegmentation(voc2012, "train_aug")
    assert f"deeplab data prepare voc_aug --root {aug_root}`" in str(err.value)
    assert prepare_voc_aug(aug_root / "VOCdevkit").read_text().split() == L.TRAIN_AUG  # finds benchmark_RELEASE
    for root in (aug_root, aug_root / "VOCdevkit", voc2012):
        data = VOCAugSegmentation(root, "train_aug")
        assert [data.name(i) for i in range(len(data))] == L.TRAIN_AUG
        assert torch.equal(data.load(L.TRAIN_AUG.index("2008_000007"))[1],
                           torch.from_numpy(L.object_mask(15, border=False)))


def test_voc2012_moved_out_of_vocdevkit(tmp_path: Path) -> None:
    """A VOC2012 folder on its own (no VOCdevkit above it) is found, and SBD is looked for beside it."""
    L.make_voc_aug_sources(tmp_path / "src")
    moved = tmp_path / "voc"
    moved.mkdir()
    (tmp_path / "src" / "VOCdevkit" / "VOC2012").rename(moved / "VOC2012")
    (tmp_path / "src" / "benchmark_RELEASE").rename(moved / "benchmark_RELEASE")
    assert prepare_voc_aug(moved / "VOC2012").read_text().split() == L.TRAIN_AUG
    for root in (moved, moved / "VOC2012"):
        assert len(VOCSegmentation(root, "trainval")) == 5 and len(VOCAugSegmentation(root, "val")) == 2
        assert VOCSegmentation(root, "val").root == moved


def test_prepare_recognises_a_vocdevkit_root(voc_root: Path) -> None:
    from deeplab.data.prepare import prepare

    for root in (voc_root / "VOCdevkit", voc_root / "VOCdevkit" / "VOC2012"):
        assert "PASCAL VOC 2012: already present" in prepare("voc", root, download=False)
    assert sorted(p.name for p in voc_root.iterdir()) == ["VOCdevkit"]
