"""COCO-format instance annotations to a folder dataset (``deeplab data import-coco``).

Each image of the annotation file gets an index mask ``masks/<stem>.png`` (palette PNG, pixel value = class id)
drawn from its instances' polygons or RLE through pycocotools, and is copied to ``images/``; ``classes.txt``
lists ``background`` (id 0) and the categories in the order of their COCO ids (ids 1..K).

How overlaps and crowds are resolved (the semantic mask holds one class per pixel):

- instances are painted from the largest area to the smallest, so where two overlap the smaller one wins
  (it is usually the one in front, and the larger one stays visible around it);
- crowd regions (``iscrowd: 1``) become ``ignore_index`` (255) with ``crowd="ignore"`` (the default, as the COCO
  benchmarks do not score them) or their category with ``crowd="class"``; either way they are painted first,
  so an individual instance that overlaps a crowd keeps its pixels;
- an image without annotations gets an all-background mask.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings
from pathlib import Path

import numpy as np

from ..constants import IGNORE_INDEX
from ..imageio import atomic_write, save_index_png
from ..palettes import default_palette

CROWD_MODES = ("ignore", "class")


def import_coco(annotations: str | Path, images_dir: str | Path, out: str | Path, *, crowd: str = "ignore") -> str:
    """Writes ``out/images``, ``out/masks`` and ``out/classes.txt`` from a COCO annotation file; returns a summary.

    Args:
        annotations: the COCO JSON (``instances_*.json``): images, annotations (polygons or RLE), categories.
        images_dir: the folder the images' ``file_name`` entries are relative to.
        out: the dataset root to write (created; existing files of the same names are replaced).
        crowd: ``"ignore"`` (crowd regions -> 255) or ``"class"`` (-> their category).

    Raises:
        ValueError: naming what is wrong: an unreadable annotation file, missing images, more than 254 categories,
            two images with the same file stem, an unknown ``crowd``.
    """
    if crowd not in CROWD_MODES:
        raise ValueError(f"crowd must be one of {', '.join(CROWD_MODES)}, got {crowd!r}")
    try:
        from pycocotools.coco import COCO
    except ImportError as err:
        raise ValueError("import-coco needs pycocotools: pip install 'deeplab[data]'") from err
    annotations, images_dir, out = Path(annotations), Path(images_dir), Path(out)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = COCO(str(annotations))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{annotations}: not a readable COCO annotation file ({type(err).__name__}: {err})") from err
    category_ids = sorted(coco.cats)
    if len(category_ids) > 254:
        raise ValueError(f"{annotations}: {len(category_ids)} categories; index masks hold at most 254 "
                         "(0 is background, 255 ignore)")
    class_of = {cat: index + 1 for index, cat in enumerate(category_ids)}
    images = [coco.imgs[i] for i in sorted(coco.imgs)]
    _check_images(images, images_dir, annotations)
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    palette = default_palette(len(category_ids) + 1)
    counts = {"instances": 0, "crowd": 0}
    for info in images:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=info["id"], iscrowd=None))
        mask = _semantic_mask(coco, info, anns, class_of, crowd, counts)
        source = images_dir / info["file_name"]
        with source.open("rb") as src, atomic_write(out / "images" / source.name) as dst:
            shutil.copyfileobj(src, dst)
        save_index_png(mask, out / "masks" / f"{source.stem}.png", palette)
    names = ["background", *(str(coco.cats[c]["name"]) for c in category_ids)]
    with atomic_write(out / "classes.txt", "w") as handle:
        handle.write("".join(f"{name} {r} {g} {b}\n" for name, (r, g, b) in zip(names, palette, strict=True)))
    return (f"{len(images)} images, {counts['instances']} instances and {counts['crowd']} crowd regions "
            f"({'ignored' if crowd == 'ignore' else 'as their class'}) -> {out} ({len(names)} classes with "
            "background; masks/<stem>.png hold class ids)")


def _check_images(images: list[dict], images_dir: Path, annotations: Path) -> None:
    missing = [str(info["file_name"]) for info in images if not (images_dir / info["file_name"]).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{annotations}: {len(missing)} image(s) not found in {images_dir}: {shown}")
    stems: dict[str, str] = {}
    for info in images:
        stem = Path(info["file_name"]).stem
        if stem in stems:
            raise ValueError(f"{annotations}: images {stems[stem]!r} and {info['file_name']!r} share the stem "
                             f"{stem!r}; the folder layout matches images and masks by stem")
        stems[stem] = info["file_name"]


def _semantic_mask(coco, info: dict, anns: list[dict], class_of: dict[int, int], crowd: str,
                   counts: dict[str, int]) -> np.ndarray:
    """One image's class-id mask: crowds first, then instances from the largest to the smallest."""
    mask = np.zeros((int(info["height"]), int(info["width"])), dtype=np.uint8)
    ordered = sorted(anns, key=lambda a: (not a.get("iscrowd", 0), -float(a.get("area", 0.0))))
    for ann in ordered:
        if ann["category_id"] not in class_of:
            raise ValueError(f"annotation {ann.get('id')} names category {ann['category_id']}, which is not listed")
        with warnings.catch_warnings():  # pycocotools 2.0.x's decode warns about numpy 2's copy keyword
            warnings.simplefilter("ignore", DeprecationWarning)
            region = coco.annToMask(ann).astype(bool)
        is_crowd = bool(ann.get("iscrowd", 0))
        counts["crowd" if is_crowd else "instances"] += 1
        mask[region] = IGNORE_INDEX if is_crowd and crowd == "ignore" else class_of[ann["category_id"]]
    return mask
