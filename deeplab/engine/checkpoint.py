"""Checkpoints: written atomically, read with ``weights_only=True``, self-describing.

Every checkpoint holds the model's :class:`~deeplab.models.ModelSpec` (``model_spec``), so
:func:`load_checkpoint` rebuilds exactly the trained network from the file alone, whatever the
builders' defaults are today. It also holds the run's config, class names and palette.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config, ModelConfig, from_dict
from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..imageio import atomic_write
from ..models import ModelSpec, Segmenter, build_from_spec, create_model, load_weights, resolve_spec
from ..models.weights import torch_file_problem

FORMAT = "deeplab-checkpoint-2"
LEGACY_FORMAT = "deeplab-checkpoint-1"

# Format 1 (deeplab 0.1.0) stored no spec: the config's model section named the builder and set a few
# keys (output_stride, atrous_rates, aux_loss), the builder's defaults of that release did the rest, and
# every model was fed ImageNet-normalised images. Those defaults are pinned here, so a later change of
# a default cannot change what an old file rebuilds. The one choice that release inferred from the
# weights, torchvision's head layout (a fine-tuned torchvision model), is recognised by its keys.
_FORMAT1_DEFAULTS: dict[str, dict[str, Any]] = {
    "deeplabv1_vgg16": {"dropout": 0.5},
    "deeplabv2_vgg16": {"dropout": 0.5},
    "deeplabv2_resnet101": {},
    "deeplabv3_resnet50": {"multi_grid": (1, 2, 4), "head_conv": False, "dropout": 0.1},
    "deeplabv3_resnet101": {"multi_grid": (1, 2, 4), "head_conv": False, "dropout": 0.1},
    "deeplabv3_mobilenetv2": {"atrous_rates": (), "dropout": 0.1},
    "deeplabv3plus_resnet50": {"multi_grid": (1, 2, 4), "separable": False, "dropout": 0.1},
    "deeplabv3plus_resnet101": {"multi_grid": (1, 2, 4), "separable": False, "dropout": 0.1},
    "deeplabv3plus_xception65": {"separable": True, "dropout": 0.1},
    "deeplabv3plus_xception71": {"separable": True, "dropout": 0.1},
    "deeplabv3plus_mobilenetv2": {"separable": False, "dropout": 0.1},
}
_TORCHVISION_HEAD_KEY = "head.1.0.weight"  # the extra 3x3 conv of torchvision's DeepLabV3 head, renamed


@dataclass
class Checkpoint:
    """What a checkpoint file holds, besides the tensors."""

    spec: ModelSpec
    config: Config
    classes: list[str]
    palette: list[tuple[int, int, int]]
    step: int
    best_miou: float
    raw: dict[str, Any]


# Keys of ModelConfig that say how to initialise the weights rather than what the network is.
_INIT_KEYS = ("name", "pretrained_backbone", "weights")


def model_options(model: ModelConfig) -> dict[str, Any]:
    """The builder arguments a config's model section sets; unset (``None``) keys are left out.

    This is the only place where config keys become builder arguments.
    """
    options = {}
    for item in fields(model):
        value = getattr(model, item.name)
        if item.name not in _INIT_KEYS and value is not None:
            options[item.name] = tuple(value) if isinstance(value, list) else value
    return options


def build_model(config: Config, num_classes: int) -> Segmenter:
    """The model a config describes, initialised as it says (ImageNet backbone, initial weights)."""
    m = config.model
    return create_model(m.name, num_classes=num_classes, weights=m.weights, pretrained_backbone=m.pretrained_backbone,
                        **model_options(m))


def save_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None, step: int,
                    best_miou: float, config: Config, classes: list[str], palette: list,
                    extra: dict[str, Any] | None = None) -> None:
    """Writes to a temporary file beside ``path`` and renames it, so a crash never leaves half a file.

    ``model`` must carry its spec (every model from ``create_model`` does); ``extra`` adds top-level
    keys (training state such as RNG streams), which must be plain values or tensors.
    """
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise ValueError("the model has no .spec; build it with deeplab.create_model or load_checkpoint")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {
        "format": FORMAT,
        "model_spec": spec.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "best_miou": best_miou,
        "rng": rng,
        "config": config.to_dict(),
        "classes": list(classes),
        "palette": [list(colour) for colour in palette],
        **(extra or {}),
    }
    with atomic_write(path) as handle:
        torch.save(state, handle)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Reads a checkpoint safely (no unpickling of arbitrary objects); format 1 files are upgraded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    problem = torch_file_problem(path)
    if problem is not None:
        raise ValueError(f"{path} is not a checkpoint: {problem} (expected a .pt file written by deeplab train)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from err
    version = raw.get("format") if isinstance(raw, dict) else None
    if version not in (FORMAT, LEGACY_FORMAT):
        raise ValueError(f"{path} is not a deeplab training checkpoint (for plain state dicts use "
                         "create_model(..., weights=PATH))")
    try:
        if version == LEGACY_FORMAT:
            config = from_dict(_legacy_config(raw["config"]))
            spec = legacy_spec(raw)
        else:
            config = from_dict(raw["config"])
            spec = ModelSpec.from_dict(raw["model_spec"])
        palette = [tuple(colour) for colour in raw["palette"]]
        return Checkpoint(spec, config, list(raw["classes"]), palette, raw["step"], raw["best_miou"], raw)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is a damaged checkpoint ({type(err).__name__}: {err})") from err


def _legacy_config(config: dict[str, Any]) -> dict[str, Any]:
    model = dict(config.get("model", {}))
    if not model.get("aux_loss"):  # format 1 wrote aux_loss: false for every model, even those without an aux head
        model.pop("aux_loss", None)
    return {**config, "model": model}


def legacy_spec(raw: dict[str, Any]) -> ModelSpec:
    """The spec of a format-1 checkpoint, from its config, its class list and its weights' keys."""
    model = raw["config"]["model"]
    name = model["name"]
    options: dict[str, Any] = dict(_FORMAT1_DEFAULTS[name])
    if model.get("atrous_rates") is not None:
        options["atrous_rates"] = tuple(model["atrous_rates"])
    if model.get("aux_loss"):
        options["aux_loss"] = True
    if name.startswith("deeplabv3_resnet") and _TORCHVISION_HEAD_KEY in raw["model"]:
        options.update(head_conv=True, multi_grid=None, dropout=0.5)
    return resolve_spec(name, {"num_classes": len(raw["classes"]), "output_stride": model["output_stride"],
                               "mean": IMAGENET_MEAN, "std": IMAGENET_STD, **options})


def load_checkpoint(path: str | Path, *, output_stride: int | None = None,
                    device: str | torch.device = "cpu") -> tuple[Segmenter, Checkpoint]:
    """Rebuilds the model a checkpoint was trained with, optionally at another output stride, in eval mode."""
    checkpoint = read_checkpoint(path)
    model = build_from_spec(checkpoint.spec.at_output_stride(output_stride))
    try:
        load_weights(model, checkpoint.raw["model"])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return model.to(device).eval(), checkpoint
