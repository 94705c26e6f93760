"""Writers of tiny datasets in the exact on-disk layouts of the real benchmarks."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image

H, W = 20, 30



def _voc_colours() -> list[int]:
    """The flat VOC colour map, computed here so the fixtures do not depend on the code under test."""
    flat = []
    for label in range(256):
        rgb, code = [0, 0, 0], label
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((code >> channel) & 1) << bit
            code >>= 3
        flat.extend(rgb)
    return flat


VOC_COLOURS = _voc_colours()


def write_jpg(path: Path, seed: int, size: tuple[int, int] = (H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def write_png_rgb(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


def write_palette_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask.astype(np.uint8), mode="L")
    image.putpalette(VOC_COLOURS)  # -> mode "P", like VOC's SegmentationClass files
    image.save(path)


def write_gray_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)


def object_mask(label: int, border: bool = True) -> np.ndarray:
    """Background with one object of class ``label``; VOC style 255 outline around it if ``border``."""
    mask = np.zeros((H, W), dtype=np.uint8)
    if border:
        mask[4:16, 6:24] = 255
    mask[5:15, 7:23] = label
    return mask


def make_voc(root: Path, train: dict[str, int], val: dict[str, int], extra_images: list[str] = ()) -> Path:
    """VOCdevkit/VOC2012 with JPEGs, palette masks (id -> class) and the three split files."""
    voc = root / "VOCdevkit" / "VOC2012"
    for seed, stem in enumerate([*train, *val, *extra_images]):
        write_jpg(voc / "JPEGImages" / f"{stem}.jpg", seed)
    for stem, label in {**train, **val}.items():
        write_palette_png(voc / "SegmentationClass" / f"{stem}.png", object_mask(label))
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("".join(f"{s}\n" for s in sorted(train)))
    (sets / "val.txt").write_text("".join(f"{s}\n" for s in sorted(val)))
    (sets / "trainval.txt").write_text("".join(f"{s}\n" for s in sorted([*train, *val])))
    (voc / "Annotations").mkdir()  # present in the real archive, unused here
    return voc


def make_damaged_voc(root: Path) -> Path:
    """VOC val with a corrupt JPEG, a mask of the wrong size and a mask holding class id 30; returns ``root``."""
    voc = make_voc(root, {"2007_000032": 1}, {"2007_000033": 2, "2007_000042": 3, "2007_000061": 4})
    (voc / "JPEGImages" / "2007_000033.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    write_palette_png(voc / "SegmentationClass" / "2007_000042.png", np.zeros((10, 10), np.uint8))
    write_palette_png(voc / "SegmentationClass" / "2007_000061.png", object_mask(30))
    return root


def write_sbd_mat(path: Path, segmentation: np.ndarray) -> None:
    """An SBD ``cls/<id>.mat``: struct ``GTcls`` with ``Boundaries`` (20 x 1 cell of sparse matrices),
    ``Segmentation`` (uint8 H x W) and ``CategoriesPresent``, as in ``benchmark.tgz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix((segmentation == k + 1).astype(bool))
    present = np.unique(segmentation[(segmentation > 0) & (segmentation < 255)]).astype(np.uint8)
    gt = {"Boundaries": boundaries, "Segmentation": segmentation.astype(np.uint8),
          "CategoriesPresent": present.reshape(-1, 1)}  # fmt: skip
    scipy.io.savemat(path, {"GTcls": gt})


def make_sbd(root: Path, train: dict[str, int], val: dict[str, int]) -> Path:
    """benchmark_RELEASE/dataset with cls/*.mat, img/*.jpg and train/val lists (SBD has no 255 borders)."""
    sbd = root / "benchmark_RELEASE" / "dataset"
    for seed, (stem, label) in enumerate({**train, **val}.items()):
        write_sbd_mat(sbd / "cls" / f"{stem}.mat", object_mask(label, border=False))
        write_jpg(sbd / "img" / f"{stem}.jpg", 100 + seed)
    (sbd / "train.txt").write_text("".join(f"{s}\n" for s in train))
    (sbd / "val.txt").write_text("".join(f"{s}\n" for s in val))
    return sbd


