"""Paired transforms: image and mask stay aligned, shapes, dtypes, padding, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision import tv_tensors

from deeplab.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transforms,
    normalize_image,
    scale_choices,
    train_transforms,
)

# Label -> colour code; every colour is far from the padding colour (the ImageNet mean, ~(124, 116, 104)).
LABELS = [0, 1, 2, 3, 4, 5, 255]
COLOURS = {
    0: (10, 10, 10),
    1: (250, 10, 10),
    2: (10, 250, 10),
    3: (10, 10, 250),
    4: (250, 250, 10),
    5: (10, 250, 250),
    255: (250, 10, 250),
}
PAD_COLOUR = tuple(round(255 * m) for m in IMAGENET_MEAN)


def encode(labels: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """An image whose every pixel has its label's colour, and the mask itself."""
    table = np.zeros((256, 3), dtype=np.uint8)
    for label, colour in COLOURS.items():
        table[label] = colour
    image = torch.from_numpy(table[labels]).permute(2, 0, 1).contiguous()
    return tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(labels.astype(np.uint8)))


def denormalize(image: torch.Tensor) -> np.ndarray:
    """Undo ``normalize_image``: ``H x W x 3`` float values on the 0..255 scale."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((image * std + mean) * 255).permute(1, 2, 0).numpy()


def decode(rgb: np.ndarray) -> np.ndarray:
    """Label of each pixel from its (exact) colour; -1 for the padding colour, -2 for anything else."""
    out = np.full(rgb.shape[:2], -2, dtype=np.int64)
    rounded = np.rint(rgb).astype(np.int64)
    for label, colour in [*COLOURS.items(), (-1, PAD_COLOUR)]:
        out[(rounded == np.asarray(colour)).all(axis=-1)] = label
    return out


sizes = st.integers(min_value=33, max_value=97)


@settings(max_examples=40, deadline=None)
@given(
    height=sizes,
    width=sizes,
    crop_h=st.integers(16, 97),
    crop_w=st.integers(16, 97),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_crop_pad_flip_keep_every_pixel_aligned(height, width, crop_h, crop_w, seed, data):
    """At scale 1 nothing is interpolated, so every pixel's colour must decode to exactly its mask label."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(LABELS, size=(height, width))
    image, mask = encode(labels)
    transform = train_transforms((crop_h, crop_w), scale_range=(1.0, 1.0), hflip=data.draw(st.booleans()))
    torch.manual_seed(seed)
    out_image, out_mask = transform(image, mask)
    assert out_image.shape == (3, crop_h, crop_w) and out_mask.shape == (crop_h, crop_w)
    decoded = decode(denormalize(out_image))
    padded = decoded == -1
    assert (decoded != -2).all()
    assert (out_mask[torch.from_numpy(padded)] == 255).all()
    np.testing.assert_array_equal(decoded[~padded], out_mask.numpy()[~padded])
    # Only what the image lacks to fill the crop is padding.
    assert padded.sum() == crop_h * crop_w - min(height, crop_h) * min(width, crop_w)


