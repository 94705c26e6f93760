"""Image files in and out: any common image as uint8 RGB, index masks as class ids, colour renderings.

Every write is atomic: the file is written next to its destination under a temporary name, then
moved over it with ``os.replace``, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import IMAGENET_MEAN, IMAGENET_STD, Palette
from .palettes import palette_to_flat

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
"""File suffixes (lower case) taken as images when scanning folders; all of them decode through Pillow."""

MASK_MODES = ("L", "P", "1")
"""Pillow modes of a mask file: single-channel, pixel value = class id (for ``P`` the index, not the colour).
A dataset may accept fewer (``SegmentationDataset.mask_modes``), never others."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageReadError(OSError):
    """An image file that does not exist, is not an image, or is corrupt."""


class MaskModeError(ValueError):
    """A mask that is not a single-channel index image (e.g. an RGB colour mask)."""


def read_image(path: str | Path | IO[bytes]) -> torch.Tensor:
    """Reads an image as a uint8 ``3 x H x W`` RGB tensor, upright according to its EXIF orientation.

    ``path`` may also be a binary file object (e.g. ``io.BytesIO`` holding an uploaded file).

    Grayscale and palette images become RGB, alpha is dropped (not composited), CMYK is converted,
    and 16-bit or 32-bit integer images are rescaled to 8 bits (65535 -> 255) rather than clipped.

    Raises:
        ImageReadError: naming the file, if it cannot be opened or decoded.
    """
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            array = _to_rgb_array(image)
    except _DECODE_ERRORS as err:
        raise ImageReadError(f"cannot read image {str(path)!r}: {err}") from err
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def mask_mode_problem(name: str, mode: str, modes: tuple[str, ...] = MASK_MODES) -> str:
    """The message for a mask file ``name`` of Pillow mode ``mode``, which is not one of ``modes``."""
    shown = " or ".join(m for m in modes if m != "1")  # a 1-bit mask is accepted but not advertised
    return (f"{name}: mask mode is {mode!r}: expected a single-channel index PNG (mode {shown}) whose pixel "
            "values are class ids; convert colour masks to ids first")


def read_mask(path: str | Path, modes: tuple[str, ...] = MASK_MODES) -> np.ndarray:
    """Reads a mask as a uint8 ``H x W`` array of class ids: the stored values, never colours (for mode
    ``P`` the palette index). The pixel grid is taken as stored: EXIF orientation does not apply to masks.

    Args:
        path: the mask file (an index or palette PNG).
        modes: the Pillow modes accepted, a subset of :data:`MASK_MODES`.

    Raises:
        MaskModeError: the image is not single-channel (or not one of ``modes``), e.g. an RGB colour mask.
        ImageReadError: naming the file, if it cannot be opened or decoded.
    """
    try:
        with Image.open(path) as mask:
            if mask.mode not in modes:
                raise MaskModeError(mask_mode_problem(str(path), mask.mode, modes))
            return np.array(mask, dtype=np.uint8)
    except MaskModeError:
        raise
    except _DECODE_ERRORS as err:
        raise ImageReadError(f"cannot read mask {str(path)!r}: {err}") from err


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        gray = _rescale_to_uint8(np.asarray(image), wide=image.mode in ("I", "F"))
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow warns on P -> RGB when transparency is set
    return np.array(image.convert("RGB"))  # a writable copy: torch warns on read-only arrays


def _rescale_to_uint8(values: np.ndarray, wide: bool) -> np.ndarray:
    """Maps 16-bit values linearly onto 0..255; wider data outside 0..65535 is min-max stretched."""
    values = values.astype(np.float64)
    low, high = 0.0, 65535.0
    if wide and (values.min() < 0 or values.max() > 65535 or not np.isfinite(values).all()):
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
    scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Opens a temporary file beside ``path`` and moves it onto ``path`` only if the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        text_options = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **text_options) as handle:
            yield handle
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _as_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def encode_index_png(mask: torch.Tensor | np.ndarray, palette: Palette) -> bytes:
    """An ``H x W`` class map as the bytes of a palette-mode PNG whose pixel values are the class ids."""
    values = _as_numpy(mask)
    if values.ndim != 2:
        raise ValueError(f"expected an H x W mask, got shape {values.shape}")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError("a palette PNG holds class ids 0..255 only")
    image = Image.fromarray(values.astype(np.uint8))
    image.putpalette(palette_to_flat(palette))  # turns the "L" image into mode "P"
    return _png_bytes(image)


def encode_rgb_png(image: torch.Tensor | np.ndarray) -> bytes:
    """A uint8 ``H x W x 3`` array (as returned by ``colorize`` and ``overlay``) as the bytes of an RGB PNG."""
    values = _as_numpy(image)
    if values.ndim != 3 or values.shape[2] != 3 or values.dtype != np.uint8:
        raise ValueError(f"expected a uint8 H x W x 3 image, got {values.dtype} {values.shape}")
    return _png_bytes(Image.fromarray(values))


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_index_png(mask: torch.Tensor | np.ndarray, path: str | Path, palette: Palette) -> None:
    """Writes an ``H x W`` class map as a palette-mode PNG whose pixel values are the class ids."""
    data = encode_index_png(mask, palette)
    with atomic_write(path) as handle:
        handle.write(data)


def save_rgb_png(image: torch.Tensor | np.ndarray, path: str | Path) -> None:
    """Writes a uint8 ``H x W x 3`` array (as returned by ``colorize`` and ``overlay``) as an RGB PNG."""
    data = encode_rgb_png(image)
    with atomic_write(path) as handle:
        handle.write(data)


def colorize(mask: torch.Tensor, palette: Palette) -> torch.Tensor:
    """Maps an ``H x W`` class map to a uint8 ``H x W x 3`` colour image; ids without a colour are black."""
    mask = torch.as_tensor(mask).long().cpu()
    if mask.numel() and mask.min() < 0:
        raise ValueError("mask has negative class ids")
    size = max(len(palette), int(mask.max()) + 1 if mask.numel() else 0)
    table = torch.zeros(size, 3, dtype=torch.uint8)
    if len(palette):
        table[: len(palette)] = torch.tensor(palette, dtype=torch.uint8)
    return table[mask]


def overlay(image: torch.Tensor, mask: torch.Tensor, palette: Palette, alpha: float = 0.5) -> torch.Tensor:
    """Blends the class colours over a uint8 ``3 x H x W`` image; returns uint8 ``H x W x 3``.

    Pixels whose id has no palette colour (e.g. 255, "ignore") show the image unchanged.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = torch.as_tensor(image).cpu().permute(1, 2, 0).float()
    mask = torch.as_tensor(mask).long().cpu()
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"image is {tuple(rgb.shape[:2])} but mask is {tuple(mask.shape)}")
    colour = colorize(mask, palette).float()
    blended = (1.0 - alpha) * rgb + alpha * colour
    blended = torch.where((mask < len(palette)).unsqueeze(-1), blended, rgb)
    return blended.round().clamp(0, 255).to(torch.uint8)


def normalize_image(
    image_uint8: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Map a uint8 image (``... x 3 x H x W``, values 0..255) to float32 ``(x / 255 - mean) / std``.

    Returns a plain ``torch.Tensor`` (no ``tv_tensors`` subclass), so batches collate to plain tensors.
    """
    image = image_uint8.as_subclass(torch.Tensor).to(torch.float32) / 255.0
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=image.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=image.device).view(-1, 1, 1)
    return (image - mean_t) / std_t
