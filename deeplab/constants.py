"""Constants shared by every layer: the ignore label, the palette type, input normalisation presets, the
default number of workers.

This module imports nothing of ours, so any module may import it without pulling in the rest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

IGNORE_INDEX = 255
"""Label value that the loss and the metrics skip (object borders in VOC, 'void' elsewhere)."""

Colour = tuple[int, int, int]
Palette = Sequence[Colour]
"""One RGB colour per class id."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""What torchvision's ImageNet weights (ResNet, VGG, MobileNetV2) were trained on, on the 0..1 scale."""

INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
"""What timm's aligned Xception weights expect (pixels mapped to -1..1), as in the TF reference."""

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "inception": (INCEPTION_MEAN, INCEPTION_STD),
}
"""Named (mean, std) presets; a model spec records the numbers, not the name."""


def check_normalization(mean: Sequence[float], std: Sequence[float], channels: int = 3) -> None:
    """Raises ``ValueError`` unless ``mean`` and ``std`` hold one number per input channel each, ``std`` positive."""
    if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
        count = "three numbers" if channels == 3 else f"{channels} numbers (one per input channel)"
        raise ValueError(f"mean and std must be {count} each (std > 0), got mean={mean}, std={std}")


def default_workers() -> int:
    """Workers for CPU-bound pools (file decoding, DenseCRF): the CPUs this process may run on, at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cache_dir() -> Path:
    """Where deeplab keeps what it can recompute (dataset verdicts, runtime choices, converted models):
    ``$DEEPLAB_CACHE``, else ``$XDG_CACHE_HOME/deeplab``, else ``~/.cache/deeplab``."""
    if os.environ.get("DEEPLAB_CACHE"):
        return Path(os.environ["DEEPLAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "deeplab"

# `deeplab benchmark`'s models when --models is not given (the README's "Deploy benchmark models" list): v3+ on the
# three backbones at OS 16 (MobileNetV2 full and light), and v3 ResNet-101 in torchvision's layout. Here, below
# everything, so that the CLI's --help names them without importing the benchmark.
BENCHMARK_MODELS = ("deeplabv3plus_resnet101", "deeplabv3plus_xception65", "deeplabv3plus_mobilenetv2",
                    "deeplabv3plus_mobilenetv2_light", "deeplabv3_resnet101")

# Set by deeplab's own launcher (deeplab.launch) for the processes it starts, to its command's name, so that the
# line a stopped run prints to continue names the launcher the user ran.
LAUNCHER_ENV = "DEEPLAB_LAUNCHER"
