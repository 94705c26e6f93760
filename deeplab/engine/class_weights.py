"""``train.class_weights``: given per class, or ``auto``: median-frequency weights from the training masks."""

from __future__ import annotations

from collections.abc import Sequence

from ..data import SegmentationDataset
from ..data.stats import class_pixel_counts, median_frequency_weights


def resolve_class_weights(setting: Sequence[float] | str | None, dataset: SegmentationDataset, *, task: str,
                          progress: bool = False) -> list[float] | None:
    """The ``ce``/``bce`` pixel weights ``train.class_weights`` asks for (``None``: unweighted).

    ``auto`` counts the labelled pixels of the training masks (:func:`deeplab.data.stats.class_pixel_counts`:
    per class, background and foreground for ``binary``, each label's positive pixels for ``multilabel``) and
    gives their median-frequency weights (:func:`deeplab.data.stats.median_frequency_weights`).
    """
    if setting is None or isinstance(setting, list | tuple):
        return None if setting is None else [float(w) for w in setting]
    if setting != "auto":
        raise ValueError(f"train.class_weights={setting!r}: expected a list of numbers (one per class) or 'auto'")
    counts = class_pixel_counts(dataset, task=task, progress=progress)
    if not counts.any():
        raise ValueError("train.class_weights=auto: the training masks have no labelled pixels to count")
    return [float(w) for w in median_frequency_weights(counts)]
