"""PASCAL VOC 2012 segmentation, and its SBD-augmented "train_aug" split (10,582 training images).

Expected layout under ``root`` (what ``deeplab data prepare voc|voc_aug --root ROOT`` produces); the
loaders also accept ``root`` = the ``VOCdevkit`` folder or the ``VOC2012`` folder itself
(:func:`locate_voc`)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png           palette PNGs, 255 = object border
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png        written by prepare_voc_aug (SBD-only ids)
    VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt written by prepare_voc_aug, last
    benchmark_RELEASE/dataset/cls/<id>.mat                 SBD, read once by prepare_voc_aug
    benchmark_RELEASE/dataset/{train,val}.txt
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deeplab.classes import VOC_CLASSES
from deeplab.data._standard import PathListDataset, check_split, file_stems, require
from deeplab.data.base import PairTransform
from deeplab.imageio import save_index_png
from deeplab.palettes import voc_palette

VOC_SUBDIR = Path("VOCdevkit", "VOC2012")
SBD_SUBDIR = Path("benchmark_RELEASE", "dataset")
_SPLITS_DIR = Path("ImageSets", "Segmentation")
_ROOT_HINT = "data.root may name the folder holding VOCdevkit, the VOCdevkit folder or the VOC2012 folder."


def locate_voc(root: str | Path) -> tuple[Path, Path]:
    """Where VOC is for a ``root`` that names the folder holding ``VOCdevkit``, ``VOCdevkit`` itself, or
    ``VOC2012`` itself (recognised by its ``JPEGImages`` or ``ImageSets`` folder, whatever its name).

    Returns:
        ``(base, voc_dir)``: the folder that holds ``VOCdevkit`` (or holds ``VOC2012`` directly when
        there is no ``VOCdevkit`` above it; SBD's ``benchmark_RELEASE`` belongs here too, and it is the
        ``--root`` of ``deeplab data prepare``), and the ``VOC2012`` folder. Where none is found, the
        documented layout under ``root``.
    """
    root = Path(root)
    if (root / VOC_SUBDIR).is_dir():  # the documented layout wins if several would match
        voc_dir = root / VOC_SUBDIR
    elif (root / VOC_SUBDIR.name).is_dir():
        voc_dir = root / VOC_SUBDIR.name
    elif (root / "JPEGImages").is_dir() or (root / "ImageSets").is_dir():
        voc_dir = root
    else:
        return root, root / VOC_SUBDIR
    base = voc_dir.parent.parent if voc_dir.parent.name == VOC_SUBDIR.parts[0] else voc_dir.parent
    return base, voc_dir


class _VOCBase(PathListDataset):
    """VOC class metadata on image / mask path lists; subclasses fill the lists."""

    classes = VOC_CLASSES
    palette = voc_palette(len(VOC_CLASSES))

    def _locate(self, split: str, prepare_name: str) -> tuple[Path, Path]:
        """Resolves ``self.root`` to the folder holding VOCdevkit; returns VOC2012 and the split file."""
        base, voc_dir = locate_voc(self.root)
        given, self.root = self.root, base
        require(voc_dir, prepare_name, given, "PASCAL VOC 2012", _ROOT_HINT)
        return voc_dir, require(voc_dir / _SPLITS_DIR / f"{split}.txt", prepare_name, base)


class VOCSegmentation(_VOCBase):
    """PASCAL VOC 2012 segmentation: 1,464 train, 1,449 val, 2,913 trainval images, 21 classes.

    Args:
        root: folder holding ``VOCdevkit/VOC2012``, or the ``VOCdevkit`` or ``VOC2012`` folder itself;
            ``self.root`` becomes the folder holding ``VOCdevkit``.
        split: ``"train"``, ``"val"`` or ``"trainval"``.
        transforms: paired transform applied by ``__getitem__``.
    """

    splits = ("train", "val", "trainval")

    def __init__(self, root: str | Path, split: str, *, transforms: PairTransform | None = None) -> None:
        super().__init__(root, check_split(split, self.splits, "voc"), transforms)
        voc_dir, list_file = self._locate(split, "voc")
        for stem in _read_ids(list_file):
            self.images.append(voc_dir / "JPEGImages" / f"{stem}.jpg")
            self.masks.append(voc_dir / "SegmentationClass" / f"{stem}.png")


class VOCAugSegmentation(_VOCBase):
    """VOC 2012 with SBD's extra annotations: ``train_aug`` (10,582 images) and VOC ``val`` (1,449).

    ``train_aug`` reads the PNG masks written once by :func:`prepare_voc_aug`; VOC's own mask is used
    for every image that has one.

    Args:
        root: folder holding ``VOCdevkit/VOC2012`` after ``deeplab data prepare voc_aug``, or the
            ``VOCdevkit`` or ``VOC2012`` folder itself.
        split: ``"train_aug"`` or ``"val"``.
        transforms: paired transform applied by ``__getitem__``.
    """

    splits = ("train_aug", "val")

    def __init__(self, root: str | Path, split: str, *, transforms: PairTransform | None = None) -> None:
        super().__init__(root, check_split(split, self.splits, "voc_aug"), transforms)
        voc_dir, list_file = self._locate(split, "voc_aug")
        voc_masks = set(file_stems(voc_dir / "SegmentationClass", ".png"))
        for stem in _read_ids(list_file):
            folder = "SegmentationClass" if stem in voc_masks else "SegmentationClassAug"
            self.images.append(voc_dir / "JPEGImages" / f"{stem}.jpg")
            self.masks.append(voc_dir / folder / f"{stem}.png")


def _read_ids(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_sbd_segmentation(path: Path) -> np.ndarray:
    """The uint8 H x W class map stored in an SBD ``cls/<id>.mat`` file (struct ``GTcls``)."""
    from scipy.io import loadmat  # scipy is only needed for this one-off conversion

    struct = loadmat(path, squeeze_me=True)["GTcls"]
    return np.asarray(struct["Segmentation"].item(), dtype=np.uint8)


def _sbd_dir(root: Path, base: Path) -> Path:
    """SBD's ``benchmark_RELEASE/dataset``: beside ``VOCdevkit`` (in ``base``), else under ``root``."""
    for folder in (base, root):
        if (folder / SBD_SUBDIR).is_dir():
            return folder / SBD_SUBDIR
    return base / SBD_SUBDIR


