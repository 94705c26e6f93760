"""The training-curve PNG: ticks and labels on every axis, a visible line and a dot per evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from deeplab.engine.report import (
    AXIS_COLOUR,
    LOSS_COLOUR,
    MIOU_COLOUR,
    PlotArea,
    nice_ticks,
    plot_training_curve,
    read_log,
)


@pytest.mark.parametrize(("top", "ticks"), [
    (230, [0, 50, 100, 150, 200, 250]), (20, [0, 5, 10, 15, 20]), (2.31, [0, 0.5, 1, 1.5, 2, 2.5]),
    (0.07, [0, 0.02, 0.04, 0.06, 0.08]), (1, [0, 0.2, 0.4, 0.6, 0.8, 1]),
])
def test_nice_ticks_cover_the_range_in_round_steps(top, ticks):
    assert nice_ticks(top) == pytest.approx(ticks)


def _near(pixels: np.ndarray, x: float, y: float, colour: tuple[int, int, int], reach: int = 1) -> bool:
    """Whether a pixel within ``reach`` of (x, y) has ``colour``."""
    box = pixels[round(y) - reach:round(y) + reach + 1, round(x) - reach:round(x) + reach + 1]
    return bool((np.abs(box.astype(int) - colour).sum(axis=-1) <= 30).any())


def test_curve_with_two_evaluations_has_ticks_labels_and_a_line_between_them(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [{"step": s, "loss": 2.3 * 0.9**s} for s in range(1, 21)]
    records += [{"step": 10, "miou": 0.31, "pixel_accuracy": 0.8}, {"step": 20, "miou": 0.55, "pixel_accuracy": 0.9}]
    log.write_text("\n".join(json.dumps(r) for r in records))
    plot_training_curve(log, tmp_path / "curve.png")
    pixels = np.asarray(Image.open(tmp_path / "curve.png").convert("RGB"))
    area = PlotArea()

    for step, miou in ((10, 0.31), (20, 0.55)):  # a dot on each evaluation ...
        assert _near(pixels, area.x(step, 20), area.y(miou, 1.0), MIOU_COLOUR, reach=0)
    for t in (0.25, 0.5, 0.75):  # ... and the line between them
        assert _near(pixels, area.x(10 + 10 * t, 20), area.y(0.31 + 0.24 * t, 1.0), MIOU_COLOUR)
    assert _near(pixels, area.x(5, 20), area.y(2.3 * 0.9**5, 2.5), LOSS_COLOUR, reach=0)

    for step in (0, 5, 10, 15, 20):  # step ticks with a label under each
        x = area.x(step, 20)
        assert _near(pixels, x, area.bottom + 3, AXIS_COLOUR)
        label = pixels[area.bottom + 8:area.bottom + 22, round(x) - 8:round(x) + 9]
        assert (label.sum(axis=-1) < 600).any(), f"no label under step {step}"
    assert not _near(pixels, area.x(2.5, 20), area.bottom + 3, AXIS_COLOUR, reach=0)
    for value in (0, 0.5, 1, 1.5, 2, 2.5):  # loss ticks, labelled in the loss colour
        y = area.y(value, 2.5)
        assert _near(pixels, area.left - 3, y, AXIS_COLOUR)
        label = pixels[round(y) - 6:round(y) + 7, area.left - 40:area.left - 7]
        assert (np.abs(label.astype(int) - LOSS_COLOUR).sum(axis=-1) < 120).any(), f"no label at loss {value}"
    for value in (0, 0.2, 0.4, 0.6, 0.8, 1.0):  # mIoU ticks on the right
        y = area.y(value, 1.0)
        assert _near(pixels, area.right + 3, y, AXIS_COLOUR)
        label = pixels[round(y) - 6:round(y) + 7, area.right + 7:area.right + 40]
        assert (np.abs(label.astype(int) - MIOU_COLOUR).sum(axis=-1) < 120).any(), f"no label at mIoU {value}"


def test_read_log_orders_steps_and_keeps_the_last_of_a_repeated_step(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "miou": 0.1},
               {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.0}, {"step": 2, "miou": 0.2}]  # resumed at 2
    log.write_text("\n".join(json.dumps(r) for r in records))
    assert read_log(log) == ([(1, 3.0), (2, 1.5), (3, 1.0)], [(2, 0.2)])
