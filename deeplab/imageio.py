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

BAND_EXTENSIONS = frozenset({".tif", ".tiff", ".npy"})
"""Suffixes :func:`read_bands` reads band by band (tifffile, numpy) rather than through Pillow."""

COLOUR_MASK_MODES = ("RGB", "RGBA")
"""Pillow modes of a colour mask: each pixel's colour names its class (through the dataset's palette)."""

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


class ChannelError(ValueError):
    """An image whose number of channels is not the one the model takes (``model.in_channels``)."""


def read_bands(path: str | Path, channels: int = 3, max_value: float | None = None) -> torch.Tensor:
    """Reads an image with ``channels`` bands as a ``channels x H x W`` tensor, for any band count and depth.

    Where the pixels come from:

    - ``.tif`` / ``.tiff``: every band through tifffile, as stored (no EXIF orientation): a multi-band file
      (samples per pixel, ``H x W x C``) or a multi-page / planar one (``C x H x W``); leading axes that are not
      rows or columns are the channels. Palette and CMYK TIFFs go through Pillow (as RGB), like other images.
    - ``.npy``: ``H x W`` (one channel), ``H x W x C`` or ``C x H x W``: the channel axis is the shorter of the
      first and the last (the first when they are equal).
    - anything else through Pillow, upright by its EXIF orientation: grey or RGB (``channels`` 1 or 3, converting
      between them), RGBA when ``channels`` is 4; 16-bit grey PNGs keep their 16 bits.

    A single band is repeated when ``channels`` is 3 (a grey image for an RGB model); any other mismatch is a
    :class:`ChannelError`.

    Scaling: 8-bit data without ``max_value`` stays uint8 (0..255, as :func:`read_image` gives); otherwise the
    result is float32 on the 0..1 scale: values divided by ``max_value``, else by the dtype's range (65535 for
    16-bit), float data taken as already on that scale. Other integer types (int32, ...) need ``max_value``
    unless their values fit 16 bits.

    Raises:
        ImageReadError: naming the file, if it cannot be opened or decoded.
        ChannelError: naming the file, its channel count and ``channels``.
    """
    path = Path(path)
    bands = decode_bands(path, channels)
    if bands.shape[0] == 1 and channels == 3:
        bands = np.repeat(bands, 3, axis=0)
    if bands.shape[0] != channels:
        raise ChannelError(f"{path}: {bands.shape[0]} channel(s) (shape {tuple(bands.shape)}) but model.in_channels="
                           f"{channels}; images with more than 3 channels are read from TIFF or .npy files")
    return torch.from_numpy(scale_bands(bands, max_value, str(path)))


def decode_bands(path: str | Path, channels: int = 3) -> np.ndarray:
    """The ``C x H x W`` array of an image as stored (dtype kept), read as :func:`read_bands` describes, before
    its channel check and scaling.

    Raises:
        ImageReadError: naming the file, if it cannot be opened or decoded.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return _npy_bands(path)
        if suffix in (".tif", ".tiff"):
            bands = _tiff_bands(path)
            if bands is not None:
                return bands
        return _pillow_bands(path, channels)
    except ImageReadError:
        raise
    except (*_DECODE_ERRORS, KeyError, IndexError) as err:
        raise ImageReadError(f"cannot read image {str(path)!r}: {err}") from err


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """An image for display: uint8 as it is, a float image on the 0..1 scale (16-bit data) mapped to 0..255."""
    if image.dtype == torch.uint8:
        return image
    return (image.as_subclass(torch.Tensor).float() * 255).round().clamp(0, 255).to(torch.uint8)


def scale_bands(bands: np.ndarray, max_value: float | None = None, name: str = "image") -> np.ndarray:
    """``C x H x W`` values as :func:`read_bands` returns them: uint8 kept, anything else float32 on 0..1."""
    if bands.dtype == np.bool_:
        bands = bands.astype(np.uint8) * 255
    if max_value is not None:
        if not max_value > 0:
            raise ValueError(f"max_value must be positive, got {max_value}")
        return np.ascontiguousarray(bands, dtype=np.float32) / np.float32(max_value)
    if bands.dtype == np.uint8:
        return np.ascontiguousarray(bands)
    if bands.dtype.kind == "f":
        return np.ascontiguousarray(bands, dtype=np.float32)
    if bands.dtype == np.uint16 or (bands.dtype.kind in "iu" and bands.min(initial=0) >= 0
                                    and bands.max(initial=0) <= 65535):
        return bands.astype(np.float32) / np.float32(65535)
    raise ImageReadError(f"{name}: {bands.dtype} values {bands.min()}..{bands.max()} do not fit 16 bits; set "
                         "data.max_value to the value that means full scale")


def _npy_bands(path: Path) -> np.ndarray:
    array = np.load(path, allow_pickle=False)
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise ImageReadError(f"cannot read image {str(path)!r}: expected an H x W, H x W x C or C x H x W array, "
                             f"got shape {array.shape}")
    return np.moveaxis(array, -1, 0) if array.shape[-1] < array.shape[0] else array


def _tiff_bands(path: Path) -> np.ndarray | None:
    """A TIFF's bands through tifffile; ``None`` for the colour TIFFs Pillow renders better (palette, CMYK) and,
    without imagecodecs, for compressions tifffile cannot decode alone (LZW, JPEG)."""
    try:
        import tifffile  # imported when used: most runs read no TIFF
    except ImportError as err:
        raise ImageReadError(f"cannot read image {str(path)!r}: TIFF images need tifffile: "
                             "pip install 'deeplab[data]'") from err

    with tifffile.TiffFile(path) as tif:
        if tif.pages.first.photometric in (tifffile.PHOTOMETRIC.PALETTE, tifffile.PHOTOMETRIC.SEPARATED):
            return None
        series = tif.series[0]
        try:
            array, axes = series.asarray(), series.axes
        except ValueError as err:
            if "imagecodecs" in str(err):
                return None
            raise
    if axes.endswith("S"):  # samples per pixel: H x W x C
        array = np.moveaxis(array, -1, 0)
    return array.reshape(-1, *array.shape[-2:])


def _pillow_bands(path: Path, channels: int) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
            gray = np.array(image)
            return (gray.astype(np.uint16) if image.mode in _SIXTEEN_BIT_MODES else gray)[None]
        if channels == 1:
            return np.array(image.convert("L"))[None]
        if channels == 4 and image.mode == "RGBA":
            return np.moveaxis(np.array(image), -1, 0)
        return np.moveaxis(_to_rgb_array(image), -1, 0)


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
    """Map an image (``... x C x H x W``) to float32 ``(x - mean) / std`` on the 0..1 scale, per channel.

    A uint8 image is divided by 255 first; a float image (16-bit or multispectral data from :func:`read_bands`)
    is taken as on the 0..1 scale already. ``mean`` and ``std`` have one entry per channel.
    Returns a plain ``torch.Tensor`` (no ``tv_tensors`` subclass), so batches collate to plain tensors.
    """
    image = image_uint8.as_subclass(torch.Tensor)
    if len(mean) != image.shape[-3] or len(std) != image.shape[-3]:
        raise ValueError(f"the image has {image.shape[-3]} channel(s) but mean has {len(mean)} and std {len(std)} "
                         "entries: set model.mean and model.std (deeplab data stats ROOT computes them)")
    scale = 255.0 if image.dtype == torch.uint8 else 1.0
    image = image.to(torch.float32) / scale
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=image.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=image.device).view(-1, 1, 1)
    return (image - mean_t) / std_t
