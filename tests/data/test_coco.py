"""`deeplab data import-coco`: polygons, RLE (compressed and not), overlaps and crowds into the folder layout."""

from __future__ import annotations

import json
import re

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from deeplab.cli import main
from deeplab.cli_data import run_import_coco
from deeplab.data.folder import FolderDataset
from deeplab.imageio import read_mask

H, W = 20, 30


def _box(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    region = np.zeros((H, W), dtype=np.uint8)
    region[top:bottom, left:right] = 1
    return region


def _runs(region: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE: alternating run lengths in column-major order, starting with a run of 0s."""
    counts, value, run = [], 0, 0
    for pixel in region.ravel(order="F"):
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    return [*counts, run]


def _coco(tmp_path):
    """Two images; cats: 3 dog, 7 cat. one.jpg: a dog polygon, a smaller overlapping cat as compressed RLE, a
    crowd of dogs as uncompressed RLE; two.png: nothing."""
    (tmp_path / "pics").mkdir()
    for name in ("one.jpg", "two.png"):
        Image.fromarray(np.full((H, W, 3), 90, dtype=np.uint8)).save(tmp_path / "pics" / name)
    cat_rle = mask_utils.encode(np.asfortranarray(_box(6, 8, 12, 14)))
    cat_rle["counts"] = cat_rle["counts"].decode()
    counts = _runs(_box(14, 20, 20, 30))
    assert sum(counts) == H * W
    data = {
        "images": [{"id": 1, "file_name": "one.jpg", "height": H, "width": W},
                   {"id": 2, "file_name": "two.png", "height": H, "width": W}],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 160.0, "bbox": [4, 2, 16, 10],
             "segmentation": [[4, 2, 20, 2, 20, 12, 4, 12]]},
            {"id": 2, "image_id": 1, "category_id": 7, "iscrowd": 0, "area": 36.0, "bbox": [8, 6, 6, 6],
             "segmentation": cat_rle},
            {"id": 3, "image_id": 1, "category_id": 3, "iscrowd": 1, "area": 60.0, "bbox": [20, 14, 10, 6],
             "segmentation": {"size": [H, W], "counts": counts}},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_import_coco_writes_index_masks_and_classes(tmp_path, capsys):
    annotations = _coco(tmp_path)
    out = tmp_path / "dataset"
    assert run_import_coco(annotations, tmp_path / "pics", out) == 0
    assert "2 images, 2 instances and 1 crowd regions (ignored)" in capsys.readouterr().out
    mask = read_mask(out / "masks" / "one.png")
    polygon = np.zeros((H, W), dtype=bool)
    polygon[2:12, 4:20] = True  # pycocotools rasterises the polygon x 4..20, y 2..12 as pixel columns 4..19
    expected = np.zeros((H, W), dtype=np.uint8)
    expected[polygon] = 1  # dog: category 3 is the first by id
    expected[_box(6, 8, 12, 14) == 1] = 2  # the smaller cat wins the overlap
    expected[_box(14, 20, 20, 30) == 1] = 255  # the crowd is ignored
    assert np.array_equal(mask, expected), np.argwhere(mask != expected)
    assert not read_mask(out / "masks" / "two.png").any()
    assert (out / "classes.txt").read_text().splitlines()[0] == "background 0 0 0"
    data = FolderDataset(out, val_ratio=0.0)
    assert data.classes == ("background", "dog", "cat") and data.stems == ["one", "two"]
    assert run_import_coco(annotations, tmp_path / "pics", tmp_path / "as_class", crowd="class") == 0
    assert (read_mask(tmp_path / "as_class" / "masks" / "one.png")[14:, 20:] == 1).all()


def test_import_coco_names_missing_images_through_the_cli(tmp_path, capsys):
    annotations = _coco(tmp_path)
    (tmp_path / "pics" / "two.png").unlink()
    assert main(["data", "import-coco", str(annotations), str(tmp_path / "pics"), "--out", str(tmp_path / "o")]) == 2
    assert re.search(r"error: .*instances.json: 1 image\(s\) not found in .*pics: two.png", capsys.readouterr().err)
    assert not (tmp_path / "o").exists()
