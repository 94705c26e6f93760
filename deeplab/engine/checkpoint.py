"""Training checkpoints: written atomically, self-describing; reading them is :mod:`deeplab.modelfile`'s job.

Every checkpoint holds the model's :class:`~deeplab.models.ModelSpec` (``model_spec``), so
``deeplab.load_checkpoint`` rebuilds exactly the trained network from the file alone, whatever the
builders' defaults are today. It also holds the run's config, class names and palette, and the
training state a resume needs (optimizer, step, RNG streams).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..classes import dataset_classes, dataset_for_classes
from ..config import Config, ModelConfig
from ..imageio import atomic_write
from ..modelfile import CHECKPOINT_FORMAT, create_model
from ..models import ModelSpec, Segmenter

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


def model_from_config(config: Config, num_classes: int) -> Segmenter:
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
        raise ValueError("the model has no .spec; build it with deeplab.create_model or deeplab.load_checkpoint")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {
        "format": CHECKPOINT_FORMAT,
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


def save_model(model: nn.Module, path: str | Path, *, classes: list[str] | None = None, palette: list | None = None,
               dataset: str | None = None, config: Config | None = None,
               extra: dict[str, Any] | None = None) -> Path:
    """Saves a model (from ``deeplab.create_model``, ``load_checkpoint`` or ``from_pretrained``) as a ``.pt``
    checkpoint that ``deeplab export``, ``predict``, ``eval`` and ``serve`` read, and ``deeplab.load_checkpoint``
    rebuilds. For sharing, ``model.save_pretrained(folder)`` writes the Hugging Face Hub's layout instead.

    Args:
        model: carries its spec as ``model.spec``.
        path: the file to write (atomically).
        classes, palette: class names and colours (default: those of ``dataset``, or of the class count).
        dataset: the dataset the model predicts (``voc``, ``cityscapes``, ``folder``...): names the default
            classes and the data ``deeplab eval`` reads (default: the standard dataset of the class count).
        config: a training config to record instead of one that only names the model and the dataset.
        extra: more top-level keys (plain values), e.g. where the weights came from.
    """
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise ValueError("the model has no .spec; build it with deeplab.create_model or deeplab.load_checkpoint")
    default_classes, default_palette = dataset_classes(dataset, spec.num_classes)
    classes = list(classes or default_classes)
    palette = list(palette or default_palette)
    if len(classes) != spec.num_classes or len(palette) != spec.num_classes:
        raise ValueError(f"{spec.name} predicts {spec.num_classes} classes; got {len(classes)} class names and "
                         f"{len(palette)} palette colours")
    if config is None:
        config = Config()
        config.model.name = spec.name
        config.model.output_stride = spec.output_stride
        config.data.name = dataset or dataset_for_classes(spec.num_classes) or "folder"
        config.data.num_classes = spec.num_classes
    save_checkpoint(path, model=model, optimizer=None, step=0, best_miou=-1.0, config=config, classes=classes,
                    palette=palette, extra=extra)
    return Path(path)
