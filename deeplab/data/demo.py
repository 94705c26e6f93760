"""The embedded demo dataset: synthetic scenes of coloured, textured shapes, generated on the fly."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision import tv_tensors

from .base import PairTransform, SegmentationDataset

DEMO_CLASSES = ("background", "disk", "square", "triangle", "ring", "bar", "cross")
DEMO_PALETTE = [
    (0, 0, 0),
    (220, 40, 40),
    (40, 80, 230),
    (40, 180, 60),
    (245, 185, 20),
    (190, 50, 210),
    (30, 205, 215),
]
DEFAULT_SIZES = {"train": 600, "val": 100}

# Hue (HSV, 0..1) of each object class, >= 0.13 apart so a jitter of +-0.03 never makes them meet.
_HUES = {1: 0.0, 2: 0.64, 3: 0.33, 4: 0.13, 5: 0.80, 6: 0.50}
_SPLIT_CODES = {"train": 0, "val": 1}
_REFERENCE_SIZE = 128.0  # shape sizes below are in pixels of a 128 x 128 image

Geometry = tuple[float, float, float]  # centre x, centre y, radius: what the shading needs
ShapeDrawer = Callable[[ImageDraw.ImageDraw, np.random.Generator, "_Spot"], Geometry]


class _Spot(NamedTuple):
    """Where and how big to draw: centre, pixels per reference pixel, size quantile in [0, 1]."""

    x: float
    y: float
    unit: float
    quantile: float

    def size(self, low: float, high: float) -> float:
        """The size at this spot's quantile of a log-uniform law on ``[low, high]`` reference pixels."""
        return self.unit * math.exp(math.log(low) + self.quantile * (math.log(high) - math.log(low)))


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    """Vertices at equal angular steps from ``angle``, vertex k at distance ``radii[k]``."""
    step = 2 * math.pi / len(radii)
    return [
        (cx + r * math.cos(angle + k * step), cy + r * math.sin(angle + k * step))
        for k, r in enumerate(radii)
    ]


def _draw_disk(draw: ImageDraw.ImageDraw, rng: np.random.Generator, spot: _Spot) -> Geometry:
    radius = spot.size(4, 42)
    squash = rng.uniform(0.8, 1.0)
    draw.ellipse(
        [spot.x - radius, spot.y - radius * squash, spot.x + radius, spot.y + radius * squash], fill=255
    )
    return spot.x, spot.y, radius


def _draw_square(draw: ImageDraw.ImageDraw, rng: np.random.Generator, spot: _Spot) -> Geometry:
    radius = spot.size(5, 50)
    draw.polygon(_polygon(spot.x, spot.y, [radius] * 4, rng.uniform(0, math.pi / 2)), fill=255)
    return spot.x, spot.y, radius


def _draw_triangle(draw: ImageDraw.ImageDraw, rng: np.random.Generator, spot: _Spot) -> Geometry:
    radius = spot.size(6, 55)
    radii = list(radius * rng.uniform(0.85, 1.15, size=3))
    draw.polygon(_polygon(spot.x, spot.y, radii, rng.uniform(0, 2 * math.pi)), fill=255)
    return spot.x, spot.y, radius


def _draw_ring(draw: ImageDraw.ImageDraw, rng: np.random.Generator, spot: _Spot) -> Geometry:
    radius = spot.size(7, 45)
    thickness = max(3, round(rng.uniform(4.5 * spot.unit, max(5.5 * spot.unit, 0.4 * radius))))
    box = [spot.x - radius, spot.y - radius, spot.x + radius, spot.y + radius]
    draw.ellipse(box, outline=255, width=thickness)
    return spot.x, spot.y, radius


def _draw_bar(draw: ImageDraw.ImageDraw, rng: np.random.Generator, spot: _Spot) -> Geometry:
    half = spot.size(8, 65)
    width = max(3, round(rng.uniform(3, 6) * spot.unit))
    angle = rng.uniform(0, math.pi)
    dx, dy = half * math.cos(angle), half * math.sin(angle)
    draw.line([(spot.x - dx, spot.y - dy), (spot.x + dx, spot.y + dy)], fill=255, width=width)
    return spot.x, spot.y, half


