"""FolderDataset: layout, classes.txt, splits, every validation error, skip_bad, odd image modes."""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab import predict_files
from deeplab.data.folder import DatasetError, FolderDataset, parse_classes_file
from deeplab.imageio import IMAGE_EXTENSIONS
from deeplab.palettes import default_palette, palette_to_flat, voc_palette

H, W = 36, 52


def write_pair(
    root: Path,
    stem: str,
    *,
    size: tuple[int, int] = (H, W),
    labels: int = 3,
    ext: str = ".png",
    mask_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Write images/<stem><ext> and masks/<stem>.png; return the mask (vertical stripes of class ids)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    height, width = size
    rng = np.random.default_rng(zlib.crc32(stem.encode()))
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        root / "images" / f"{stem}{ext}"
    )
    mask_h, mask_w = mask_size or size
    mask = (np.arange(mask_w)[None, :].repeat(mask_h, 0) // 8 % labels).astype(np.uint8)
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return mask


def make_folder(root: Path, count: int = 10, **kwargs) -> Path:
    for i in range(count):
        write_pair(root, f"img_{i:02d}", **kwargs)
    return root


def dataset_error(root: Path, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        FolderDataset(root, **kwargs)
    return info.value


def test_valid_folder_loads(tmp_path):
    mask = write_pair(tmp_path, "a")
    for stem in "bcdefghij":
        write_pair(tmp_path, stem, ext=".jpg")
    (tmp_path / "classes.txt").write_text("# name colour\nbackground 0 0 0\n\nroad #ff8000\ncar\n")
    train = FolderDataset(tmp_path, "train")
    val = FolderDataset(tmp_path, "val")
    assert len(train) == 8 and len(val) == 2
    assert not set(train.stems) & set(val.stems)
    assert train.classes == ("background", "road", "car") and train.num_classes == 3
    assert train.palette == [(0, 0, 0), (255, 128, 0), default_palette(3)[2]]
    dataset = train if "a" in train.stems else val
    index = dataset.stems.index("a")
    assert dataset.name(index) == "a"
    image, loaded = dataset.load(index)
    assert image.dtype == torch.uint8 and image.shape == (3, H, W)
    assert loaded.dtype == torch.uint8 and torch.equal(loaded, torch.from_numpy(mask))
    png = np.array(Image.open(tmp_path / "images" / "a.png"))
    assert torch.equal(image, torch.from_numpy(png).permute(2, 0, 1))


def test_num_classes_given_or_inferred(tmp_path):
    make_folder(tmp_path, 6, labels=4)
    given = FolderDataset(tmp_path, num_classes=6)
    assert given.classes == tuple(f"class_{i}" for i in range(6)) and given.palette == default_palette(6)
    # Inferred from every mask of the folder, so both splits agree.
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[0, :3] = [5, 255, 1]
    Image.fromarray(mask).save(tmp_path / "masks" / "img_00.png")
    assert FolderDataset(tmp_path, "train").num_classes == FolderDataset(tmp_path, "val").num_classes == 6


def test_binary_255_masks_warn_when_inferring(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    for stem in "ab":
        Image.fromarray(np.where(np.eye(H, W) > 0, 255, 0).astype(np.uint8)).save(
            tmp_path / "masks" / f"{stem}.png"
        )
    with pytest.warns(UserWarning, match="inferred as 1"):
        FolderDataset(tmp_path)


def test_classes_file_parsing(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("\ufeff# comment\n  sky  \ntraffic light 250 170 30\n\nperson #DC143C\n")
    names, palette = parse_classes_file(path)
    assert names == ["sky", "traffic light", "person"]
    assert palette == [default_palette(1)[0], (250, 170, 30), (220, 20, 60)]
    path.write_text("ok\nbad hex #12345\nshort 1 2\nbig 1 2 300\nok\n")
    with pytest.raises(DatasetError) as info:
        parse_classes_file(path)
    assert len(info.value.problems) == 4
    for line in (2, 3, 4, 5):
        assert f"line {line}" in str(info.value)


def test_classes_file_must_match_num_classes(tmp_path):
    make_folder(tmp_path, 3)
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    assert "num_classes=5" in str(dataset_error(tmp_path, num_classes=5))


def test_split_files(tmp_path):
    make_folder(tmp_path, 6)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("img_04\n# held out: img_05\n\nimg_00\nimg_02\nimg_00\n")
    (tmp_path / "splits" / "val.txt").write_text("img_01\n")
    assert FolderDataset(tmp_path, "train").stems == ["img_04", "img_00", "img_02"]
    assert FolderDataset(tmp_path, "val").stems == ["img_01"]


def test_seeded_ratio_split_is_deterministic(tmp_path):
    make_folder(tmp_path, 20, size=(33, 33))
    split = {s: FolderDataset(tmp_path, s, seed=7, val_ratio=0.25).stems for s in ("train", "val")}
    assert split["val"] == FolderDataset(tmp_path, "val", seed=7, val_ratio=0.25).stems
    assert len(split["val"]) == 5 and len(split["train"]) == 15
    assert sorted(split["train"] + split["val"]) == [f"img_{i:02d}" for i in range(20)]
    assert FolderDataset(tmp_path, "val", seed=8, val_ratio=0.25).stems != split["val"]
    assert len(FolderDataset(tmp_path, "train", val_ratio=0.0)) == 20
    assert "no usable" in str(dataset_error(tmp_path, split="val", val_ratio=0.0))


def _remove_mask(root: Path) -> str:
    (root / "masks" / "img_01.png").unlink()
    return "images/img_01.png"


def _remove_image(root: Path) -> str:
    (root / "images" / "img_01.png").unlink()
    return "masks/img_01.png"


def _size_mismatch(root: Path) -> str:
    write_pair(root, "img_01", mask_size=(H, W + 1))
    return f"images/img_01.png is {W}x{H} (W x H) but masks/img_01.png is {W + 1}x{H}"


def _garbage_image(root: Path) -> str:
    (root / "images" / "img_01.png").write_bytes(b"not an image at all")
    return "images/img_01.png: unreadable image"


def _garbage_mask(root: Path) -> str:
    (root / "masks" / "img_01.png").write_bytes(b"\x89PNG broken")
    return "masks/img_01.png: unreadable mask"


def _colour_mask(root: Path) -> str:
    Image.new("RGB", (W, H), (128, 0, 0)).save(root / "masks" / "img_01.png")
    return "masks/img_01.png: an RGB colour mask, but there is no classes.txt"


def _bad_labels(root: Path) -> str:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[5, 5:8] = [3, 7, 255]  # 255 is ignore_index: allowed
    Image.fromarray(mask).save(root / "masks" / "img_01.png")
    return "masks/img_01.png: label values 3, 7 are neither class ids (0..2)"


def _unknown_stem(root: Path) -> str:
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("img_00\nghost\n")
    (root / "splits" / "val.txt").write_text("img_02\n")
    return "splits/train.txt lists 'ghost'"


def _duplicate_stem(root: Path) -> str:
    Image.new("RGB", (W, H)).save(root / "images" / "img_01.jpg")
    return "several files share the stem 'img_01': images/img_01.jpg, images/img_01.png"


def _jpeg_mask(root: Path) -> str:
    (root / "masks" / "img_01.png").rename(root / "masks" / "img_01.jpg")
    return "found masks/img_01.jpg, but masks must be PNG"


BREAKERS = [
    _remove_mask,
    _remove_image,
    _size_mismatch,
    _garbage_image,
    _garbage_mask,
    _colour_mask,
    _bad_labels,
    _unknown_stem,
    _duplicate_stem,
    _jpeg_mask,
]


@pytest.mark.parametrize("breaker", BREAKERS, ids=[b.__name__.strip("_") for b in BREAKERS])
def test_each_problem_is_reported(tmp_path, breaker):
    make_folder(tmp_path, 4)
    expected = breaker(tmp_path)
    error = dataset_error(tmp_path, val_ratio=0.0, num_classes=3)
    assert isinstance(error, ValueError) and len(error.problems) == 1
    assert expected in str(error), str(error)


@pytest.mark.parametrize("missing", ["images", "masks"])
def test_missing_folder(tmp_path, missing):
    make_folder(tmp_path, 2)
    for path in (tmp_path / missing).iterdir():
        path.unlink()
    (tmp_path / missing).rmdir()
    assert f"missing folder {missing}/" in str(dataset_error(tmp_path))
    assert "is not a directory" in str(dataset_error(tmp_path / "nowhere"))


def test_all_problems_in_one_error(tmp_path):
    make_folder(tmp_path, 5)
    (tmp_path / "masks" / "img_01.png").unlink()
    write_pair(tmp_path, "img_02", mask_size=(H + 2, W))
    Image.fromarray(np.full((H, W), 9, dtype=np.uint8)).save(tmp_path / "masks" / "img_03.png")
    Image.fromarray(np.zeros((H, W), dtype=np.uint8)).save(tmp_path / "masks" / "img_09.png")
    error = dataset_error(tmp_path, val_ratio=0.0, num_classes=3)
    message = str(error)
    assert len(error.problems) == 4, message
    assert "images/img_01.png: image without mask" in message
    assert f"images/img_02.png is {W}x{H} (W x H) but masks/img_02.png is {W}x{H + 2}" in message
    assert "masks/img_03.png: label values 9 " in message
    assert "masks/img_09.png: mask without image" in message


def test_skip_bad_warns_and_skips(tmp_path):
    make_folder(tmp_path, 5)
    _remove_image(tmp_path)
    (tmp_path / "images" / "img_03.png").write_bytes(b"junk")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = FolderDataset(tmp_path, val_ratio=0.0, num_classes=3, skip_bad=True)
    messages = [str(w.message) for w in caught]
    assert dataset.stems == ["img_00", "img_02", "img_04"]
    assert len(messages) == 2
    assert "masks/img_01.png" in messages[0] and "images/img_03.png" in messages[1]
    assert all(message.startswith(f"{tmp_path}: skipping") for message in messages)


def test_skip_bad_still_raises_for_folder_problems(tmp_path):
    make_folder(tmp_path, 3)
    (tmp_path / "classes.txt").write_text("a 1 2\n")
    assert "classes.txt line 1" in str(dataset_error(tmp_path, skip_bad=True))


def _save_mode(path: Path, mode: str) -> np.ndarray:
    """Save a W x H image in ``mode``; return the RGB the loader should produce."""
    gradient = np.linspace(0, 255, W, dtype=np.float64)[None, :].repeat(H, 0)
    if mode == "I;16":
        Image.fromarray((gradient * 257).astype(np.uint16)).save(path)
        return np.rint(gradient).astype(np.uint8)[..., None].repeat(3, -1)
    if mode == "RGBA":
        rgba = np.stack([gradient, 255 - gradient, np.full_like(gradient, 9), np.full_like(gradient, 77)], -1)
        Image.fromarray(rgba.astype(np.uint8), "RGBA").save(path)
        return rgba[..., :3].astype(np.uint8)
    if mode == "P":
        image = Image.fromarray((gradient // 64).astype(np.uint8), "L").convert("P")
        image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
        image.save(path)
        table = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
        return table[(gradient // 64).astype(np.int64)]
    Image.fromarray(gradient.astype(np.uint8), "L").save(path)
    return gradient.astype(np.uint8)[..., None].repeat(3, -1)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_image_modes_load_as_rgb(tmp_path, mode):
    write_pair(tmp_path, "a")
    expected = _save_mode(tmp_path / "images" / "a.png", mode)
    assert Image.open(tmp_path / "images" / "a.png").mode.startswith(mode[:3])
    image, _ = FolderDataset(tmp_path, val_ratio=0.0).load(0)
    assert image.shape == (3, H, W)
    if mode == "I;16":  # 16-bit data keeps its precision: float32 on the 0..1 scale (value / 65535)
        assert image.dtype == torch.float32
        image = image * 255
    else:
        assert image.dtype == torch.uint8
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, atol=1)


def test_other_extensions(tmp_path):
    for stem, ext in (("a", ".bmp"), ("b", ".tif"), ("c", ".webp"), ("d", ".JPEG")):
        write_pair(tmp_path, stem, ext=ext)
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "images" / ".hidden.png").write_bytes(b"")
    dataset = FolderDataset(tmp_path, val_ratio=0.0)
    assert dataset.stems == ["a", "b", "c", "d"]
    assert all(dataset.load(i)[0].shape == (3, H, W) for i in range(4))


def test_every_image_extension_predict_reads_pairs_too(tmp_path):
    """The folder scan takes the suffixes ``deeplab predict`` takes (one list), Netpbm and GIF included."""
    suffixes = {".gif": "RGB", ".ppm": "RGB", ".pgm": "L", ".pbm": "1", ".pnm": "RGB", ".Gif": "RGB"}
    for index, (suffix, mode) in enumerate(suffixes.items()):
        write_pair(tmp_path, f"s{index}")
        stored = tmp_path / "images" / f"s{index}.png"
        with Image.open(stored) as image:
            image.convert(mode).save(stored.with_suffix(suffix), format="GIF" if suffix.lower() == ".gif" else "PPM")
        stored.unlink()
    dataset = FolderDataset(tmp_path, val_ratio=0.0)
    assert dataset.stems == [f"s{i}" for i in range(len(suffixes))]
    assert [p.suffix for p in dataset.image_paths] == list(suffixes)
    for index in range(len(dataset)):
        image, mask = dataset.load(index)
        assert image.shape == (3, H, W) and mask.shape == (H, W)
    assert set(IMAGE_EXTENSIONS) >= {s.lower() for s in suffixes} and predict_files.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS


def test_a_new_extension_makes_a_duplicate_stem_not_a_silent_choice(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    with Image.open(tmp_path / "images" / "a.png") as image:
        image.save(tmp_path / "images" / "a.gif")
    error = dataset_error(tmp_path, val_ratio=0.0)
    assert "several files share the stem 'a': images/a.gif, images/a.png" in str(error)


def test_exif_rotated_jpeg(tmp_path):
    """Orientation 6 (rotate 90 degrees clockwise to display): the stored left half ends up on top."""
    write_pair(tmp_path, "a")
    stored = np.zeros((H, W, 3), dtype=np.uint8)
    stored[:, : W // 2] = (255, 0, 0)
    stored[:, W // 2 :] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "images" / "a.jpg", exif=exif, quality=95)
    (tmp_path / "images" / "a.png").unlink()
    Image.fromarray(np.zeros((W, H), dtype=np.uint8)).save(
        tmp_path / "masks" / "a.png"
    )  # displayed: H x W swapped
    image, mask = FolderDataset(tmp_path, val_ratio=0.0, num_classes=2).load(0)
    assert image.shape == (3, W, H) and mask.shape == (W, H)
    top, bottom = image[:, : W // 2 - 2].float().mean((1, 2)), image[:, W // 2 + 2 :].float().mean((1, 2))
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50


def test_palette_mask_uses_the_index(tmp_path):
    write_pair(tmp_path, "a")
    mask = Image.fromarray(np.full((H, W), 2, dtype=np.uint8), "L").convert("P")
    mask.putpalette([0, 0, 0, 9, 9, 9, 200, 100, 50] + [0] * 759)
    mask.save(tmp_path / "masks" / "a.png")
    _, loaded = FolderDataset(tmp_path, val_ratio=0.0, num_classes=3).load(0)
    assert (loaded == 2).all()


def test_argument_errors(tmp_path):
    make_folder(tmp_path, 2)
    for kwargs in ({"split": "test"}, {"val_ratio": 1.0}, {"num_classes": 0}):
        with pytest.raises(ValueError):
            FolderDataset(tmp_path, **kwargs)


def test_voc_palette_and_flat_palette():
    palette = voc_palette()
    assert len(palette) == 256 and len(set(palette)) == 256
    assert palette[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert palette[15] == (192, 128, 128) and palette[255] == (224, 224, 192)
    assert default_palette(21) == palette[:21]
    flat = palette_to_flat([(1, 2, 3), (4, 5, 6)])
    assert len(flat) == 768 and flat[:7] == [1, 2, 3, 4, 5, 6, 0]
    with pytest.raises(ValueError):
        palette_to_flat([(0, 0, 256)])
