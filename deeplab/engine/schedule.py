"""Learning-rate schedule as a pure function of the step."""

from __future__ import annotations


def poly_lr(step: int, *, base_lr: float, iterations: int, power: float = 0.9, warmup: int = 0) -> float:
    """DeepLab's "poly" policy, ``base_lr * (1 - step / iterations) ** power``, after a linear warm-up."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * max(0.0, 1.0 - step / iterations) ** power