def _draw_cross(draw: ImageDraw.ImageDraw, rng: np.random.Generator, spot: _Spot) -> Geometry:
    arm = spot.size(6, 40)
    half_width = arm * rng.uniform(0.18, 0.3)
    # A plus sign has 12 corners: per arm, two at its tip and one inner corner before the next arm.
    outer, inner = math.hypot(arm, half_width), math.hypot(half_width, half_width)
    spread = math.atan2(half_width, arm)
    base = rng.uniform(0, math.pi / 2)
    corners = []
    for k in range(4):
        axis = base + k * math.pi / 2
        for radius, angle in ((outer, axis - spread), (outer, axis + spread), (inner, axis + math.pi / 4)):
            corners.append((spot.x + radius * math.cos(angle), spot.y + radius * math.sin(angle)))
    draw.polygon(corners, fill=255)
    return spot.x, spot.y, arm


_SHAPES: dict[int, ShapeDrawer] = {
    1: _draw_disk,
    2: _draw_square,
    3: _draw_triangle,
    4: _draw_ring,
    5: _draw_bar,
    6: _draw_cross,
}


def _pattern(
    label: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, geometry: Geometry, unit: float
) -> np.ndarray:
    """Brightness factor of a class's surface texture (1 = the instance's base colour)."""
    cx, cy, radius = geometry
    if label == 1:  # disk: shaded like a ball
        return 1.0 - 0.4 * np.minimum(((xx - cx) ** 2 + (yy - cy) ** 2) / (radius * radius), 1.0)
    if label == 2:  # square: checkerboard
        period = rng.uniform(3, 7) * unit
        cells = np.floor(xx / period) + np.floor(yy / period)
        return np.where(cells % 2 == 0, 1.0, 0.6)
    if label == 3:  # triangle: oblique stripes
        period, angle = rng.uniform(4, 9) * unit, rng.uniform(0, math.pi)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
        return 0.8 + 0.2 * np.sin(phase)
    if label == 6:  # cross: dotted
        period = rng.uniform(4, 7) * unit
        dots = np.sin(xx * (2 * math.pi / period)) * np.sin(yy * (2 * math.pi / period)) > 0.5
        return np.where(dots, 0.65, 1.0)
    return np.ones_like(xx)  # ring and bar are thin: plain colour


def _instance_colour(rng: np.random.Generator, label: int) -> np.ndarray:
    hue = (_HUES[label] + rng.uniform(-0.03, 0.03)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95))
    return np.asarray(rgb, dtype=np.float32) * 255