# VOC train/val and SBD train/val ids chosen to exercise every rule of the train_aug split:
# 2007_000129 is in VOC train and SBD (VOC's mask must win); 2007_000033 and 2007_000042 are VOC val
# images that SBD lists in its train and val sets (must be excluded).
VOC_TRAIN = {"2007_000032": 1, "2007_000039": 20, "2007_000129": 5}
VOC_VAL = {"2007_000033": 2, "2007_000042": 19}
SBD_TRAIN = {"2007_000129": 9, "2007_000033": 3, "2008_000002": 7, "2008_000003": 12}
SBD_VAL = {"2007_000042": 4, "2008_000007": 15}
SBD_ONLY = sorted({"2008_000002", "2008_000003", "2008_000007"})
TRAIN_AUG = sorted({"2007_000032", "2007_000039", "2007_000129", *SBD_ONLY})


def make_voc_aug_sources(root: Path) -> None:
    make_voc(root, VOC_TRAIN, VOC_VAL, extra_images=SBD_ONLY)
    make_sbd(root, SBD_TRAIN, SBD_VAL)


# Cityscapes label ids: 7 road -> 0, 8 sidewalk -> 1, 26 car -> 13, 33 bicycle -> 18,
# 0 unlabeled / 4 static / 9 parking / 14 guard rail -> 255.
CITYSCAPES_IDS = np.array([0, 4, 7, 8, 9, 14, 26, 33], dtype=np.uint8)
CITYSCAPES_TRAIN_IDS = np.array([255, 255, 0, 1, 255, 255, 13, 18], dtype=np.uint8)
CITYSCAPES_FILES = {
    "train": ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"],
    "val": ["frankfurt_000000_000294", "lindau_000000_000019"],
    "test": ["berlin_000000_000019"],
}


def cityscapes_label_ids() -> np.ndarray:
    return np.resize(CITYSCAPES_IDS, (H, W))


def make_cityscapes(root: Path) -> None:
    for seed, (split, stems) in enumerate(CITYSCAPES_FILES.items()):
        for stem in stems:
            city = stem.split("_")[0]
            write_png_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed)
            labels = root / "gtFine" / split / city
            write_gray_png(labels / f"{stem}_gtFine_labelIds.png", cityscapes_label_ids())
            write_gray_png(labels / f"{stem}_gtFine_instanceIds.png", cityscapes_label_ids())
            write_png_rgb(labels / f"{stem}_gtFine_color.png", seed)
            (labels / f"{stem}_gtFine_polygons.json").write_text("{}")


ADE_VALUES = np.array([0, 1, 2, 13, 150], dtype=np.uint8)  # 0 = "other"


def make_ade20k(root: Path, n_train: int = 3, n_val: int = 2) -> Path:
    base = root / "ADEChallengeData2016"
    for split, prefix, count in (("training", "ADE_train", n_train), ("validation", "ADE_val", n_val)):
        for k in range(1, count + 1):
            write_jpg(base / "images" / split / f"{prefix}_{k:08d}.jpg", k)
            label = np.resize(ADE_VALUES, (H, W))
            write_gray_png(base / "annotations" / split / f"{prefix}_{k:08d}.png", label)
    (base / "sceneCategories.txt").write_text("ADE_train_00000001 airport_terminal\n")
    (base / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n")
    return base


def tar_folder(src_root: Path, top: str, archive: Path) -> Path:
    """Packs ``src_root/top`` as ``top/...`` into ``archive`` (gzip if it ends with .tgz)."""
    with tarfile.open(archive, "w:gz" if archive.suffix == ".tgz" else "w") as bundle:
        bundle.add(src_root / top, arcname=top)
    return archive
