"""The TF model zoo through torch.hub's cache: each tarball is downloaded once, each trained model imported once.

``torch.hub.get_dir()/checkpoints/`` holds the zoo's tarball under its own name and, for a trained
model, the converted result beside it (``<tarball stem>.pt``: spec, state dict, classes, palette).
A tarball or a converted file placed there by hand is used without a network connection.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..imageio import atomic_write
from ..tfcheckpoint import is_training_state, read_tf_checkpoint
from ..torchfile import read_torch_file
from .channels import adaptation_rule, input_convolutions

if TYPE_CHECKING:
    from .published import PublishedWeights, TFBackbone

logger = logging.getLogger(__name__)
CACHE_FORMAT = "deeplab-tf-zoo-1"  # bump when the import's output changes, so old conversions are redone


def download_tarball(url: str, path: Path, what: str) -> Path:
    """``path`` (torch.hub's cache), downloaded from ``url`` unless it is there already."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=True)  # writes a temp file, then renames
    except Exception as err:  # network errors come in many types; all mean the same to the user
        raise RuntimeError(f"could not download {what} from {url} ({type(err).__name__}: {err}). Without internet, "
                           f"download that file elsewhere and place it at {path}") from err
    return path


def zoo_variables(url: str, path: Path, what: str) -> dict[str, np.ndarray]:
    """The network's variables of a zoo tarball (optimizer slots left out), downloading it if needed."""
    return read_tf_checkpoint(download_tarball(url, path, what), include=lambda name: not is_training_state(name))


def converted_path(weights: PublishedWeights) -> Path:
    """Where the converted weights of a zoo model are cached: beside the tarball, as ``.pt``."""
    tarball = weights.cache_path()
    return tarball.with_name(tarball.name.removesuffix(".tar.gz") + ".pt")


def _load_converted(path: Path) -> dict[str, Any] | None:
    try:
        raw = read_torch_file(path, what="converted zoo model")
    except (OSError, ValueError):  # a damaged cache file is simply converted again
        return None
    return raw if isinstance(raw, dict) and raw.get("format") == CACHE_FORMAT else None


def converted_zoo_weights(weights: PublishedWeights) -> dict[str, Any]:
    """``{"model_spec", "model", "classes", "palette", ...}`` of a zoo model: from the cache, or imported into it."""
    target = converted_path(weights)
    if target.is_file():
        cached = _load_converted(target)
        if cached is not None:
            return cached
    tarball = weights.cache_path()
    variables = zoo_variables(weights.url, tarball, f"the TF model-zoo checkpoint {weights.name!r}")
    from .tf_import import import_tf_variables

    try:
        spec, state = import_tf_variables(variables)
    except ValueError as err:
        raise ValueError(f"{tarball}: {err}") from err
    if spec.name != weights.model or spec.num_classes != len(weights.classes):
        raise ValueError(f"{tarball} holds a {spec.name} with {spec.num_classes} classes; {weights.name} should be "
                         f"a {weights.model} with {len(weights.classes)} classes (is the file the right one?)")
    converted = {"format": CACHE_FORMAT, "source": weights.url, "model_spec": spec.to_dict(), "model": state,
                 "classes": list(weights.classes), "palette": [list(colour) for colour in weights.palette]}
    with atomic_write(target) as handle:
        torch.save(converted, handle)
    return converted


def load_tf_backbone(model: nn.Module, backbone: TFBackbone) -> None:
    """Initialises ``model``'s backbone from a zoo ImageNet checkpoint (``pretrained_backbone=NAME``)."""
    spec = getattr(model, "spec", None)
    if spec is None or spec.name not in backbone.models:
        name = getattr(spec, "name", type(model).__name__)
        raise ValueError(f"pretrained_backbone={backbone.name!r} fits {', '.join(backbone.models)}, not {name}")
    variables = zoo_variables(backbone.url, backbone.cache_path(), f"the TF ImageNet checkpoint {backbone.name!r}")
    from .tf_import import backbone_state_from_tf

    # a model of other than 3 input channels: the 3-channel ImageNet weights of the convolutions reading the image
    inputs = input_convolutions(model, spec.in_channels) if spec.in_channels != 3 else []
    try:
        state = backbone_state_from_tf(variables, model, adapt={f"{name}.weight" for name in inputs})
    except ValueError as err:
        raise ValueError(f"{backbone.cache_path()}: {err}") from err
    model.backbone.load_state_dict(state, strict=True)  # keys as model.backbone names them
    notes = [f"input: {name} adapted from {backbone.name}'s 3 channels to {spec.in_channels} "
             f"({adaptation_rule(spec.in_channels)})" for name in inputs]
    model.init_notes = [*getattr(model, "init_notes", []), *notes]
    for note in notes:
        logger.info(note)