def train_aug_ids(root: str | Path) -> list[str]:
    """(SBD train + SBD val + VOC train) minus VOC val, sorted: the ids of the train_aug split."""
    base, voc_dir = locate_voc(root)
    voc_sets, sbd_dir = voc_dir / _SPLITS_DIR, _sbd_dir(Path(root), base)
    ids = set(_read_ids(sbd_dir / "train.txt")) | set(_read_ids(sbd_dir / "val.txt"))
    ids |= set(_read_ids(voc_sets / "train.txt"))
    return sorted(ids - set(_read_ids(voc_sets / "val.txt")))


def prepare_voc_aug(root: str | Path) -> Path:
    """Converts SBD's ``.mat`` labels to palette PNGs and writes the ``train_aug`` split file.

    Only SBD ids without a VOC mask get a PNG (in ``SegmentationClassAug``); VOC's own masks win.
    The PNGs go to a temporary folder that is renamed into place, and ``train_aug.txt`` (the file
    :class:`VOCAugSegmentation` requires) is moved in last, so an interrupted run never looks
    complete. Running it again after success does nothing.

    Args:
        root: folder holding ``VOCdevkit/VOC2012`` and ``benchmark_RELEASE/dataset`` (or the
            ``VOCdevkit`` or ``VOC2012`` folder: SBD is then looked for beside ``VOCdevkit``).

    Returns:
        The path of ``train_aug.txt``.
    """
    root = Path(root)
    base, voc_dir = locate_voc(root)
    require(voc_dir, "voc_aug", base, "PASCAL VOC 2012", _ROOT_HINT)
    list_file = voc_dir / _SPLITS_DIR / "train_aug.txt"
    if list_file.is_file():
        return list_file
    sbd_cls = require(_sbd_dir(root, base) / "cls", "voc_aug", base, "SBD annotations")
    ids = train_aug_ids(root)
    voc_masks = set(file_stems(voc_dir / "SegmentationClass", ".png"))
    _write_aug_masks(sbd_cls, [i for i in ids if i not in voc_masks], voc_dir / "SegmentationClassAug")
    tmp_list = list_file.with_name(f".{list_file.name}.tmp")
    tmp_list.write_text("".join(f"{i}\n" for i in ids))
    os.replace(tmp_list, list_file)
    return list_file


def _write_aug_masks(sbd_cls: Path, ids: list[str], out_dir: Path) -> None:
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)  # leftovers of an interrupted run
    tmp_dir.mkdir()
    try:
        for stem in tqdm(ids, desc="SBD .mat -> PNG", unit="mask", disable=len(ids) < 100):
            _write_label_png(read_sbd_segmentation(sbd_cls / f"{stem}.mat"), tmp_dir / f"{stem}.png")
        shutil.rmtree(out_dir, ignore_errors=True)  # an earlier run died before writing train_aug.txt
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _write_label_png(mask: np.ndarray, path: Path) -> None:
    save_index_png(mask, path, voc_palette(256))