def _background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Low-saturation canvas: grey base, blotchy low-frequency shading and a faint wood-grain texture."""
    coarse = rng.standard_normal((5, 5, 1)) * 28 + rng.standard_normal((5, 5, 3)) * 6
    coarse_img = Image.fromarray(np.clip(128 + coarse, 0, 255).astype(np.uint8))
    blotches = np.asarray(coarse_img.resize((size, size), Image.BICUBIC), dtype=np.float32) - 128
    period, angle = rng.uniform(4, 16) * size / _REFERENCE_SIZE, rng.uniform(0, math.pi)
    grain = rng.uniform(0, 14) * np.sin(
        (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
    )
    base = rng.uniform(60, 190) + rng.normal(0, 6, size=3)
    return base.astype(np.float32) + blotches + grain[..., None]


class DemoDataset(SegmentationDataset):
    """Synthetic scenes of six kinds of textured shapes on a textured grey background.

    Every sample is a pure function of ``(seed, split, index)``: it is rendered on the fly with
    numpy + PIL (a few milliseconds at 128 x 128), so there are no files and nothing to download, and the
    ``train`` and ``val`` splits are fixed and disjoint (independent random streams).

    Generator, per image:

    * background: grey of random brightness with a slight tint, blotchy low-frequency shading, a
      faint sinusoidal grain, plus 0-3 *grey* decoy shapes (label ``background``), so that shape
      alone never identifies a class;
    * 3-8 objects of random class, position and size; sizes are log-uniform over about a decade
      (a disk's radius runs from 4 to 42 px at 128 x 128), so scales differ widely;
    * each class has its own hue family (per-instance jitter of hue, saturation and value) and
      surface pattern: ``disk`` red, ball-shaded ellipse; ``square`` blue, checkerboard, rotated;
      ``triangle`` green, oblique stripes; ``ring`` yellow-orange annulus 4-18 px thick;
      ``bar`` purple line 3-6 px wide (the thin structure); ``cross`` cyan plus sign with dots;
    * larger objects tend to be drawn first; later objects occlude earlier ones and the mask shows
      what is visible (a ring's hole shows what lies beneath it);
    * Gaussian pixel noise of random strength over the whole image.

    Shape sizes scale with ``image_size`` (defined at 128 px). ``root`` is ignored; it is accepted
    so that every dataset has the same signature.
    """

    classes = DEMO_CLASSES
    palette = DEMO_PALETTE

    def __init__(
        self,
        root: str | None = None,
        split: str = "train",
        *,
        transforms: PairTransform | None = None,
        seed: int = 0,
        num_images: int | None = None,
        image_size: int = 128,
    ) -> None:
        super().__init__(transforms)
        if split not in _SPLIT_CODES:
            raise ValueError(f"DemoDataset split must be one of {sorted(_SPLIT_CODES)}, got {split!r}")
        if num_images is not None and num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.root = root
        self.split = split
        self.seed = seed
        self.image_size = image_size
        self.num_images = DEFAULT_SIZES[split] if num_images is None else num_images
        self._yy, self._xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)

    def __len__(self) -> int:
        return self.num_images

    def name(self, index: int) -> str:
        return f"demo_{self.split}_{self._check_index(index):05d}"

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image, mask = self.render(self._check_index(index))
        return tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), tv_tensors.Mask(
            torch.from_numpy(mask)
        )

    def _check_index(self, index: int) -> int:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        return index % self.num_images

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Render sample ``index`` as numpy arrays: ``H x W x 3`` uint8 RGB and ``H x W`` uint8 labels."""
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])
        size = self.image_size
        canvas = _background(rng, size, self._yy, self._xx)
        labels = np.zeros((size, size), dtype=np.uint8)
        for _ in range(rng.integers(0, 4)):
            grey = rng.uniform(40, 220) + rng.normal(0, 5, size=3)
            self._paint(canvas, labels, rng, int(rng.integers(1, 7)), rng.uniform(), colour=grey, label=0)
        num_objects = int(rng.integers(3, 9))
        kinds, quantiles = rng.integers(1, 7, size=num_objects), rng.uniform(size=num_objects)
        # Mostly big ones first: small objects stay visible, yet some get buried under big ones.
        order = np.argsort(-quantiles - rng.normal(0, 0.3, size=num_objects))
        for kind, quantile in zip(kinds[order], quantiles[order], strict=True):
            colour = _instance_colour(rng, int(kind))
            self._paint(canvas, labels, rng, int(kind), float(quantile), colour=colour)
        canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(3, 10)
        return np.clip(canvas, 0, 255).astype(np.uint8), labels

    def _paint(
        self,
        canvas: np.ndarray,
        labels: np.ndarray,
        rng: np.random.Generator,
        kind: int,
        quantile: float,
        *,
        colour: np.ndarray,
        label: int | None = None,
    ) -> None:
        """Draw one shape of class ``kind`` onto ``canvas`` and ``labels`` (``label`` overrides the id)."""
        size = self.image_size
        stencil = Image.new("L", (size, size), 0)
        cx, cy = rng.uniform(0, size, size=2)
        spot = _Spot(float(cx), float(cy), size / _REFERENCE_SIZE, quantile)
        geometry = _SHAPES[kind](ImageDraw.Draw(stencil), rng, spot)
        box = stencil.getbbox()
        if box is None:
            return
        x0, y0, x1, y1 = box
        inside = np.asarray(stencil.crop(box)) > 0
        yy, xx = self._yy[y0:y1, x0:x1], self._xx[y0:y1, x0:x1]
        surface = _pattern(kind, rng, yy, xx, geometry, spot.unit)[..., None] * colour
        canvas[y0:y1, x0:x1][inside] = surface[inside]
        labels[y0:y1, x0:x1][inside] = kind if label is None else label


class BinaryDemoDataset(DemoDataset):
    """The demo scenes as a binary task: the shapes of class ``foreground`` (1 = ``disk`` ... 6 = ``cross``) are
    1, everything else (other shapes, grey decoys, background) is 0. Same images as :class:`DemoDataset`."""

    def __init__(self, root: str | None = None, split: str = "train", *, foreground: int = 1,
                 **options: Any) -> None:
        super().__init__(root, split, **options)
        if not 1 <= foreground < len(DEMO_CLASSES):
            raise ValueError(f"foreground must be a shape class 1..{len(DEMO_CLASSES) - 1} "
                             f"({', '.join(DEMO_CLASSES[1:])}), got {foreground}")
        self.foreground = foreground
        self.classes = ("background", DEMO_CLASSES[foreground])
        self.palette = [DEMO_PALETTE[0], DEMO_PALETTE[foreground]]

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image, mask = super().load(index)
        return image, tv_tensors.Mask((mask == self.foreground).to(torch.uint8))
