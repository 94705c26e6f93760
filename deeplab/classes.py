"""Class names of the standard datasets, in label order; a bottom-layer module (beside the palettes).

The datasets (``deeplab.data``) and the published weights (``deeplab.models.published``) both name
their classes from here.
"""

from __future__ import annotations

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
"""The 21 VOC 2012 classes in label order (0 = background), as spelled by the VOC devkit."""

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
"""The 19 evaluated Cityscapes classes in train-id order (cityscapesScripts' ``labels.py``)."""

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair",
    "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
"""The 150 SceneParsing classes in label order: the first name of each row of the benchmark's
``objectInfo150.txt`` (stored id ``k`` is class ``k - 1`` here)."""

ADE20K_CLASSES_WITH_OTHER: tuple[str, ...] = ("other", *ADE20K_CLASSES)
"""The 151 labels as stored in the annotation PNGs (0 = "other"), the classes of the TF model zoo's ADE20K model."""


# Class names by dataset, for the zoo's three; a checkpoint's class count picks the default.
_DATASET_BY_CLASSES = {21: "voc", 19: "cityscapes", 151: "ade20k"}


def dataset_classes(dataset: str | None, num_classes: int) -> tuple[list[str], list[tuple[int, int, int]]]:
    """(class names, palette) for ``dataset`` (default: guessed from the class count; generic names otherwise)."""
    from .palettes import CITYSCAPES_PALETTE, voc_palette

    known = {"voc": (VOC_CLASSES, voc_palette(len(VOC_CLASSES))),
             "cityscapes": (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
             # the zoo's ADE20K model predicts the 151 labels of the annotations: 0 is "other" (unlabelled)
             "ade20k": (ADE20K_CLASSES_WITH_OTHER, voc_palette(len(ADE20K_CLASSES_WITH_OTHER)))}
    dataset = dataset or _DATASET_BY_CLASSES.get(num_classes)
    if dataset is None:
        return [f"class_{i}" for i in range(num_classes)], voc_palette(num_classes)
    classes, palette = known[dataset]
    if len(classes) != num_classes:
        raise ValueError(f"the checkpoint predicts {num_classes} classes; {dataset} has {len(classes)}")
    return list(classes), list(palette)


def dataset_for_classes(num_classes: int) -> str | None:
    """The standard dataset a class count names (21 voc, 19 cityscapes, 151 ade20k), if any."""
    return _DATASET_BY_CLASSES.get(num_classes)
