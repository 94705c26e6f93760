"""Recent predictions kept for a while, so that the links a JSON answer gives can be fetched."""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..constants import Palette
from ..imageio import colorize, encode_index_png, encode_rgb_png, overlay

RENDERINGS = ("mask", "color", "overlay", "image")


@dataclass(frozen=True)
class Prediction:
    """An upload as the model saw it (uint8 ``3 x H x W``) and its class map (``H x W``)."""

    image: torch.Tensor
    mask: torch.Tensor
    filename: str | None = None

    @property
    def nbytes(self) -> int:
        return self.image.numel() * self.image.element_size() + self.mask.numel() * self.mask.element_size()


def render_png(prediction: Prediction, kind: str, palette: Palette, alpha: float = 0.5) -> bytes:
    """One of ``RENDERINGS`` as PNG bytes: the index mask (palette mode, pixel = class id), the colour mask,
    the overlay at opacity ``alpha``, or the decoded input image."""
    if kind == "mask":
        return encode_index_png(prediction.mask, palette)
    if kind == "color":
        return encode_rgb_png(colorize(prediction.mask, palette))
    if kind == "overlay":
        return encode_rgb_png(overlay(prediction.image, prediction.mask, palette, alpha))
    if kind == "image":
        return encode_rgb_png(prediction.image.permute(1, 2, 0).contiguous().numpy())
    raise ValueError(f"unknown rendering {kind!r}; valid: {', '.join(RENDERINGS)}")


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