@settings(max_examples=40, deadline=None)
@given(
    height=sizes,
    width=sizes,
    crop=st.integers(16, 97),
    block=st.integers(6, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_scale_keeps_labels_aligned(height, width, crop, block, seed):
    """With resizing, pixels inside a label region keep their label's colour; masks gain no new values."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(LABELS[:-1], size=(height // block + 1, width // block + 1))
    labels = coarse.repeat(block, 0).repeat(block, 1)[:height, :width]
    image, mask = encode(labels)
    torch.manual_seed(seed)
    out_image, out_mask = train_transforms(crop)(image, mask)
    values = set(out_mask.unique().tolist())
    assert values <= set(labels.ravel().tolist()) | {255}
    rgb = denormalize(out_image)
    out = out_mask.numpy()
    assert (np.abs(rgb[out == 255] - PAD_COLOUR) < 0.5).all()
    # Interior pixels: mask constant on the 3 x 3 neighbourhood, so no interpolation across a border.
    windows = np.lib.stride_tricks.sliding_window_view(out, (3, 3))
    uniform = (windows == windows[..., 1:2, 1:2]).all(axis=(-1, -2)) & (windows[..., 1, 1] != 255)
    centre = out[1:-1, 1:-1]
    expected = np.asarray([COLOURS[v] for v in range(6)], dtype=np.float64)[np.where(uniform, centre, 0)]
    error = np.abs(rgb[1:-1, 1:-1] - expected).max(axis=-1)
    assert error[uniform].max(initial=0.0) <= 3.0


def test_output_types_and_shapes():
    image = tv_tensors.Image(torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.randint(0, 3, (40, 50), dtype=torch.uint8))
    for transform, shape in (
        (train_transforms(64), (64, 64)),
        (train_transforms((24, 36)), (24, 36)),
        (eval_transforms(), (40, 50)),
    ):
        out_image, out_mask = transform(image, mask)
        assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
        assert out_image.dtype == torch.float32 and out_image.shape == (3, *shape)
        assert out_mask.dtype == torch.int64 and out_mask.shape == shape


def test_eval_transform_keeps_geometry_and_values():
    image, mask = encode(np.random.default_rng(0).choice(LABELS, size=(37, 61)))
    out_image, out_mask = eval_transforms()(image, mask)
    assert torch.equal(out_mask, mask.long())
    np.testing.assert_allclose(denormalize(out_image), image.permute(1, 2, 0).numpy(), atol=1e-3)


def test_same_seed_same_output_and_seeds_differ():
    image, mask = encode(np.random.default_rng(1).choice(LABELS, size=(60, 70)))
    transform = train_transforms(48)
    outputs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        outputs.append([transform(image, mask) for _ in range(4)])
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*outputs[:2], strict=True))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(outputs[0], outputs[2], strict=True))


def test_scales_come_from_the_discrete_set():
    transform = train_transforms(32)
    torch.manual_seed(0)
    drawn = {transform.sample_scale() for _ in range(300)}
    assert drawn == {0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0}
    continuous = train_transforms(32, scale_range=(0.5, 1.5), scale_step=0)
    values = [continuous.sample_scale() for _ in range(100)]
    assert all(0.5 <= v <= 1.5 for v in values) and len(set(values)) == 100


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_fixed_scale_resizes_the_pair(scale):
    image, mask = encode(np.zeros((40, 60), dtype=np.int64))
    transform = train_transforms(200, scale_range=(scale, scale), hflip=False)
    _, out_mask = transform(image, mask)
    valid = out_mask != 255
    assert valid.sum(0).max() == round(40 * scale) and valid.sum(1).max() == round(60 * scale)


def test_scale_choices():
    assert scale_choices((0.5, 2.0), 0.25) == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert scale_choices((1.0, 1.0), 0.25) == [1.0]
    assert scale_choices((0.5, 2.0), 0) is None
    for bad_range, step in (((0.0, 1.0), 0.25), ((2.0, 1.0), 0.25), ((0.5, 1.0), -0.1)):
        with pytest.raises(ValueError):
            scale_choices(bad_range, step)


def test_normalize_image_values_and_batches():
    image = torch.full((2, 3, 4, 5), 255, dtype=torch.uint8)
    out = normalize_image(image, IMAGENET_MEAN, IMAGENET_STD)
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out[1, :, 3, 4], expected)
    zero = normalize_image(torch.zeros(3, 1, 1, dtype=torch.uint8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    torch.testing.assert_close(zero.flatten(), torch.full((3,), -1.0))


def test_bad_crop_size():
    with pytest.raises(ValueError, match="crop_size"):
        train_transforms(0)


def test_resize_to_range_size_is_the_references():
    """preprocess_utils.resize_to_range with the zoo's ADE20K flags (513, 513, 16), by hand: the longer side
    becomes 513, the shorter floor(side * 513 / longer) raised to 16k + 1."""
    from deeplab.data.transforms import resize_to_range_size

    assert resize_to_range_size(375, 500, 513, 513, 16) == (385, 513)  # 375 * 1.026 = 384.75 -> 384 -> 385
    assert resize_to_range_size(683, 512, 513, 513, 16) == (513, 385)  # 512 * 513 / 683 = 384.56 -> 385
    assert resize_to_range_size(256, 256, 513, 513, 16) == (513, 513)  # small images grow
    assert resize_to_range_size(375, 500, 513, 513, None) == (384, 513)
    assert resize_to_range_size(300, 500, 400, 1000, 16) == (401, 673)  # the shorter side reaches min_size
