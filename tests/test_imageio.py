import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab.imageio import (
    MASK_MODES,
    ImageReadError,
    MaskModeError,
    atomic_write,
    colorize,
    overlay,
    read_image,
    read_mask,
    save_index_png,
    save_rgb_png,
)
from deeplab.palettes import default_palette

RGB = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[10, 20, 30], [0, 0, 0], [255, 255, 255]]],
               dtype=np.uint8)


def _chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)


def test_read_rgb_png(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 2, 3)
    assert torch.equal(image, _chw(RGB))


def test_read_grayscale_repeats_channel(tmp_path):
    gray = np.array([[0, 128], [200, 255]], dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    image = read_image(str(tmp_path / "g.png"))
    assert image.shape == (3, 2, 2)
    for channel in image:
        assert torch.equal(channel, torch.from_numpy(gray))


def test_read_rgba_drops_alpha_without_compositing(tmp_path):
    rgba = np.concatenate([RGB, np.zeros((2, 3, 1), np.uint8)], axis=2)  # fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    assert torch.equal(read_image(tmp_path / "t.png"), _chw(RGB))


def test_read_palette_image(tmp_path):
    image = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8))
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    image.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    expected = np.array([[[0, 0, 0], [255, 0, 0]], [[0, 0, 255], [255, 0, 0]]], dtype=np.uint8)
    assert torch.equal(out, _chw(expected))


