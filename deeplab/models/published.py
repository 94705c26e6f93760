"""Published segmentation weights that load by name, e.g. ``"deeplabv3_resnet101.coco_voc"``.

They are fetched through torch.hub's download function and cache, with the same URL and file name
that torchvision uses, so a file torchvision already downloaded (or one placed by hand in
``torch.hub.get_dir()/checkpoints/``) is used without a network connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.models import segmentation as tv_segmentation

from ..constants import Colour
from ..palettes import voc_palette


@dataclass(frozen=True)
class PublishedWeights:
    """A named set of weights: which model it fits, where it lives, the classes it predicts."""

    name: str
    model: str
    url: str
    classes: tuple[str, ...]
    description: str

    @property
    def palette(self) -> list[Colour]:
        return voc_palette(len(self.classes))

    @property
    def file_name(self) -> str:
        return Path(self.url).name

    def cache_path(self) -> Path:
        """Where torch.hub keeps (or will keep) the file."""
        return Path(torch.hub.get_dir()) / "checkpoints" / self.file_name


def _torchvision_coco_voc(model: str, weights: tv_segmentation.DeepLabV3_ResNet50_Weights) -> PublishedWeights:
    # torchvision's metadata names class 0 "__background__"; VOC and the rest of deeplab say "background".
    classes = tuple("background" if c == "__background__" else c for c in weights.meta["categories"])
    miou = weights.meta["_metrics"]["COCO-val2017-VOC-labels"]["miou"]
    return PublishedWeights(
        f"{model}.coco_voc", model, weights.url, classes,
        f"torchvision's {model} trained on the COCO subset with the 20 VOC classes (COCO val mIoU {miou})",
    )


PUBLISHED_WEIGHTS: dict[str, PublishedWeights] = {
    w.name: w for w in (
        _torchvision_coco_voc("deeplabv3_resnet50", tv_segmentation.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1),
        _torchvision_coco_voc("deeplabv3_resnet101",
                              tv_segmentation.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1),
    )
}


def published_weights(name: str) -> PublishedWeights:
    """The entry for a published weights name; a clear error lists the valid names."""
    if name not in PUBLISHED_WEIGHTS:
        raise ValueError(f"unknown published weights {name!r}; valid names: {', '.join(sorted(PUBLISHED_WEIGHTS))}")
    return PUBLISHED_WEIGHTS[name]


def fetch_published(weights: PublishedWeights) -> dict[str, Tensor]:
    """The state dict, from torch.hub's cache or downloaded into it (with torchvision's hash check)."""
    try:
        return torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=True, check_hash=True,
                                                  weights_only=True)
    except Exception as err:  # network and hash errors come in many types; all mean the same to the user
        raise RuntimeError(
            f"could not fetch the published weights {weights.name!r} from {weights.url} ({type(err).__name__}: "
            f"{err}). Without internet, download that file elsewhere and place it at {weights.cache_path()}."
        ) from err
