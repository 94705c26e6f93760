"""What a finished run shows a person: a training-curve PNG and side-by-side prediction previews."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from ..data import SegmentationDataset
from ..imageio import atomic_write, overlay, save_rgb_png, to_uint8
from ..inference import Predictor

SIZE = (720, 400)
LOSS_COLOUR, MIOU_COLOUR, AXIS_COLOUR, GRID_COLOUR = (31, 119, 180), (255, 127, 14), (60, 60, 60), (225, 225, 225)


@dataclass(frozen=True)
class PlotArea:
    """The data rectangle of the curve image (pixels) and the mapping of (step, value) into it."""

    left: int = 64
    top: int = 40
    right: int = SIZE[0] - 64
    bottom: int = SIZE[1] - 48

    def x(self, step: float, last_step: float) -> float:
        return self.left + (self.right - self.left) * step / last_step

    def y(self, value: float, top_value: float) -> float:
        return self.bottom - (self.bottom - self.top) * value / top_value


def nice_ticks(top: float, most: int = 6) -> list[float]:
    """0, d, 2d, ... up to the first multiple of d at or above ``top``, d a 1/2/5 x 10^k step, at most
    ``most`` + 1 ticks: the last tick is the axis' top."""
    top = max(top, 1e-12)
    for exponent in range(math.floor(math.log10(top / most)), math.floor(math.log10(top)) + 2):
        for mantissa in (1, 2, 5):
            step = mantissa * 10.0**exponent
            count = math.ceil(top / step - 1e-9)
            if count <= most:
                return [round(i * step, 12) for i in range(count + 1)]
    return [0.0, top]


def read_log(path: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, loss) and (step, mIoU) series from a run's ``log.jsonl``, by step; a step logged twice
    (a resumed run repeats the steps after its last checkpoint) keeps its last value."""
    losses: dict[int, float] = {}
    mious: dict[int, float] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses[record["step"]] = record["loss"]
        if "miou" in record:
            mious[record["step"]] = record["miou"]
    return sorted(losses.items()), sorted(mious.items())


def _series(draw: ImageDraw.ImageDraw, area: PlotArea, points: list[tuple[int, float]], top: float, last_step: int,
            colour: tuple[int, int, int], markers: bool) -> None:
    """A line through the points, with a dot on each when ``markers`` (few points, e.g. evaluations)."""
    xy = [(area.x(step, last_step), area.y(value, top)) for step, value in points]
    if len(xy) > 1:
        draw.line(xy, fill=colour, width=2, joint="curve")
    for x, y in xy if markers or len(xy) == 1 else xy[-1:]:
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour)


def _axes(draw: ImageDraw.ImageDraw, area: PlotArea, last_step: int, loss_ticks: list[float]) -> None:
    """Grid, frame, step ticks below, loss ticks on the left (blue), mIoU ticks on the right (orange)."""
    font = ImageFont.load_default()
    for tick in loss_ticks[1:-1]:
        y = area.y(tick, loss_ticks[-1])
        draw.line((area.left, y, area.right, y), fill=GRID_COLOUR)
    draw.rectangle((area.left, area.top, area.right, area.bottom), outline=AXIS_COLOUR)
    for step in (tick for tick in nice_ticks(last_step) if tick <= last_step):
        x = area.x(step, last_step)
        draw.line((x, area.bottom, x, area.bottom + 5), fill=AXIS_COLOUR)
        draw.text((x, area.bottom + 8), f"{step:g}", fill=AXIS_COLOUR, font=font, anchor="mt")
    draw.text(((area.left + area.right) / 2, area.bottom + 26), "step", fill=AXIS_COLOUR, font=font, anchor="mt")
    for tick in loss_ticks:
        y = area.y(tick, loss_ticks[-1])
        draw.line((area.left - 5, y, area.left, y), fill=AXIS_COLOUR)
        draw.text((area.left - 8, y), f"{tick:g}", fill=LOSS_COLOUR, font=font, anchor="rm")
    for tick in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        y = area.y(tick, 1.0)
        draw.line((area.right, y, area.right + 5, y), fill=AXIS_COLOUR)
        draw.text((area.right + 8, y), f"{tick:.1f}", fill=MIOU_COLOUR, font=font, anchor="lm")
    draw.text((area.left, area.top - 8), "training loss", fill=LOSS_COLOUR, font=font, anchor="lb")
    draw.text((area.right, area.top - 8), "val mIoU", fill=MIOU_COLOUR, font=font, anchor="rb")


def plot_training_curve(log_path: Path, out_path: Path) -> None:
    """Training loss (blue, left axis from 0) and val mIoU (orange, right axis 0 to 1, a dot per evaluation)
    against the step, with ticks on all three axes."""
    losses, mious = read_log(log_path)
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    area = PlotArea()
    last_step = max([s for s, _ in losses + mious] + [1])
    loss_ticks = nice_ticks(max([v for _, v in losses] + [1e-6]))
    _axes(draw, area, last_step, loss_ticks)
    _series(draw, area, losses, loss_ticks[-1], last_step, LOSS_COLOUR, markers=len(losses) <= 20)
    _series(draw, area, mious, 1.0, last_step, MIOU_COLOUR, markers=True)
    if mious:
        best_step, best = max(mious, key=lambda point: point[1])
        draw.text(((area.left + area.right) / 2, area.top - 8), f"best {best:.4f} at step {best_step}",
                  fill=AXIS_COLOUR, font=ImageFont.load_default(), anchor="mb")
    with atomic_write(out_path) as handle:
        image.save(handle, format="PNG")


def save_previews(predictor: Predictor, dataset: SegmentationDataset, out_dir: Path, count: int = 4) -> list[Path]:
    """For the first ``count`` samples: image | ground truth | prediction overlay, side by side."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(min(count, len(dataset))):
        image, mask = dataset.load(index)
        prediction = predictor.predict(image)
        image = to_uint8(image)  # 16-bit data is read as float 0..1
        truth = overlay(image, torch.as_tensor(mask).long(), predictor.palette, alpha=1.0)
        panels = [image.permute(1, 2, 0), truth, overlay(image, prediction, predictor.palette)]
        path = out_dir / f"{dataset.name(index)}.png"
        save_rgb_png(torch.cat([torch.as_tensor(p) for p in panels], dim=1), path)
        written.append(path)
    return written


