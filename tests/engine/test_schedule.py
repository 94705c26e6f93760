"""The poly learning-rate schedule: a pure function of the step, with an optional linear warm-up."""

import json

import pytest

from deeplab.cli import main
from deeplab.engine.schedule import poly_lr


def test_poly_follows_the_paper_formula():
    for step in (0, 1, 250, 999):
        assert poly_lr(step, base_lr=0.007, iterations=1000) == pytest.approx(0.007 * (1 - step / 1000) ** 0.9)
    assert poly_lr(0, base_lr=0.007, iterations=1000) == 0.007
    assert poly_lr(1000, base_lr=0.007, iterations=1000) == 0.0


def test_poly_decreases_and_its_power_shapes_the_curve():
    rates = [poly_lr(s, base_lr=1.0, iterations=100) for s in range(101)]
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    halfway = {p: poly_lr(50, base_lr=1.0, iterations=100, power=p) for p in (0.5, 0.9, 2.0)}
    assert halfway[0.5] > halfway[0.9] > halfway[2.0] == pytest.approx(0.25)
    assert poly_lr(50, base_lr=1.0, iterations=100, power=1.0) == pytest.approx(0.5)


def test_warmup_rises_linearly_then_joins_the_poly_curve():
    rates = [poly_lr(s, base_lr=0.01, iterations=100, warmup=4) for s in range(6)]
    assert rates[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    assert rates[4] == pytest.approx(0.01 * (1 - 4 / 100) ** 0.9)  # the unshifted poly curve
    assert rates[5] == poly_lr(5, base_lr=0.01, iterations=100)


@pytest.mark.parametrize("kwargs", [{"iterations": 0}, {"warmup": -1}, {"power": -0.5}, {"step": 11}, {"step": -1}])
def test_bad_arguments_are_clear_errors(kwargs):
    args = {"step": 0, "base_lr": 0.1, "iterations": 10, **kwargs}
    with pytest.raises(ValueError, match="poly_lr needs iterations >= 1"):
        poly_lr(**args)


def test_the_trainer_sets_the_scheduled_rate_at_every_step(tiny, tmp_path):
    assert main(["train", "--set", *tiny("train.iterations=3", "train.log_every=1", "train.warmup_iterations=2",
                                         "train.eval_every=100")]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    logged = [r["lr"] for r in records if "loss" in r]
    assert logged == [poly_lr(s, base_lr=0.01, iterations=3, warmup=2) for s in range(3)]
