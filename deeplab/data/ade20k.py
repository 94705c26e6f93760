"""ADE20K as released for the MIT Scene Parsing benchmark (SceneParsing150, "ADEChallengeData2016").

Expected layout under ``root`` (what ``deeplab data prepare ade20k --root ROOT`` produces); the loader
also accepts ``root`` = the ``ADEChallengeData2016`` folder itself (:func:`locate_ade20k`)::

    ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_<n>.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_<n>.png   0 = other, 1..150
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deeplab.classes import ADE20K_CLASSES
from deeplab.constants import IGNORE_INDEX
from deeplab.data._standard import PathListDataset, check_split, file_stems, require
from deeplab.data.base import PairTransform
from deeplab.palettes import voc_palette

ADE20K_DIR = "ADEChallengeData2016"
_SPLIT_DIRS = {"train": "training", "val": "validation"}


def locate_ade20k(root: str | Path) -> tuple[Path, Path]:
    """``(base, ade_dir)`` for a ``root`` that holds ``ADEChallengeData2016`` or is that folder (it has
    ``images/`` and ``annotations/``, whatever its name). ``base`` is the ``--root`` of ``deeplab data
    prepare``; where nothing is found, the documented layout under ``root``."""
    root = Path(root)
    if (root / ADE20K_DIR).is_dir():
        return root, root / ADE20K_DIR
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        return root.parent, root
    return root, root / ADE20K_DIR


def ade20k_lut() -> np.ndarray:
    """A 256-entry uint8 table: 0 ("other") -> 255, k -> k - 1.

    Stored values above 150 stay out of range (>= 150) instead of being hidden as 255, so
    ``deeplab data check`` can report them.
    """
    lut = (np.arange(256) - 1).astype(np.uint8)
    lut[0] = IGNORE_INDEX
    return lut


class ADE20KSegmentation(PathListDataset):
    """ADE20K SceneParsing: 20,210 train and 2,000 val images, 150 classes, "other" ignored.

    Args:
        root: folder holding ``ADEChallengeData2016``, or that folder itself; ``self.root`` becomes
            the folder holding it.
        split: ``"train"`` or ``"val"``.
        transforms: paired transform applied by ``__getitem__``.
    """

    classes = ADE20K_CLASSES
    # No official colours ship with the archive; the VOC colour map (minus black) keeps them distinct.
    palette = voc_palette(len(ADE20K_CLASSES) + 1)[1:]
    splits = ("train", "val")
    # The annotation PNGs' label 0, ignored here; a model with 151 outputs (the TF zoo's) predicts it as its class 0
    # and the dataset's class k as k + 1 (deeplab.engine.evaluate.label_offset).
    unlabeled_class = "other"

    def __init__(self, root: str | Path, split: str, *, transforms: PairTransform | None = None) -> None:
        super().__init__(root, check_split(split, self.splits, "ade20k"), transforms)
        self.root, ade_dir = locate_ade20k(self.root)
        hint = f"data.root may name the folder holding {ADE20K_DIR} or that folder itself."
        require(ade_dir, "ade20k", self.root, "ADE20K", hint)
        image_dir = require(ade_dir / "images" / _SPLIT_DIRS[split], "ade20k", self.root)
        label_dir = require(ade_dir / "annotations" / _SPLIT_DIRS[split], "ade20k", self.root)
        stems = file_stems(image_dir, ".jpg")
        self.images = [image_dir / f"{s}.jpg" for s in stems]
        self.masks = [label_dir / f"{s}.png" for s in stems]
        self.label_map = ade20k_lut()
