"""Learning-rate schedule as a pure function of the step."""

from __future__ import annotations


def poly_lr(step: int, *, base_lr: float, iterations: int, power: float = 0.9, warmup: int = 0) -> float:
    """DeepLab's "poly" policy, ``base_lr * (1 - step / iterations) ** power``, after a linear warm-up.

    ``step`` counts the steps already taken (0 for the first). During the ``warmup`` first steps the
    rate rises linearly to ``base_lr``, reaching it at step ``warmup - 1``; from step ``warmup`` on it
    follows the poly curve of the whole run (the warm-up does not shift it), down to 0 at ``iterations``.
    """
    if iterations < 1 or warmup < 0 or power < 0 or not 0 <= step <= iterations:
        raise ValueError(f"poly_lr needs iterations >= 1, warmup >= 0, power >= 0 and 0 <= step <= iterations; "
                         f"got step={step}, iterations={iterations}, warmup={warmup}, power={power}")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * (1.0 - step / iterations) ** power
