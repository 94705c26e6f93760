"""Paired image + mask transforms (``torchvision.transforms.v2`` kernels on ``tv_tensors``).

Both builders return a callable ``(image, mask) -> (image, mask)`` that takes the raw pair of
``SegmentationDataset.load`` (a ``C x H x W`` image, uint8 0..255 or float 0..1 for 16-bit and multi-band data;
a uint8 ``H x W`` mask, or ``L x H x W`` with one 0/1 plane per label for multilabel targets) and returns a
float32 normalised image and an int64 mask of the same layout, as plain tensors. Randomness comes from torch's global
generator, which the ``DataLoader`` seeds differently in each worker.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from ..imageio import normalize_image
from .base import PairTransform

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EvalTransform",
    "TrainTransform",
    "eval_transforms",
    "normalize_image",
    "scale_choices",
    "train_transforms",
]


def _mask_to_long(mask: torch.Tensor) -> torch.Tensor:
    return mask.as_subclass(torch.Tensor).to(torch.int64)


def scale_choices(scale_range: tuple[float, float], scale_step: float) -> list[float] | None:
    """The discrete scales ``lo, lo + step, ..., hi`` of DeepLab's recipe; ``None`` when ``step == 0``."""
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    if scale_step < 0:
        raise ValueError(f"scale_step must be >= 0, got {scale_step}")
    if scale_step == 0:
        return None
    count = int((high - low) / scale_step + 1e-9) + 1
    return [round(low + k * scale_step, 10) for k in range(count)]


class TrainTransform:
    """Random scale, pad to the crop, random crop, random horizontal flip, normalise.

    Padding goes to the bottom and right (as in the reference implementation): the image gets the
    mean colour, the mask ``ignore_index``. Returns ``(float32 C x crop_h x crop_w, int64 [L x] crop_h x crop_w)``.

    Args:
        crop_size: Output size, an int or ``(height, width)``.
        scale_range: Smallest and largest random scale factor.
        scale_step: Scales are drawn from ``{low, low + step, ..., high}``; 0 draws uniformly.
        hflip: Flip horizontally with probability 0.5.
        mean: Per-channel mean (0..1 scale, one entry per image channel) for normalisation; also the padding
            colour.
        std: Per-channel standard deviation for normalisation.
        ignore_index: Mask value of padded pixels.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        *,
        scale_range: tuple[float, float] = (0.5, 2.0),
        scale_step: float = 0.25,
        hflip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if len(crop) != 2 or min(crop) < 1:
            raise ValueError(f"crop_size must be a positive int or (height, width), got {crop_size}")
        self.crop_size: tuple[int, int] = (int(crop[0]), int(crop[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.scales = scale_choices(self.scale_range, scale_step)
        self.hflip = hflip
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.ignore_index = ignore_index
        self.fill = [round(255 * m) for m in self.mean]

    def __repr__(self) -> str:
        scales = self.scales if self.scales is not None else f"uniform{self.scale_range}"
        return f"TrainTransform(crop_size={self.crop_size}, scales={scales}, hflip={self.hflip})"

    def sample_scale(self) -> float:
        """Draw one scale factor with torch's global generator."""
        if self.scales is None:
            low, high = self.scale_range
            return low + (high - low) * float(torch.rand(()))
        return self.scales[int(torch.randint(len(self.scales), ()))]

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        image, mask = self._rescale(image, mask, self.sample_scale())
        image, mask = self._pad(image, mask)
        image, mask = self._crop(image, mask)
        if self.hflip and bool(torch.rand(()) < 0.5):
            image, mask = F.horizontal_flip(image), F.horizontal_flip(mask)
        return normalize_image(image, self.mean, self.std), _mask_to_long(mask)

    def _rescale(
        self, image: tv_tensors.Image, mask: tv_tensors.Mask, scale: float
    ) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        height, width = image.shape[-2:]
        size = [max(1, round(height * scale)), max(1, round(width * scale))]
        if size == [height, width]:
            return image, mask
        image = F.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        # NEAREST_EXACT samples pixel centres, the same grid as bilinear: labels stay on their pixels.
        mask = F.resize(mask, size, interpolation=InterpolationMode.NEAREST_EXACT)
        return image, mask

    def _pad(
        self, image: tv_tensors.Image, mask: tv_tensors.Mask
    ) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        height, width = image.shape[-2:]
        pad_bottom = max(0, self.crop_size[0] - height)
        pad_right = max(0, self.crop_size[1] - width)
        if pad_bottom == 0 and pad_right == 0:
            return image, mask
        padding = [0, 0, pad_right, pad_bottom]
        fill = self.fill if image.dtype == torch.uint8 else list(self.mean)  # float images are on the 0..1 scale
        return F.pad(image, padding, fill=fill), F.pad(mask, padding, fill=self.ignore_index)

    def _crop(
        self, image: tv_tensors.Image, mask: tv_tensors.Mask
    ) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        height, width = image.shape[-2:]
        crop_h, crop_w = self.crop_size
        top = int(torch.randint(height - crop_h + 1, ()))
        left = int(torch.randint(width - crop_w + 1, ()))
        return F.crop(image, top, left, crop_h, crop_w), F.crop(mask, top, left, crop_h, crop_w)


