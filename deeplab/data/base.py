"""The contract every dataset follows: raw uint8 image + uint8 mask, paired transforms applied last."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..constants import IGNORE_INDEX
from ..imageio import MASK_MODES

PairTransform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[torch.Tensor, torch.Tensor]]


class SegmentationDataset(Dataset):
    """Base class: subclasses implement ``__len__``, ``load`` and ``name``.

    ``load(i)`` returns the raw pair: a ``tv_tensors.Image`` (uint8, 3 x H x W, RGB) and a
    ``tv_tensors.Mask`` (uint8, H x W) whose values are class ids or ``ignore_index``.
    ``__getitem__`` applies the paired ``transforms`` (see ``deeplab.data.transforms``), which
    return a float image tensor and an int64 mask.
    """

    classes: Sequence[str] = ()
    palette: Sequence[tuple[int, int, int]] = ()
    ignore_index: int = IGNORE_INDEX
    # The Pillow modes a mask file may have (read_mask and data.verify check it): imageio.MASK_MODES less 1-bit
    # masks, which no benchmark's labels are; a dataset that takes them (FolderDataset) says so.
    mask_modes: tuple[str, ...] = tuple(mode for mode in MASK_MODES if mode != "1")
    upright_images: bool = False  # True: images are turned by their EXIF orientation when loaded

    def __init__(self, transforms: PairTransform | None = None) -> None:
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        raise NotImplementedError

    def name(self, index: int) -> str:
        """A stable, file-name-safe identifier of sample ``index`` (e.g. the image's stem)."""
        raise NotImplementedError

    def files(self, index: int) -> tuple[Path, Path] | None:
        """The image and mask files of sample ``index``, or ``None`` if samples are not files (generated)."""
        return None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        if self.transforms is not None:
            return self.transforms(image, mask)
        return image, mask
