"""The embedded demo dataset: deterministic, disjoint splits, every class, many scales, thin parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from deeplab.data.demo import DEMO_CLASSES, DemoDataset
from deeplab.data.transforms import train_transforms

HUES = {"disk": 0.0, "square": 0.64, "triangle": 0.33, "ring": 0.13, "bar": 0.80, "cross": 0.50}


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    dataset = DemoDataset(split="train", num_images=50)
    return [dataset.render(i) for i in range(len(dataset))]


def hue_and_saturation(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rgb = image.astype(np.float64)
    high, low = rgb.max(-1), rgb.min(-1)
    spread = np.maximum(high - low, 1e-9)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = (
        np.where(
            high == red,
            ((green - blue) / spread) % 6,
            np.where(high == green, (blue - red) / spread + 2, (red - green) / spread + 4),
        )
        / 6
    )
    return hue, (high - low) / np.maximum(high, 1e-9)


def test_load_types_shapes_and_names():
    dataset = DemoDataset(split="val", num_images=3, image_size=64)
    image, mask = dataset.load(2)
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    assert mask.dtype == torch.uint8 and mask.shape == (64, 64)
    assert int(mask.max()) < len(DEMO_CLASSES)
    assert dataset.name(2) == "demo_val_00002" and dataset.name(-1) == dataset.name(2)
    assert len(dataset.palette) == dataset.num_classes == len(DEMO_CLASSES) >= 6
    assert DEMO_CLASSES[0] == "background" and dataset.ignore_index == 255


def test_lengths_and_argument_errors():
    assert len(DemoDataset(split="train")) == 600 and len(DemoDataset(split="val")) == 100
    assert len(DemoDataset("/ignored/root", "val", num_images=7)) == 7
    with pytest.raises(ValueError, match="train"):
        DemoDataset(split="test")
    with pytest.raises(IndexError):
        DemoDataset(split="val", num_images=5).load(5)
    with pytest.raises(ValueError):
        DemoDataset(num_images=-1)


def test_samples_are_deterministic_and_seeded():
    first, second = DemoDataset(split="train"), DemoDataset(split="train")
    for index in (0, 17, 599):
        a, b = first.load(index), second.load(index)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.equal(first.load(index)[0], a[0])
    other_seed = DemoDataset(split="train", seed=1)
    assert not torch.equal(other_seed.load(0)[0], first.load(0)[0])


def test_train_and_val_are_disjoint():
    train, val = DemoDataset(split="train", num_images=60), DemoDataset(split="val", num_images=60)
    train_images = {train.render(i)[0].tobytes() for i in range(len(train))}
    val_images = {val.render(i)[0].tobytes() for i in range(len(val))}
    assert len(train_images) == len(val_images) == 60
    assert not train_images & val_images


def test_every_class_appears(samples):
    seen = set()
    for _, mask in samples:
        seen |= set(np.unique(mask).tolist())
    assert seen == set(range(len(DEMO_CLASSES)))


def test_object_scales_vary_widely(samples):
    extents = []
    for _, mask in samples:
        for label in range(1, len(DEMO_CLASSES)):
            components, _ = ndimage.label(mask == label)
            extents += [
                max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndimage.find_objects(components)
            ]
    extents = np.asarray(extents)
    assert (extents <= 12).sum() >= 20 and (extents >= 64).sum() >= 20


def test_bars_are_thin_and_long(samples):
    """Bars (3-6 px wide) all but vanish under a 5 x 5 erosion while disks mostly survive it."""
    block = np.ones((5, 5), dtype=bool)
    bar, disk = DEMO_CLASSES.index("bar"), DEMO_CLASSES.index("disk")
    kept = {bar: [0, 0], disk: [0, 0]}
    longest_bar = 0
    for _, mask in samples:
        for label, counts in kept.items():
            region = mask == label
            counts[0] += int(region.sum())
            counts[1] += int(ndimage.binary_erosion(region, block).sum())
        components, _ = ndimage.label(mask == bar)
        for s in ndimage.find_objects(components):
            longest_bar = max(longest_bar, s[0].stop - s[0].start, s[1].stop - s[1].start)
    assert kept[bar][0] > 0 and kept[bar][1] < 0.05 * kept[bar][0]
    assert kept[disk][1] > 0.4 * kept[disk][0]
    assert longest_bar >= 50


def test_mask_shows_the_visible_object(samples):
    """Occlusion is consistent: every pixel labelled with a class has that class's hue, saturated."""
    for image, mask in samples:
        hue, saturation = hue_and_saturation(image)
        for name, class_hue in HUES.items():
            region = mask == DEMO_CLASSES.index(name)
            if not region.any():
                continue
            distance = np.abs((hue[region] - class_hue + 0.5) % 1 - 0.5)
            assert ((distance < 0.1) & (saturation[region] > 0.25)).mean() > 0.9, name
        chroma = image.max(-1).astype(int) - image.min(-1)
        assert (chroma[mask == 0] < 45).mean() > 0.9  # background is grey-ish, objects are coloured


def test_objects_occlude_each_other(samples):
    """Rings show what lies in their hole and objects overlap: some masks hold two touching classes."""
    touching = 0
    for _, mask in samples:
        horizontal = (mask[:, 1:] != mask[:, :-1]) & (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
        touching += int(horizontal.any())
    assert touching >= 10


def test_transforms_are_applied():
    dataset = DemoDataset(split="train", num_images=4, transforms=train_transforms(96))
    image, mask = dataset[3]
    assert image.shape == (3, 96, 96) and image.dtype == torch.float32
    assert mask.shape == (96, 96) and mask.dtype == torch.int64


def test_fifty_samples_build():
    dataset = DemoDataset(split="val", num_images=50, seed=5)
    for index in range(len(dataset)):
        image, mask = dataset.load(index)
        assert image.shape == (3, 128, 128) and mask.shape == (128, 128)
