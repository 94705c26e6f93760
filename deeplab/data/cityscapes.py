"""Cityscapes fine annotations, mapped from the 34 label ids to the 19 evaluated train ids.

Expected layout under ``root`` (unzip ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``
there)::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

``root`` may also name ``leftImg8bit`` or ``gtFine`` itself, or a folder with exactly one subfolder
that holds both (:func:`locate_cityscapes`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision.datasets import Cityscapes

from deeplab.classes import CITYSCAPES_CLASSES
from deeplab.constants import IGNORE_INDEX
from deeplab.data._standard import PathListDataset, check_split, require
from deeplab.data.base import PairTransform
from deeplab.palettes import CITYSCAPES_PALETTE

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"

# torchvision carries the official table (cityscapesScripts' labels.py): label id -> train id.
_EVALUATED = sorted(
    (c for c in Cityscapes.classes if 0 <= c.train_id < IGNORE_INDEX), key=lambda c: c.train_id
)


def label_id_to_train_id() -> np.ndarray:
    """A 256-entry uint8 table: label id -> train id, 255 for every id that is not evaluated."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for cls in _EVALUATED:
        lut[cls.id] = cls.train_id
    return lut


_TOP_DIRS = ("leftImg8bit", "gtFine")


def _holds_cityscapes(folder: Path) -> bool:
    return all((folder / name).is_dir() for name in _TOP_DIRS)


def locate_cityscapes(root: str | Path) -> Path:
    """The folder holding ``leftImg8bit`` and ``gtFine`` for a ``root`` that is that folder, one of
    those two folders, or a folder with exactly one subfolder holding both. Where nothing is found,
    ``root`` itself (the loader then names the missing folder).

    Raises:
        ValueError: several subfolders of ``root`` hold a Cityscapes layout (which one is meant?).
    """
    root = Path(root)
    if _holds_cityscapes(root):
        return root
    if root.name in _TOP_DIRS and _holds_cityscapes(root.parent):
        return root.parent
    children = [c for c in sorted(root.iterdir()) if c.is_dir() and _holds_cityscapes(c)] if root.is_dir() else []
    if len(children) > 1:
        raise ValueError(f"{root} holds several Cityscapes folders ({', '.join(c.name for c in children)}): "
                         "set data.root to the one to use")
    return children[0] if children else root


class CityscapesSegmentation(PathListDataset):
    """Cityscapes fine: 2,975 train, 500 val, 1,525 test images (test labels are not public), 19 classes.

    Args:
        root: folder holding ``leftImg8bit`` and ``gtFine`` (or see :func:`locate_cityscapes`);
            ``self.root`` becomes that folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transforms: paired transform applied by ``__getitem__``.
    """

    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    splits = ("train", "val", "test")

    def __init__(self, root: str | Path, split: str, *, transforms: PairTransform | None = None) -> None:
        super().__init__(root, check_split(split, self.splits, "cityscapes"), transforms)
        self.root = locate_cityscapes(self.root)
        image_dir = require(self.root / "leftImg8bit" / split, "cityscapes", self.root)
        label_dir = require(self.root / "gtFine" / split, "cityscapes", self.root)
        self.images = sorted(image_dir.glob(f"*/*{_IMAGE_SUFFIX}"))
        self.masks = [
            label_dir / p.parent.name / (p.name[: -len(_IMAGE_SUFFIX)] + _LABEL_SUFFIX) for p in self.images
        ]
        self.label_map = label_id_to_train_id()

    def name(self, index: int) -> str:
        return self.images[index].name[: -len(_IMAGE_SUFFIX)]
