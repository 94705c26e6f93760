"""``train.class_weights``: given per class, or ``auto``: median-frequency weights from the training masks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from ..data import SegmentationDataset
from ..losses import median_frequency_weights


def resolve_class_weights(setting: Sequence[float] | str | None, dataset: SegmentationDataset, *, task: str,
                          num_classes: int, ignore_index: int, progress: bool = False) -> list[float] | None:
    """The ``ce``/``bce`` pixel weights ``train.class_weights`` asks for (``None``: unweighted).

    ``auto`` counts the labelled pixels of every training mask (as loaded, before augmentation) and gives
    :func:`deeplab.losses.median_frequency_weights` of them: per class (multiclass), background and
    foreground (binary), or each label's positive pixels (multilabel).
    """
    if setting is None or isinstance(setting, list | tuple):
        return None if setting is None else [float(w) for w in setting]
    if setting != "auto":
        raise ValueError(f"train.class_weights={setting!r}: expected a list of numbers (one per class) or 'auto'")
    counts = _class_pixel_counts(dataset, task=task, num_classes=num_classes, ignore_index=ignore_index,
                                 progress=progress)
    return median_frequency_weights(counts)


def _class_pixel_counts(dataset: SegmentationDataset, *, task: str, num_classes: int, ignore_index: int,
                        progress: bool) -> list[int]:
    """Labelled pixels per class (binary: 0 and 1; multilabel: each label's 1s) over ``dataset``'s masks.

    A private stand-in for the data layer's ``deeplab.data.stats.class_pixel_counts`` (issue 25): it loads
    each sample through ``dataset.load``, images included.
    """
    size = 2 if task == "binary" else num_classes
    counts = torch.zeros(size, dtype=torch.long)
    for index in tqdm(range(len(dataset)), desc="class weights", unit="mask", leave=False, disable=not progress):
        mask = torch.as_tensor(dataset.load(index)[1]).long()
        if task == "multilabel":
            counts += (mask == 1).reshape(num_classes, -1).sum(1)
            continue
        labelled = mask[mask != ignore_index]
        if labelled.numel() and (labelled.min() < 0 or labelled.max() >= size):
            raise ValueError(f"mask of sample {index} holds {labelled.unique().tolist()}: expected 0..{size - 1} "
                             f"or {ignore_index} for a {task} model")
        counts += torch.bincount(labelled, minlength=size)
    return counts.tolist()