def resize_to_range_size(height: int, width: int, min_size: int, max_size: int,
                         factor: int | None = None) -> tuple[int, int]:
    """The size the TF reference's ``preprocess_utils.resize_to_range`` gives an image (its float32 arithmetic):
    the shorter side scaled to ``min_size`` unless the longer one would then pass ``max_size`` (then the longer
    side scaled to ``max_size``, lowered first to a multiple of ``factor`` plus one), each side then raised to a
    multiple of ``factor`` plus one. The zoo's ADE20K models: 513, 513, 16 (longer side 513)."""
    f32 = np.float32
    if factor is not None:
        max_size = max_size - (max_size - 1) % factor
    scale = f32(min_size) / f32(min(height, width))
    size = [int(np.floor(f32(height) * scale)), int(np.floor(f32(width) * scale))]
    if max(size) > max_size:
        scale = f32(max_size) / f32(max(height, width))
        size = [int(np.floor(f32(height) * scale)), int(np.floor(f32(width) * scale))]
    if factor is not None:
        size = [side + (factor - (side - 1) % factor) % factor for side in size]
    return size[0], size[1]


def _nearest_aligned(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF's ``resize_nearest_neighbor(..., align_corners=True)`` of an ``... x H x W`` mask: source row
    ``round(i * (H - 1) / (h - 1))`` (half away from zero), the same for columns."""
    def index(new: int, old: int) -> torch.Tensor:
        step = (old - 1) / (new - 1) if new > 1 else 0.0
        return torch.floor(torch.arange(new, dtype=torch.float32) * step + 0.5).long().clamp_(max=old - 1)

    rows = mask.index_select(-2, index(size[0], mask.shape[-2]))
    return rows.index_select(-1, index(size[1], mask.shape[-1]))


class EvalTransform:
    """The image normalised to float32, the mask to int64 (same layout); no geometry change unless ``resize_to_range``
    (``(min_size, max_size, factor)``) asks for the TF reference's resize of both (:func:`resize_to_range_size`:
    the image bilinear with ``align_corners=True``, the mask nearest, as the reference's ``input_preprocess``)."""

    def __init__(self, *, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 resize_to_range: tuple[int, int, int | None] | None = None) -> None:
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.resize_to_range = tuple(resize_to_range) if resize_to_range is not None else None

    def __repr__(self) -> str:
        extra = f", resize_to_range={self.resize_to_range}" if self.resize_to_range else ""
        return f"EvalTransform(mean={self.mean}, std={self.std}{extra})"

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[torch.Tensor, torch.Tensor]:
        x, target = normalize_image(image, self.mean, self.std), _mask_to_long(mask)
        if self.resize_to_range is not None:
            size = resize_to_range_size(x.shape[-2], x.shape[-1], *self.resize_to_range)
            # bilinear commutes with the per-channel normalisation: resizing the normalised image is the same
            x = torch.nn.functional.interpolate(x[None], size=size, mode="bilinear", align_corners=True)[0]
            target = _nearest_aligned(target, size)
        return x, target


train_transforms = TrainTransform
"""DeepLab's training augmentation as one paired transform (see :class:`TrainTransform`)."""


def eval_transforms(
    *, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
    resize_to_range: tuple[int, int, int | None] | None = None,
) -> PairTransform:
    """Evaluation transform: normalise the image, keep the geometry (unless ``resize_to_range``: see
    :class:`EvalTransform`), mask to int64."""
    return EvalTransform(mean=mean, std=std, resize_to_range=resize_to_range)
