"""Helpers shared by the standard benchmark loaders (VOC, Cityscapes, ADE20K): paths, splits, decoding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from ..imageio import read_mask
from .base import PairTransform, SegmentationDataset


class DatasetNotFoundError(FileNotFoundError):
    """A benchmark folder or file is missing; the message says how to prepare it."""


def check_split(split: str, valid: Sequence[str], dataset: str) -> str:
    """Returns ``split`` if it is one of ``valid``, else raises a ``ValueError`` listing them."""
    if split not in valid:
        raise ValueError(f"unknown split {split!r} for {dataset}; valid splits: {', '.join(valid)}")
    return split


def require(path: Path, prepare_name: str, root: Path, what: str = "", hint: str = "") -> Path:
    """Returns ``path`` if it exists, else raises an error naming it and the prepare command.

    Args:
        path: the file or folder that must exist.
        prepare_name: the dataset name for ``deeplab data prepare``.
        root: the ``--root`` to suggest to ``deeplab data prepare``.
        what: how to call ``path`` in the message (default: its name).
        hint: an extra sentence, e.g. which other roots would have been accepted.
    """
    if not path.exists():
        label = what or path.name
        raise DatasetNotFoundError(
            f"{label} not found: expected {path}. {hint + ' ' if hint else ''}"
            f"Run `deeplab data prepare {prepare_name} --root {root}` to download and lay it out "
            "(see docs/datasets.md)."
        )
    return path


def read_rgb(path: Path) -> tv_tensors.Image:
    """Decodes an image file to a uint8 3 x H x W RGB ``tv_tensors.Image``.

    EXIF orientation is deliberately ignored: the benchmark labels were drawn on the stored pixel grid.
    """
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    return tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1))


def read_label(path: Path, lut: np.ndarray | None = None,
               modes: tuple[str, ...] = SegmentationDataset.mask_modes) -> tv_tensors.Mask:
    """Reads the stored indices of a palette or greyscale PNG (never its colours) as a uint8 H x W mask.

    Args:
        path: the label PNG.
        lut: optional 256-entry uint8 table mapping stored ids to training ids.
        modes: the Pillow modes accepted (the dataset's ``mask_modes``).
    """
    array = read_mask(path, modes)
    if lut is not None:
        array = lut[array]
    return tv_tensors.Mask(torch.from_numpy(array))


def file_stems(folder: Path, suffix: str) -> list[str]:
    """Sorted stems of the files in ``folder`` whose names end with ``suffix``."""
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix))


class PathListDataset(SegmentationDataset):
    """A dataset that is two aligned lists of files; subclasses fill ``images`` and ``masks``.

    ``label_map`` (a 256-entry table) turns stored label values into class ids; ``None`` keeps them.
    """

    def __init__(self, root: str | Path, split: str, transforms: PairTransform | None) -> None:
        super().__init__(transforms)
        self.root, self.split = Path(root), split
        self.images: list[Path] = []
        self.masks: list[Path] = []
        self.label_map: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        return read_rgb(self.images[index]), read_label(self.masks[index], self.label_map, self.mask_modes)

    def name(self, index: int) -> str:
        return self.images[index].stem

    def files(self, index: int) -> tuple[Path, Path]:
        """The image and mask paths of sample ``index``."""
        return self.images[index], self.masks[index]

    def drop(self, indices: Sequence[int]) -> None:
        """Removes samples ``indices`` (e.g. the bad files found by ``deeplab.data.verify``)."""
        gone = set(indices)
        keep = [i for i in range(len(self.images)) if i not in gone]
        self.images = [self.images[i] for i in keep]
        self.masks = [self.masks[i] for i in keep]
