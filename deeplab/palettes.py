"""Colour palettes for label masks: the PASCAL VOC colour map and helpers for PIL palette images.

A bottom-layer module (imports only :mod:`deeplab.constants`), so I/O and inference can use it
without importing the dataset package.
"""

from __future__ import annotations

from collections.abc import Sequence

from .constants import Colour

Palette = list[Colour]


def voc_palette(n: int = 256) -> Palette:
    """The PASCAL VOC colour map: bits of the class id are spread over R, G and B, high bits first.

    Args:
        n: Number of colours (class ids ``0 .. n - 1``).

    Returns:
        ``n`` RGB tuples; id 0 is black, 1 is (128, 0, 0), 2 is (0, 128, 0), 15 is (192, 128, 128).
    """
    if not 0 <= n <= 256:
        raise ValueError(f"n must be in [0, 256], got {n}")
    palette: Palette = []
    for label in range(n):
        rgb = [0, 0, 0]
        code = label
        for bit in range(7, -1, -1):  # three bits of the id per step, from the colour's MSB down
            for channel in range(3):
                rgb[channel] |= ((code >> channel) & 1) << bit
            code >>= 3
        palette.append((rgb[0], rgb[1], rgb[2]))
    return palette


CITYSCAPES_PALETTE: Palette = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]  # fmt: skip
"""The official colour of each of the 19 evaluated Cityscapes classes, in train-id order."""


def default_palette(num_classes: int) -> Palette:
    """A palette for ``num_classes`` classes: the first ``num_classes`` colours of the VOC map."""
    if num_classes > 256:
        raise ValueError(f"at most 256 classes fit a uint8 mask, got {num_classes}")
    return voc_palette(num_classes)


def palette_to_flat(palette: Sequence[tuple[int, int, int]]) -> list[int]:
    """Flatten a palette for ``PIL.Image.putpalette``: ``[r0, g0, b0, r1, ...]`` padded with 0 to 768 values.

    Raises:
        ValueError: more than 256 colours, or a component outside ``0..255``.
    """
    if len(palette) > 256:
        raise ValueError(f"a PIL palette holds at most 256 colours, got {len(palette)}")
    flat: list[int] = []
    for colour in palette:
        if len(colour) != 3 or not all(0 <= int(c) <= 255 for c in colour):
            raise ValueError(f"palette colours must be three values in 0..255, got {colour}")
        flat.extend(int(c) for c in colour)
    return flat + [0] * (768 - len(flat))
