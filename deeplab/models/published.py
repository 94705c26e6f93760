"""Published weights that load by name: ``create_model(..., weights=NAME)``, ``deeplab predict --pretrained NAME``.

Two families, both fetched into torch.hub's cache (``torch.hub.get_dir()/checkpoints/``), where a file
placed by hand is used without a network connection:

- torchvision's DeepLabV3 (``deeplabv3_resnet101.coco_voc``): its state dicts, with torchvision's URL,
  file name and hash check;
- the authors' TensorFlow model zoo (``deeplabv3plus_xception65.tf_voc_trainaug``, ...; research/deeplab
  ``g3doc/model_zoo.md``): the zoo's tarball is read by :mod:`deeplab.tfcheckpoint`, converted once by
  :mod:`deeplab.models.tf_import` and the result cached as a ``.pt`` beside the tarball
  (:mod:`deeplab.models.tf_hub`). Their ImageNet checkpoints (:data:`TF_BACKBONES`) initialise a
  backbone: ``create_model(..., pretrained_backbone="xception_65_imagenet")``.

Each entry keeps the classes, palette and published figures (mIoU with its evaluation protocol) with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.models import segmentation as tv_segmentation

from ..classes import ADE20K_CLASSES_WITH_OTHER, CITYSCAPES_CLASSES, VOC_CLASSES
from ..constants import Colour
from ..palettes import CITYSCAPES_PALETTE, voc_palette

TF_ZOO_URL = "http://download.tensorflow.org/models/"


def format_scales(scales: tuple[float, ...]) -> str:
    """``(1.0,)`` -> ``1.0``; an even progression -> ``start:step:stop`` as the zoo writes it."""
    if len(scales) == 1:
        return f"{scales[0]:g}" if scales[0] != 1.0 else "1.0"
    steps = {round(b - a, 6) for a, b in zip(scales, scales[1:], strict=False)}
    if len(steps) == 1:
        return f"{scales[0]:g}:{steps.pop():g}:{scales[-1]:g}"
    return ",".join(f"{s:g}" for s in scales)


@dataclass(frozen=True)
class Result:
    """A published mIoU and the protocol that gave it."""

    miou: float
    split: str  # "val" or "test"
    output_stride: int
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def protocol(self) -> str:
        return f"OS{self.output_stride}, scales {format_scales(self.scales)}, {'flip' if self.flip else 'no flip'}"

    def __str__(self) -> str:
        return f"{self.miou:.2f}% {self.split} ({self.protocol()})"


@dataclass(frozen=True)
class PublishedWeights:
    """A named set of weights: which model it fits, where it lives, the classes it predicts, what it scored.

    ``source`` says what the URL holds: ``"torchvision"`` a state dict, ``"tf"`` a model-zoo tarball.
    """

    name: str
    model: str
    url: str
    classes: tuple[str, ...]
    description: str
    colours: tuple[Colour, ...] | None = None  # default: the VOC colour map
    source: str = "torchvision"
    dataset: str | None = None
    results: tuple[Result, ...] = ()

    @property
    def palette(self) -> list[Colour]:
        return list(self.colours) if self.colours is not None else voc_palette(len(self.classes))

    @property
    def file_name(self) -> str:
        return Path(self.url).name

    def cache_path(self) -> Path:
        """Where torch.hub keeps (or will keep) the downloaded file."""
        return Path(torch.hub.get_dir()) / "checkpoints" / self.file_name

    def results_text(self) -> str:
        return "; ".join(str(result) for result in self.results) or "—"


@dataclass(frozen=True)
class TFBackbone:
    """An ImageNet checkpoint of the TF model zoo, for ``pretrained_backbone=NAME`` of the models it fits."""

    name: str
    url: str
    models: tuple[str, ...]
    description: str

    @property
    def file_name(self) -> str:
        return Path(self.url).name

    def cache_path(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / self.file_name


def _torchvision_coco_voc(model: str, weights: tv_segmentation.DeepLabV3_ResNet50_Weights) -> PublishedWeights:
    # torchvision's metadata names class 0 "__background__"; VOC and the rest of deeplab say "background".
    classes = tuple("background" if c == "__background__" else c for c in weights.meta["categories"])
    miou = weights.meta["_metrics"]["COCO-val2017-VOC-labels"]["miou"]
    return PublishedWeights(
        f"{model}.coco_voc", model, weights.url, classes,
        f"torchvision's {model} trained on the COCO subset with the 20 VOC classes (COCO val mIoU {miou})",
    )


_VOC_MS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
_CITYSCAPES_MS = (0.75, 1.0, 1.25)
_DATASETS: dict[str, tuple[tuple[str, ...], tuple[Colour, ...] | None]] = {
    "voc": (VOC_CLASSES, None),
    "cityscapes": (CITYSCAPES_CLASSES, tuple(CITYSCAPES_PALETTE)),
    "ade20k": (ADE20K_CLASSES_WITH_OTHER, tuple(voc_palette(len(ADE20K_CLASSES_WITH_OTHER)))),
}


def _tf_zoo(model: str, tag: str, tarball: str, dataset: str, description: str,
            *results: Result) -> PublishedWeights:
    classes, colours = _DATASETS[dataset]
    return PublishedWeights(f"{model}.{tag}", model, TF_ZOO_URL + tarball, classes, description, colours, "tf",
                            dataset, results)


_XCEPTION_V3PLUS = "deeplabv3plus_xception65"
_MOBILENET_V3 = "deeplabv3_mobilenetv2"

PUBLISHED_WEIGHTS: dict[str, PublishedWeights] = {
    w.name: w for w in (
        _torchvision_coco_voc("deeplabv3_resnet50", tv_segmentation.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1),
        _torchvision_coco_voc("deeplabv3_resnet101",
                              tv_segmentation.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1),
        # The authors' model zoo (g3doc/model_zoo.md), figures as published there.
        _tf_zoo(_XCEPTION_V3PLUS, "tf_voc_trainaug", "deeplabv3_pascal_train_aug_2018_01_04.tar.gz", "voc",
                "TF zoo xception65_coco_voc_trainaug: ImageNet, MS-COCO, VOC 2012 train_aug",
                Result(82.20, "val", 16), Result(83.58, "val", 8, _VOC_MS, True)),
        _tf_zoo(_XCEPTION_V3PLUS, "tf_voc_trainval", "deeplabv3_pascal_trainval_2018_01_04.tar.gz", "voc",
                "TF zoo xception65_coco_voc_trainval: ImageNet, MS-COCO, VOC 2012 train_aug + trainval",
                Result(87.80, "test", 8, _VOC_MS, True)),
        _tf_zoo(_MOBILENET_V3, "tf_voc_trainaug", "deeplabv3_mnv2_pascal_train_aug_2018_01_29.tar.gz", "voc",
                "TF zoo mobilenetv2_coco_voc_trainaug: ImageNet, MS-COCO, VOC 2012 train_aug",
                Result(75.32, "val", 16), Result(77.33, "val", 8, _VOC_MS, True)),
        _tf_zoo(_MOBILENET_V3, "tf_voc_trainval", "deeplabv3_mnv2_pascal_trainval_2018_01_29.tar.gz", "voc",
                "TF zoo mobilenetv2_coco_voc_trainval: ImageNet, MS-COCO, VOC 2012 train_aug + trainval",
                Result(80.25, "test", 8, _VOC_MS, True)),
        _tf_zoo(_XCEPTION_V3PLUS, "tf_cityscapes_trainfine", "deeplabv3_cityscapes_train_2018_02_06.tar.gz",
                "cityscapes", "TF zoo xception65_cityscapes_trainfine: ImageNet, Cityscapes train_fine",
                Result(78.79, "val", 16), Result(80.42, "val", 8, _CITYSCAPES_MS, True)),
        _tf_zoo(_MOBILENET_V3, "tf_cityscapes_trainfine", "deeplabv3_mnv2_cityscapes_train_2018_02_05.tar.gz",
                "cityscapes", "TF zoo mobilenetv2_coco_cityscapes_trainfine: ImageNet, MS-COCO, Cityscapes "
                "train_fine", Result(70.71, "val", 16), Result(73.57, "val", 8, _CITYSCAPES_MS, True)),
        _tf_zoo(_XCEPTION_V3PLUS, "tf_ade20k_train", "deeplabv3_xception_ade20k_train_2018_05_29.tar.gz", "ade20k",
                "TF zoo xception65_ade20k_train: ImageNet, ADE20K train; 151 classes, 0 = 'other' (as the "
                "annotation PNGs store them)", Result(45.65, "val", 8, _VOC_MS, True)),
    )
}

TF_BACKBONES: dict[str, TFBackbone] = {
    b.name: b for b in (
        TFBackbone("xception_41_imagenet", TF_ZOO_URL + "xception_41_2018_05_09.tar.gz", ("deeplabv3plus_xception41",),
                   "TF zoo Xception-41, ImageNet"),
        TFBackbone("xception_65_imagenet", TF_ZOO_URL + "deeplabv3_xception_2018_01_04.tar.gz",
                   ("deeplabv3plus_xception65",), "TF zoo Xception-65, ImageNet"),
        TFBackbone("xception_65_imagenet_coco", TF_ZOO_URL + "xception_65_coco_pretrained_2018_10_02.tar.gz",
                   ("deeplabv3plus_xception65",), "TF zoo Xception-65, ImageNet then MS-COCO"),
        TFBackbone("xception_71_imagenet", TF_ZOO_URL + "xception_71_2018_05_09.tar.gz", ("deeplabv3plus_xception71",),
                   "TF zoo Xception-71, ImageNet"),
        TFBackbone("resnet_v1_50_beta_imagenet", TF_ZOO_URL + "resnet_v1_50_2018_05_04.tar.gz",
                   ("deeplabv3plus_resnet50_beta", "deeplabv3_resnet50_beta"), "TF zoo ResNet-v1-50 beta, ImageNet"),
        TFBackbone("resnet_v1_101_beta_imagenet", TF_ZOO_URL + "resnet_v1_101_2018_05_04.tar.gz",
                   ("deeplabv3plus_resnet101_beta", "deeplabv3_resnet101_beta"),
                   "TF zoo ResNet-v1-101 beta, ImageNet"),
    )
}


def published_weights(name: str) -> PublishedWeights:
    """The entry for a published weights name; a clear error lists the valid names."""
    if name not in PUBLISHED_WEIGHTS:
        raise ValueError(f"unknown published weights {name!r}; valid names: {', '.join(sorted(PUBLISHED_WEIGHTS))}")
    return PUBLISHED_WEIGHTS[name]
