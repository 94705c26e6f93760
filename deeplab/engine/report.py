"""What a finished run shows a person: a training-curve PNG and side-by-side prediction previews."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..data import SegmentationDataset
from ..imageio import atomic_write, overlay, save_rgb_png
from ..inference import Predictor

_SIZE, _MARGIN = (640, 360), 48


def read_log(path: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, loss) and (step, mIoU) series from a run's ``log.jsonl``."""
    losses, mious = [], []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses.append((record["step"], record["loss"]))
        if "miou" in record:
            mious.append((record["step"], record["miou"]))
    return losses, mious


def _polyline(draw: ImageDraw.ImageDraw, points: list[tuple[int, float]], top: float, last_step: int,
              colour: tuple[int, int, int]) -> None:
    width, height = _SIZE[0] - 2 * _MARGIN, _SIZE[1] - 2 * _MARGIN
    xy = [(_MARGIN + width * s / last_step, _MARGIN + height * (1 - v / top)) for s, v in points]
    if len(xy) > 1:
        draw.line(xy, fill=colour, width=2)
    for x, y in xy[-1:] if len(xy) > 1 else xy:
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)


def plot_training_curve(log_path: Path, out_path: Path) -> None:
    """Loss (blue, left scale from 0) and val mIoU (orange, 0 to 1) against the step."""
    losses, mious = read_log(log_path)
    image = Image.new("RGB", _SIZE, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((_MARGIN, _MARGIN, _SIZE[0] - _MARGIN, _SIZE[1] - _MARGIN), outline=(160, 160, 160))
    last_step = max([s for s, _ in losses + mious] + [1])
    top_loss = max([v for _, v in losses] + [1e-6])
    _polyline(draw, losses, top_loss, last_step, (31, 119, 180))
    _polyline(draw, mious, 1.0, last_step, (255, 127, 14))
    best = max((v for _, v in mious), default=float("nan"))
    draw.text((_MARGIN, 12), f"loss (blue, 0-{top_loss:.2f})   val mIoU (orange, 0-1; best {best:.3f})", fill="black")
    draw.text((_MARGIN, _SIZE[1] - _MARGIN + 8), f"step 0 .. {last_step}", fill="black")
    with atomic_write(out_path) as handle:
        image.save(handle, format="PNG")


def save_previews(predictor: Predictor, dataset: SegmentationDataset, out_dir: Path, count: int = 4) -> list[Path]:
    """For the first ``count`` samples: image | ground truth | prediction overlay, side by side."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(min(count, len(dataset))):
        image, mask = dataset.load(index)
        prediction = predictor.predict(image)
        truth = overlay(image, torch.as_tensor(mask).long(), predictor.palette, alpha=1.0)
        panels = [image.permute(1, 2, 0), truth, overlay(image, prediction, predictor.palette)]
        path = out_dir / f"{dataset.name(index)}.png"
        save_rgb_png(torch.cat([torch.as_tensor(p) for p in panels], dim=1), path)
        written.append(path)
    return written


