"""N-channel images (multi-band / multi-page TIFF, .npy, 16-bit, grey) through read_bands, the folder dataset and
`deeplab data stats`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from deeplab.cli_data import run_stats
from deeplab.data import DemoDataset, SegmentationDataset
from deeplab.data.folder import DatasetError, FolderDataset
from deeplab.data.stats import channel_stats, class_pixel_counts
from deeplab.imageio import ChannelError, ImageReadError, read_bands, read_image

H, W = 10, 14


def _bands(seed: int, channels: int = 4, dtype=np.uint16) -> np.ndarray:
    high = 256 if dtype == np.uint8 else 65536
    return np.random.default_rng(seed).integers(0, high, (channels, H, W)).astype(dtype)


def test_multi_band_and_multi_page_tiff_and_npy_read_the_same(tmp_path):
    bands = _bands(0)
    tifffile.imwrite(tmp_path / "contig.tif", np.moveaxis(bands, 0, -1), photometric="minisblack",
                     planarconfig="contig")
    tifffile.imwrite(tmp_path / "pages.tiff", bands, photometric="minisblack")  # 4 pages of H x W
    np.save(tmp_path / "hwc.npy", np.moveaxis(bands, 0, -1))
    np.save(tmp_path / "chw.npy", bands)
    expected = torch.from_numpy(bands.astype(np.float32) / 65535)
    for name in ("contig.tif", "pages.tiff", "hwc.npy", "chw.npy"):
        image = read_bands(tmp_path / name, 4)
        assert image.dtype == torch.float32 and image.shape == (4, H, W), name
        assert torch.equal(image, expected), name
    scaled = read_bands(tmp_path / "chw.npy", 4, max_value=4095.0)
    assert torch.equal(scaled, torch.from_numpy(bands / np.float32(4095)))
    with pytest.raises(ChannelError, match=r"contig.tif: 4 channel\(s\) .* but model.in_channels=3"):
        read_bands(tmp_path / "contig.tif", 3)


def test_grey_and_16_bit_images(tmp_path):
    grey = _bands(1, channels=1, dtype=np.uint8)[0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    one = read_bands(tmp_path / "grey.png", 1)
    assert one.dtype == torch.uint8 and torch.equal(one[0], torch.from_numpy(grey))
    assert torch.equal(read_bands(tmp_path / "grey.png", 3), one.repeat(3, 1, 1))  # grey for an RGB model
    deep = _bands(2, channels=1)[0]
    Image.fromarray(deep).save(tmp_path / "deep.png")  # a 16-bit PNG keeps its 16 bits
    assert torch.equal(read_bands(tmp_path / "deep.png", 1)[0], torch.from_numpy(deep.astype(np.float32) / 65535))
    np.save(tmp_path / "wide.npy", np.full((H, W), 70000, dtype=np.int32))
    with pytest.raises(ImageReadError, match="do not fit 16 bits; set data.max_value"):
        read_bands(tmp_path / "wide.npy", 1)


def _tiff_folder(root: Path, count: int = 3) -> list[np.ndarray]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    images = []
    for i in range(count):
        images.append(_bands(10 + i))
        tifffile.imwrite(root / "images" / f"s{i}.tif", np.moveaxis(images[-1], 0, -1), photometric="minisblack",
                         planarconfig="contig")
        Image.fromarray((np.arange(W)[None].repeat(H, 0) > 6).astype(np.uint8)).save(root / "masks" / f"s{i}.png")
    return images


def test_folder_of_4_band_tiffs(tmp_path):
    images = _tiff_folder(tmp_path)
    data = FolderDataset(tmp_path, val_ratio=0.0, in_channels=4)
    image, mask = data.load(1)
    assert image.shape == (4, H, W) and torch.equal(image, torch.from_numpy(images[1].astype(np.float32) / 65535))
    assert mask.shape == (H, W)
    with pytest.raises(DatasetError, match=r"images/s0.tif: 4 band\(s\) but model.in_channels=3"):
        FolderDataset(tmp_path, val_ratio=0.0)


def test_data_stats_equal_numpy(tmp_path, capsys):
    images = _tiff_folder(tmp_path)
    values = np.concatenate([image.reshape(4, -1) for image in images], axis=1) / 65535
    stats = channel_stats(sorted((tmp_path / "images").iterdir()), 4)
    np.testing.assert_allclose(stats.mean, values.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats.std, values.std(axis=1), rtol=1e-6)
    assert stats.images == 3 and stats.pixels == 3 * H * W
    assert run_stats(tmp_path, 4, progress=False) == 0
    out = capsys.readouterr().out
    expected = ", ".join(f"{m:.4f}" for m in values.mean(axis=1))
    assert f"model.mean=[{expected}]" in out and out.startswith("3 images")
    rgb = np.random.default_rng(5).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    stats = channel_stats([tmp_path / "rgb.png"])
    np.testing.assert_allclose(stats.mean, (rgb / 255).reshape(-1, 3).mean(axis=0), rtol=1e-6)


def test_class_pixel_counts_of_generated_datasets_equal_a_count_of_their_masks():
    demo = DemoDataset(split="val", num_images=2, image_size=65)
    masks = torch.stack([demo.load(i)[1] for i in range(2)]).long()
    expected = torch.bincount(masks[masks != 255], minlength=demo.num_classes)
    assert class_pixel_counts(demo).tolist() == expected.tolist()

    class Labels(SegmentationDataset):  # two labels, generated: counted from the loaded targets
        classes = ("a", "b")
        task = "multilabel"

        def __len__(self):
            return 2

        def name(self, index):
            return str(index)

        def load(self, index):
            target = torch.zeros(2, 4, 4, dtype=torch.uint8)
            target[0, :index + 1] = 1
            target[1, 0, 0] = 255
            return torch.zeros(3, 4, 4, dtype=torch.uint8), target

    assert class_pixel_counts(Labels()).tolist() == [4 + 8, 0]


@pytest.mark.parametrize("kind", ["lzw", "palette", "cmyk"])
def test_ordinary_colour_tiffs_read_as_their_rgb(tmp_path, kind):
    rgb = Image.fromarray(np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8))
    image = {"lzw": rgb, "palette": rgb.convert("P"), "cmyk": rgb.convert("CMYK")}[kind]
    image.save(tmp_path / "x.tif", **({"compression": "tiff_lzw"} if kind == "lzw" else {}))
    assert torch.equal(read_bands(tmp_path / "x.tif", 3), read_image(tmp_path / "x.tif"))


def test_a_folder_of_npy_images_in_either_layout(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    bands = [_bands(20 + i, channels=5, dtype=np.uint8) for i in range(2)]
    np.save(tmp_path / "images" / "hwc.npy", np.moveaxis(bands[0], 0, -1))
    np.save(tmp_path / "images" / "chw.npy", bands[1])
    for stem in ("hwc", "chw"):
        Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "masks" / f"{stem}.png")
    data = FolderDataset(tmp_path, val_ratio=0.0, in_channels=5, num_classes=1)
    assert data.stems == ["chw", "hwc"]
    assert torch.equal(data.load(0)[0], torch.from_numpy(bands[1])) and data.load(0)[0].dtype == torch.uint8
    assert torch.equal(data.load(1)[0], torch.from_numpy(bands[0]))
