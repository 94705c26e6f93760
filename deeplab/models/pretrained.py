"""What a weights source means, above the builders: published weights by name, the TF zoo's ImageNet backbones,
timm's ImageNet weights for ``tu-`` encoders.

:func:`build_model` is the registry's :func:`deeplab.models.zoo.build_model` plus the backbone weights that need
more than a builder: a TF model-zoo ImageNet checkpoint named in ``pretrained_backbone``
(:data:`~deeplab.models.published.TF_BACKBONES`, imported by :mod:`deeplab.models.tf_hub`) and a timm encoder's
ImageNet weights (:mod:`deeplab.models.timm_weights`). :func:`fetch_published` turns a published name into its
weights. Nothing below this module imports it: the layers are the import-linter contract in pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..torchfile import fetch_torch_file
from .published import TF_BACKBONES, PublishedWeights
from .segmenter import Segmenter
from .tf_hub import converted_zoo_weights, load_tf_backbone
from .timm_weights import load_timm_weights
from .zoo import build_model as build_registered
from .zoo import model_entry


def build_model(name: str, *, weights: Mapping[str, Tensor] | None = None, pretrained_backbone: bool | str = False,
                **options: Any) -> Segmenter:
    """Builds a model by name; ``deeplab.create_model`` is the same with weight files and names.

    Args:
        name: one of :func:`deeplab.models.list_models`, or ``HEAD_tu-ENCODER`` for a timm encoder.
        weights: a state dict or a checkpoint's dict in memory (see :func:`deeplab.models.zoo.build_model`);
            whole-model weights replace any ImageNet backbone, so ``pretrained_backbone`` is then not loaded.
        pretrained_backbone: True for the backbone's ImageNet weights (torchvision's, timm's), a local path /
            URL, or the name of a TF model-zoo ImageNet checkpoint (:data:`TF_BACKBONES`).
        **options: the model's architecture arguments (see each builder).
    """
    if weights is not None or not pretrained_backbone:
        return build_registered(name, weights=weights, **options)
    tf_backbone = TF_BACKBONES.get(pretrained_backbone) if isinstance(pretrained_backbone, str) else None
    if tf_backbone is not None:
        model = build_registered(name, **options)
        load_tf_backbone(model, tf_backbone)
        return model
    if getattr(model_entry(name).construct, "encoder", None) is None:  # not a timm encoder's model
        return build_registered(name, pretrained_backbone=pretrained_backbone, **options)
    model = build_registered(name, **options)
    load_timm_weights(model.backbone, pretrained_backbone, output_stride=model.spec.output_stride,
                      in_channels=model.spec.in_channels)
    return model


def fetch_published(weights: PublishedWeights) -> dict[str, Any]:
    """The weights, from torch.hub's cache or downloaded into it.

    torchvision's: a state dict (with torchvision's hash check). The TF zoo's: ``{"model_spec": ...,
    "model": state dict, "classes", "palette"}``, imported once and cached (see ``tf_hub``).
    """
    if weights.source == "tf":
        return converted_zoo_weights(weights)
    return fetch_torch_file(weights.url, what=f"published weights {weights.name!r}", check_hash=True,
                            hint=f"Without internet, download that file elsewhere and place it at "
                                 f"{weights.cache_path()}.")
