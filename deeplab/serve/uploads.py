"""Uploads: the request body read under a byte limit, then checked and decoded like ``deeplab predict``'s files.

Status codes say what was wrong: 413 for too many bytes or too large a side, 415 for a body that is not
an image or an image format we do not take, 422 for an empty, truncated or otherwise undecodable image.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import HTTPException, Request
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile

from ..imageio import ImageReadError, read_image

# Formats a browser or a camera produces; anything else Pillow could open (EPS, PSD, ICO ...) is refused.
SUPPORTED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
# Bodies taken as the image itself. curl --data-binary sends form-urlencoded unless told otherwise.
RAW_MEDIA_TYPES = ("", "application/octet-stream", "application/x-www-form-urlencoded")
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"),
)


@dataclass
class Upload:
    """The bytes of an uploaded image and the file name the client gave, if any."""

    data: bytes
    filename: str | None = None


def _error(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def _too_large(max_bytes: int) -> HTTPException:
    return _error(413, f"upload too large: the limit is {max_bytes} bytes ({max_bytes / 2**20:.1f} MiB)")


def _limited(receive: Callable[[], Awaitable[dict[str, Any]]], max_bytes: int) -> Callable[[], Awaitable[dict]]:
    """Wraps an ASGI ``receive`` so that the body is refused as soon as it passes ``max_bytes``."""
    received = 0

    async def receive_limited() -> dict[str, Any]:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise _too_large(max_bytes)
        return message

    return receive_limited


async def read_upload(request: Request, max_bytes: int) -> Upload:
    """Reads the image from a multipart form (its file part) or from a raw body, never past ``max_bytes``.

    Raises:
        HTTPException: 413 when the body is larger than ``max_bytes`` (checked against Content-Length before
            reading, and while reading), 415 for a content type that carries no image, 422 when a form has
            no file part.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limited = Request(request.scope, receive=_limited(request.receive, max_bytes))
    if media_type == "multipart/form-data":
        return await _read_form(limited)
    if media_type in RAW_MEDIA_TYPES or media_type.startswith("image/"):
        body = bytearray()
        async for chunk in limited.stream():
            body += chunk
        return Upload(bytes(body))
    raise _error(415, f"unsupported Content-Type {media_type!r}: send multipart/form-data with the image in a "
                      "'file' field, or the raw image bytes as image/* or application/octet-stream")


async def _read_form(request: Request) -> Upload:
    async with request.form(max_files=1, max_fields=16) as form:
        files = [value for value in form.values() if isinstance(value, UploadFile)]
        upload = form.get("file") if isinstance(form.get("file"), UploadFile) else (files[0] if files else None)
        if upload is None:
            raise _error(422, "the multipart form has no file part: send the image as a 'file' field")
        return Upload(await upload.read(), upload.filename)


def _signature_format(data: bytes) -> str | None:
    """The supported format whose magic bytes start ``data``, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if len(data) >= 2 and data[:1] == b"P" and data[1:2] in b"123456":
        return "PPM"
    return next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)


def _probe(data: bytes) -> tuple[str, int, int]:
    """Format and size from the image header alone (nothing is decoded)."""
    try:
        with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as probe:
            return str(probe.format), *probe.size
    except Image.DecompressionBombError as err:
        raise _error(413, f"image too large: {err}") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        known = _signature_format(data)
        if known is not None:
            reason = "its header cannot be read" if isinstance(err, UnidentifiedImageError) else str(err)
            raise _error(422, f"corrupt or truncated {known} image ({len(data)} bytes): {reason}") from err
        try:
            with Image.open(io.BytesIO(data)) as other:
                found = other.format
        except Exception:  # whatever Pillow cannot identify is simply not an image
            found = None
        if found:
            raise _error(415, f"unsupported image format {found}: send one of {', '.join(SUPPORTED_FORMATS)}") from err
        raise _error(415, f"the upload ({len(data)} bytes) is not an image: expected one of "
                          f"{', '.join(SUPPORTED_FORMATS)}") from err


def decode_image(data: bytes, max_side: int) -> torch.Tensor:
    """Checks an upload's header, then decodes it with ``deeplab predict``'s reader (EXIF, 16-bit, alpha ...).

    Returns:
        The image as a uint8 ``3 x H x W`` RGB tensor.

    Raises:
        HTTPException: 422 empty / truncated / undecodable, 415 not an image or unsupported format,
            413 a side longer than ``max_side`` (refused before decoding).
    """
    if not data:
        raise _error(422, "the upload is empty (0 bytes): send an image file")
    image_format, width, height = _probe(data)
    if max(width, height) > max_side:
        raise _error(413, f"image is {width}x{height} pixels: the longest side allowed is {max_side}")
    try:
        return read_image(io.BytesIO(data))
    except ImageReadError as err:
        reason = err.__cause__ or err
        raise _error(422, f"cannot decode the {image_format} image ({len(data)} bytes): {reason}") from err
