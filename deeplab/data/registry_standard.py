"""Names of the standard benchmark loaders, as used by ``deeplab data prepare|check`` and configs."""

from __future__ import annotations

from deeplab.data.ade20k import ADE20KSegmentation
from deeplab.data.base import SegmentationDataset
from deeplab.data.cityscapes import CityscapesSegmentation
from deeplab.data.voc import VOCAugSegmentation, VOCSegmentation

DATASETS: dict[str, type[SegmentationDataset]] = {
    "voc": VOCSegmentation,
    "voc_aug": VOCAugSegmentation,
    "cityscapes": CityscapesSegmentation,
    "ade20k": ADE20KSegmentation,
}
"""Dataset name -> loader class; every class takes ``(root, split, *, transforms=None)``."""
