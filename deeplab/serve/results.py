"""Recent predictions kept for a while, so that the links a JSON answer gives can be fetched."""

from __future__ import annotations

import io
import secrets
from collections import OrderedDict
from dataclasses import dataclass

import torch
from PIL import Image

from ..constants import Palette
from ..imageio import colorize, encode_index_png, encode_rgb_png, overlay

RENDERINGS = ("mask", "color", "overlay", "image")


@dataclass(frozen=True)
class Prediction:
    """An upload as the model saw it (uint8 ``3 x H x W``) and its class map (``H x W``; a multilabel model's:
    one 0/1 map per class, ``C x H x W``)."""

    image: torch.Tensor
    mask: torch.Tensor
    filename: str | None = None

    @property
    def nbytes(self) -> int:
        return self.image.numel() * self.image.element_size() + self.mask.numel() * self.mask.element_size()


def render_png(prediction: Prediction, kind: str, palette: Palette, alpha: float = 0.5) -> bytes:
    """One of ``RENDERINGS`` as PNG bytes: the index mask (palette mode, pixel = class id), the colour mask,
    the overlay at opacity ``alpha``, or the decoded input image.

    A multilabel prediction's mask is a greyscale PNG whose pixel holds bit ``c`` where class ``c`` holds (value
    = the sum of ``2**c``; 8 classes at most); its colour mask and overlay draw every class that holds, one over
    the other in class order."""
    if prediction.mask.ndim == 3:
        return _render_labels(prediction, kind, palette, alpha)
    if kind == "mask":
        return encode_index_png(prediction.mask, palette)
    if kind == "color":
        return encode_rgb_png(colorize(prediction.mask, palette))
    if kind == "overlay":
        return encode_rgb_png(overlay(prediction.image, prediction.mask, palette, alpha))
    if kind == "image":
        return encode_rgb_png(prediction.image.permute(1, 2, 0).contiguous().numpy())
    raise ValueError(f"unknown rendering {kind!r}; valid: {', '.join(RENDERINGS)}")


def _render_labels(prediction: Prediction, kind: str, palette: Palette, alpha: float) -> bytes:
    labels = prediction.mask.long()
    if kind == "mask":
        if labels.shape[0] > 8:
            raise ValueError(f"a bit-packed mask holds 8 classes at most; this model has {labels.shape[0]}: "
                             "use deeplab predict, which writes one mask per class")
        weights = (2 ** torch.arange(labels.shape[0])).view(-1, 1, 1)
        return encode_grey_png((labels * weights).sum(0).to(torch.uint8))
    if kind == "image":
        return encode_rgb_png(prediction.image.permute(1, 2, 0).contiguous().numpy())
    if kind not in ("color", "overlay"):
        raise ValueError(f"unknown rendering {kind!r}; valid: {', '.join(RENDERINGS)}")
    picture = prediction.image if kind == "overlay" else torch.zeros_like(prediction.image)
    opacity = alpha if kind == "overlay" else 1.0
    for index, held in enumerate(labels):
        picture = overlay(picture, torch.where(held == 1, index, 255), palette, opacity).permute(2, 0, 1)
    return encode_rgb_png(picture.permute(1, 2, 0).contiguous().numpy())


def encode_grey_png(values: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values.numpy(), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


class ResultStore:
    """The most recent predictions under random ids, bounded in count and in bytes (oldest go first)."""

    def __init__(self, max_items: int = 32, max_bytes: int = 256 * 2**20) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Prediction] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, prediction: Prediction) -> str:
        """Stores ``prediction`` (evicting the oldest as needed) and returns its id."""
        mask = prediction.mask
        if mask.numel() and 0 <= int(mask.min()) and int(mask.max()) <= 255:
            prediction = Prediction(prediction.image, mask.to(torch.uint8), prediction.filename)  # 8x smaller
        while self._items and (len(self._items) >= self.max_items or self._bytes + prediction.nbytes > self.max_bytes):
            _, evicted = self._items.popitem(last=False)
            self._bytes -= evicted.nbytes
        result_id = secrets.token_urlsafe(12)
        self._items[result_id] = prediction
        self._bytes += prediction.nbytes
        return result_id

    def get(self, result_id: str) -> Prediction | None:
        prediction = self._items.get(result_id)
        if prediction is not None:
            self._items.move_to_end(result_id)
        return prediction