def test_read_palette_image_with_transparency_does_not_warn(tmp_path):
    image = Image.fromarray(np.array([[0, 1]], dtype=np.uint8))
    image.putpalette([9, 8, 7, 1, 2, 3] + [0] * 762)
    image.info["transparency"] = 0
    image.save(tmp_path / "pt.png", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_image(tmp_path / "pt.png")
    assert out[:, 0, 0].tolist() == [9, 8, 7] and out[:, 0, 1].tolist() == [1, 2, 3]


def test_read_16_bit_scales_instead_of_clipping(tmp_path):
    values = np.array([[0, 257, 25700, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode == "I;16"
    out = read_image(tmp_path / "d.png")
    assert out.shape == (3, 1, 4)
    assert out[0, 0].tolist() == [0, 1, 100, 255]
    assert torch.equal(out[0], out[2])


def test_read_32_bit_int_in_16_bit_range(tmp_path):
    Image.fromarray(np.array([[0, 514, 65535]], dtype=np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert read_image(tmp_path / "i.tif")[1, 0].tolist() == [0, 2, 255]


def test_read_32_bit_int_outside_16_bit_range_is_stretched(tmp_path):
    Image.fromarray(np.array([[-1000, 99000, 199000]], dtype=np.int32)).save(tmp_path / "w.tif")
    assert read_image(tmp_path / "w.tif")[0, 0].tolist() == [0, 128, 255]


def test_read_cmyk(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.tif")
    out = read_image(tmp_path / "c.tif")
    assert out[:, 0, 0].tolist() == [255, 255, 255]
    assert out[:, 0, 1].tolist() == [0, 255, 255]
    assert out[:, 0, 2].tolist() == [0, 0, 0]


def test_read_applies_exif_orientation(tmp_path):
    stored = np.zeros((16, 32, 3), dtype=np.uint8)
    stored[:, :16] = (255, 0, 0)  # left half red, right half blue
    stored[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "r.jpg").int()
    assert out.shape == (3, 32, 16)
    top, bottom = out[:, :16].float().mean(dim=(1, 2)), out[:, 16:].float().mean(dim=(1, 2))
    assert top[0] > 200 and top[2] < 50  # the red left half is now on top
    assert bottom[2] > 200 and bottom[0] < 50


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, None])
def test_unreadable_file_raises_naming_it(tmp_path, content):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(path)


def test_truncated_jpeg_raises(tmp_path):
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")


def test_default_palette_is_the_voc_colour_map():
    palette = default_palette(21)
    assert palette[:5] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)]
    assert palette[8] == (64, 0, 0) and palette[15] == (192, 128, 128) and palette[20] == (0, 64, 128)
    assert len(set(default_palette(256))) == 256


def test_save_index_png_stores_class_ids_with_palette(tmp_path):
    mask = torch.tensor([[0, 1, 2], [2, 255, 0]])
    palette = [(0, 0, 0), (10, 20, 30), (200, 100, 50)]
    save_index_png(mask, tmp_path / "m.png", palette)
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "P"
        assert np.array_equal(np.asarray(image), mask.numpy())
        assert image.getpalette()[:9] == [0, 0, 0, 10, 20, 30, 200, 100, 50]
    assert os.listdir(tmp_path) == ["m.png"]  # no temporary file left behind


def test_save_index_png_rejects_ids_above_255(tmp_path):
    with pytest.raises(ValueError, match="0..255"):
        save_index_png(torch.tensor([[256]]), tmp_path / "m.png", [(0, 0, 0)])
    assert not (tmp_path / "m.png").exists()


def test_save_rgb_png_round_trips(tmp_path):
    save_rgb_png(torch.from_numpy(RGB), tmp_path / "c.png")
    assert torch.equal(read_image(tmp_path / "c.png"), _chw(RGB))
    with pytest.raises(ValueError, match="H x W x 3"):
        save_rgb_png(torch.zeros(3, 4, 5, dtype=torch.uint8), tmp_path / "bad.png")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as handle:
        handle.write("half written")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_replaces_and_uses_normal_permissions(tmp_path):
    path = tmp_path / "out.bin"
    with atomic_write(path) as handle:
        handle.write(b"new")
    assert path.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_colorize():
    palette = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    out = colorize(torch.tensor([[0, 1], [2, 7]]), palette)
    assert out.dtype == torch.uint8 and out.shape == (2, 2, 3)
    assert out.tolist() == [[[0, 0, 0], [255, 0, 0]], [[0, 255, 0], [0, 0, 0]]]


def test_overlay_blends_and_leaves_unlabelled_pixels_alone():
    image = torch.tensor([[[100, 100]], [[50, 50]], [[0, 0]]], dtype=torch.uint8)  # 3 x 1 x 2
    mask = torch.tensor([[1, 255]])
    out = overlay(image, mask, [(0, 0, 0), (200, 0, 255)], alpha=0.5)
    assert out.dtype == torch.uint8 and out.shape == (1, 2, 3)
    assert out[0, 0].tolist() == [150, 25, 128]  # 127.5 rounds to even
    assert out[0, 1].tolist() == [100, 50, 0]


def test_overlay_checks_sizes_and_alpha():
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="mask"):
        overlay(image, torch.zeros(2, 3, dtype=torch.long), [(0, 0, 0)])
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, torch.zeros(2, 2, dtype=torch.long), [(0, 0, 0)], alpha=1.5)


def test_read_mask_gives_stored_ids_for_every_mask_mode(tmp_path):
    ids = np.array([[0, 1, 2], [255, 1, 0]], dtype=np.uint8)
    Image.fromarray(ids).save(tmp_path / "l.png")
    save_index_png(ids, tmp_path / "p.png", default_palette(256))  # the palette's colours must not leak in
    Image.fromarray(ids.astype(bool)).save(tmp_path / "one.png")
    assert [Image.open(tmp_path / n).mode for n in ("l.png", "p.png", "one.png")] == list(MASK_MODES)
    for name in ("l.png", "p.png"):
        mask = read_mask(tmp_path / name)
        assert mask.dtype == np.uint8 and np.array_equal(mask, ids)
    assert np.array_equal(read_mask(tmp_path / "one.png"), (ids > 0).astype(np.uint8))


def test_read_mask_refuses_colour_masks_and_modes_a_dataset_leaves_out(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "colour.png")
    with pytest.raises(MaskModeError) as info:
        read_mask(tmp_path / "colour.png")
    assert str(info.value) == (f"{tmp_path / 'colour.png'}: mask mode is 'RGB': expected a single-channel index PNG "
                               "(mode L or P) whose pixel values are class ids; convert colour masks to ids first")
    Image.fromarray(np.ones((2, 2), dtype=bool)).save(tmp_path / "one.png")
    with pytest.raises(MaskModeError, match="mask mode is '1'"):
        read_mask(tmp_path / "one.png", modes=("L", "P"))


def test_read_mask_names_an_unreadable_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ImageReadError, match="cannot read mask .*broken.png"):
        read_mask(tmp_path / "broken.png")
    with pytest.raises(ImageReadError, match="cannot read mask .*absent.png"):
        read_mask(tmp_path / "absent.png")
