"""Mask formats: stored values to class ids (``data.label_map``), colour masks, binary and multilabel targets.

The tasks (``model.task``) and the targets a dataset yields for them:

- ``multiclass``: ``H x W`` class ids ``0..C-1``, or ``ignore_index``.
- ``binary``: ``H x W`` holding 0 (background), 1 (foreground) or ``ignore_index``.
- ``multilabel``: ``L x H x W``, one plane per label holding 0, 1 or ``ignore_index``.

Masks of a binary or multilabel folder may be saved 0/1 (255 then means "ignore") or 0/255: when no mask of
the folder holds the value 1 and some hold 255, 255 is read as 1 (:func:`binary_table`). An explicit
``data.label_map`` always wins over that rule.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

TASKS = ("multiclass", "binary", "multilabel")

Colour = tuple[int, int, int]


def label_table(label_map: Mapping[int, int] | None) -> np.ndarray | None:
    """A 256-entry uint8 lookup table from ``{stored value: class id}``; unlisted values stay as they are.

    Raises:
        ValueError: a key or value outside 0..255, naming it.
    """
    if not label_map:
        return None
    table = np.arange(256, dtype=np.uint8)
    for stored, label in label_map.items():
        for what, value in (("key", stored), ("value", label)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value <= 255:
                raise ValueError(f"data.label_map {what} {value!r} must be an integer in 0..255 (a mask value)")
        table[stored] = label
    return table


def binary_table(values: Collection[int], ignore_index: int) -> np.ndarray | None:
    """The table that reads 0/255 masks as 0/1: when ``values`` (every value stored in the folder's masks)
    hold ``ignore_index`` but not 1. ``None`` when the masks are 0/1 (with ``ignore_index`` as ignore)."""
    if 1 in values or ignore_index not in values:
        return None
    return label_table({ignore_index: 1})


def colour_keys(palette: Sequence[Colour]) -> np.ndarray:
    """Each colour as one integer ``R << 16 | G << 8 | B`` (the form colour masks are compared in)."""
    colours = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    return (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]


def key_colour(key: int) -> Colour:
    return (key >> 16) & 255, (key >> 8) & 255, key & 255


def pixel_keys(rgb: np.ndarray) -> np.ndarray:
    """The colour key of every pixel of an ``H x W x 3`` (or 4, alpha ignored) uint8 array."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colours_to_ids(keys: np.ndarray, palette_keys: np.ndarray, name: str = "mask") -> np.ndarray:
    """Maps colour keys (from :func:`pixel_keys`) to class ids: the index of the colour in ``palette_keys``.

    Raises:
        ValueError: naming ``name`` and the colours that are not in the palette.
    """
    order = np.argsort(palette_keys, kind="stable")
    ordered = palette_keys[order]
    where = np.clip(np.searchsorted(ordered, keys), 0, len(ordered) - 1)
    known = ordered[where] == keys
    if not known.all():
        raise ValueError(unknown_colours_problem(name, np.unique(keys[~known]).tolist()))
    return order[where].astype(np.uint8)


def unknown_colours_problem(name: str, keys: Sequence[int]) -> str:
    shown = ", ".join(str(key_colour(int(k))) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
    return (f"{name}: colour(s) {shown} are not in classes.txt; list every colour of the masks there as "
            "'name R G B', one class per line")


def mask_summary(values: Mapping[int, int], *, task: str, colour: bool, multilabel: bool, label_map: bool,
                 ignore_index: int) -> tuple[str, str | None]:
    """What ``data check`` says about the masks of a folder: which format they are in, and the config line
    that fits it (``None`` when the current settings already read them right).

    Args:
        values: pixel count per value stored in the (single-channel) masks, before any label map.
        task: ``model.task``.
        colour: the masks are RGB colour masks.
        multilabel: the masks are folders of one PNG per class.
        label_map: ``data.label_map`` is set.
        ignore_index: the ignore value.
    """
    if multilabel:
        found = "multilabel masks: one PNG per class in masks/<stem>/<class name>.png"
        return found, None if task == "multilabel" else "set model.task=multilabel"
    if colour:
        found = "RGB colour masks, mapped to class ids through the colours in classes.txt"
        return found, None if task == "multiclass" else "colour masks are multiclass: set model.task=multiclass"
    present = sorted(v for v, n in values.items() if n)
    listed = ", ".join(str(v) for v in present[:12]) + (", ..." if len(present) > 12 else "")
    if present and set(present) <= {0, ignore_index} and ignore_index in present:
        found = f"masks hold only 0 and {ignore_index}"
        if task == "binary" or label_map:
            return f"{found}: read as background 0 and foreground {ignore_index}", None
        return found, f"set model.task=binary, or data.label_map={{{ignore_index}: 1}}"
    if present and set(present) <= {0, 1, ignore_index}:
        found = f"masks hold only {listed}: binary masks (0 background, 1 foreground"
        found += f", {ignore_index} ignored)" if ignore_index in present else ")"
        if task == "multiclass" and not label_map:
            return found, "set model.task=binary for one sigmoid output (or keep 2 softmax classes as now)"
        return found, None
    found = f"index masks (pixel value = class id): values {listed}"
    if ignore_index in present:
        found += f" ({ignore_index} = ignore)"
    if task != "multiclass" and not label_map:
        return found, "these are class ids, not binary masks: set model.task=multiclass, or a data.label_map " \
                      "to 0/1"
    return found, None
