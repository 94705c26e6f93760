"""Dataset statistics: class pixel frequencies (for class weights) and per-channel image mean / std.

- :func:`class_pixel_counts` counts the pixels of each class over a dataset's masks; training's
  ``train.class_weights: auto`` turns them into :func:`median_frequency_weights`, and ``deeplab data check``
  prints both.
- :func:`channel_stats` computes the per-channel mean and standard deviation of a folder's images on the
  0..1 scale: the values for ``model.mean`` / ``model.std`` (``deeplab data stats ROOT``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..imageio import read_bands
from .base import SegmentationDataset
from .verify import verify_dataset


def class_pixel_counts(dataset: SegmentationDataset, *, task: str | None = None, progress: bool = False) -> np.ndarray:
    """The number of pixels of each class over the masks of ``dataset`` (int64, one entry per class).

    Ignored pixels are not counted. ``task`` (default: the dataset's ``task``, else multiclass) says what the
    entries are: per class (multiclass); background (0) and foreground (1) for ``"binary"``; one entry per label
    for ``"multilabel"``, counting the pixels where it is on. A :class:`~deeplab.data.FolderDataset` counted them
    when it checked its files (no decoding here); a dataset of files is checked by
    :func:`deeplab.data.verify.verify_dataset` (parallel, cached per file); generated multilabel targets are
    loaded sample by sample.
    """
    task = task or getattr(dataset, "task", "multiclass")
    counted = getattr(dataset, "class_pixels", None)
    if counted is not None and task == getattr(dataset, "task", "multiclass"):
        return np.asarray(counted, dtype=np.int64).copy()
    if task == "multilabel":
        counts = np.zeros(dataset.num_classes, dtype=np.int64)
        for index in tqdm(range(len(dataset)), desc="count class pixels", disable=not progress, delay=0.5):
            target = np.asarray(dataset.load(index)[1]).reshape(dataset.num_classes, -1)
            counts += (target == 1).sum(axis=1)
        return counts
    pixels = verify_dataset(dataset, progress=progress, desc="count class pixels").pixels
    return pixels[: 2 if task == "binary" else dataset.num_classes].astype(np.int64)


def median_frequency_weights(counts: Iterable[int]) -> np.ndarray:
    """Median-frequency class weights (Eigen & Fergus, 2015): ``median(freq) / freq[c]``, ``freq`` = each class's
    share of the counted pixels, the median (the lower one for an even count, as ``torch.median``) taken over the
    classes that occur. A class without pixels gets weight 1 (it is in no target, so its weight does nothing)."""
    counts = np.asarray(list(counts), dtype=np.float64)
    weights = np.ones_like(counts)
    present = counts > 0
    if present.any():
        freq = counts / counts.sum()
        ordered = np.sort(freq[present])
        median = ordered[(len(ordered) - 1) // 2]
        weights[present] = median / freq[present]
    return weights


@dataclass
class ChannelStats:
    """Per-channel statistics of a set of images, on the 0..1 scale the model normalises."""

    mean: list[float]
    std: list[float]
    images: int
    pixels: int

    def config_lines(self) -> str:
        """The config overrides that use these statistics."""
        def fmt(values: list[float]) -> str:
            return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"

        return f"model.mean={fmt(self.mean)} model.std={fmt(self.std)}"


def channel_stats(paths: Iterable[str | Path], channels: int = 3, *, max_value: float | None = None,
                  progress: bool = False) -> ChannelStats:
    """Mean and (population) standard deviation of each channel over every pixel of the images ``paths``,
    read as training reads them (:func:`deeplab.imageio.read_bands`: uint8 / 255, 16-bit / 65535 or
    ``max_value``). Sums are kept in float64, so the result does not depend on the order or image sizes.

    Raises:
        ValueError: if ``paths`` is empty.
    """
    paths = list(paths)
    if not paths:
        raise ValueError("no images to compute statistics of")
    total = np.zeros(channels)
    squares = np.zeros(channels)
    pixels = 0
    for path in tqdm(paths, desc="channel stats", unit="image", disable=not progress, delay=0.5):
        bands = read_bands(path, channels, max_value).numpy()
        image = bands.reshape(channels, -1).astype(np.float64) / (255.0 if bands.dtype == np.uint8 else 1.0)
        total += image.sum(axis=1)
        squares += np.square(image).sum(axis=1)
        pixels += image.shape[1]
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - np.square(mean), 0.0))
    return ChannelStats(mean.tolist(), std.tolist(), len(paths), pixels)
