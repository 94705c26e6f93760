"""Datasets (embedded demo, any folder, VOC/SBD, Cityscapes, ADE20K), paired transforms, the check of their files."""

from .base import IGNORE_INDEX, SegmentationDataset
from .demo import DemoDataset
from .folder import FolderDataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transforms, train_transforms

__all__ = ["IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "DemoDataset", "FolderDataset", "SegmentationDataset",
           "eval_transforms", "train_transforms"]
