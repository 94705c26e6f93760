"""Weights in memory into models: whole-model state dicts (ours, torchvision's DeepLabV3), ImageNet backbones.

Files are read by :mod:`deeplab.torchfile` (never unpickled); which file becomes which model is
:mod:`deeplab.modelfile`'s job. Here: what a state dict implies about the architecture, and loading it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from ..torchfile import fetch_torch_file

# torchvision's DeepLabV3 models: no multi-grid, one extra 3x3 conv after ASPP, dropout 0.5, and their
# published weights were trained at output stride 8 (rates 12/24/36).
TORCHVISION_LAYOUT = {"head_conv": True, "multi_grid": None, "dropout": 0.5, "output_stride": 8}

# torchvision DeepLabV3 -> ours. ASPP and FCNHead keys already match; only the head layout differs:
# torchvision's classifier is flat (ASPP, conv, bn, relu, conv), ours groups conv+bn+relu.
_TORCHVISION_RENAMES = (
    ("classifier.0.", "head.0."),
    ("classifier.1.", "head.1.0."),
    ("classifier.2.", "head.1.1."),
    ("classifier.4.", "head.2."),
    ("aux_classifier.", "aux_head."),
)


def weights_and_implied(raw: Mapping[str, Any], model_name: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict, architecture arguments it implies for ``model_name``) of weights held in memory.

    ``raw`` is a state dict or a checkpoint's dict (its ``model`` entry is the state dict). One of our
    checkpoints with a model spec for the same model implies that spec's arguments; torchvision's
    DeepLabV3 layout implies :data:`TORCHVISION_LAYOUT`.
    """
    state = dict(raw["model"]) if isinstance(raw.get("model"), Mapping) else dict(raw)
    spec = raw.get("model_spec")
    if isinstance(spec, Mapping) and spec.get("name") == model_name:
        from .spec import ModelSpec

        spec = ModelSpec.from_dict(spec)
        return state, {**spec.builder_arguments(), "mean": spec.mean, "std": spec.std}
    if is_torchvision_deeplab(state):
        classifier = state.get("classifier.4.weight")
        classes = {} if classifier is None else {"num_classes": int(classifier.shape[0])}
        return state, {**TORCHVISION_LAYOUT, **classes}
    return state, {}


def is_torchvision_deeplab(state: Mapping[str, Tensor]) -> bool:
    """True for state dicts written by ``torchvision.models.segmentation.deeplabv3_*``."""
    return any(key.startswith("classifier.0.convs.") for key in state)


def from_torchvision(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Renames torchvision DeepLabV3 keys to ours (the backbone's keys are already the same)."""
    renamed = {}
    for key, value in state.items():
        for old, new in _TORCHVISION_RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    return renamed


def load_weights(model: nn.Module, weights: Mapping[str, Tensor]) -> None:
    """Loads a whole-model state dict (or a checkpoint's dict) strictly, with an error that says what does not fit."""
    state = dict(weights["model"]) if isinstance(weights.get("model"), Mapping) else dict(weights)
    if is_torchvision_deeplab(state):
        state = from_torchvision(state)
    if getattr(model, "aux_head", None) is None:
        state = {k: v for k, v in state.items() if not k.startswith("aux_head.")}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        raise ValueError(
            "weights do not fit this model"
            + _listing("missing keys", missing) + _listing("unexpected keys", unexpected)
            + _listing("shape mismatches (weights vs model; is num_classes right?)", mismatched)
        )
    model.load_state_dict(state, strict=True)


def _listing(title: str, items: list[str], most: int = 5) -> str:
    if not items:
        return ""
    more = f" (+{len(items) - most} more)" if len(items) > most else ""
    return f"\n  {title}: {', '.join(items[:most])}{more}"


def load_backbone_weights(backbone: nn.Module, source: str, *, what: str) -> None:
    """Loads ImageNet weights from a path or URL into a backbone, strictly (see :func:`load_backbone_state`)."""
    state = fetch_torch_file(source, what=f"{what} weights", hint="Without internet, download that file elsewhere "
                             "and pass its local path as pretrained_backbone='/path/to/file.pth'.")
    load_backbone_state(backbone, state, what=what, source=source)


def load_backbone_state(backbone: nn.Module, state: Mapping[str, Tensor], *, what: str, source: str,
                        rename: Callable[[str], str] | None = None) -> None:
    """Loads an ImageNet state dict into a backbone: every backbone tensor must come from it, with its shape.

    Keys the backbone does not have (the ImageNet classifier) are ignored. ``rename`` maps a backbone key to
    the name it has in ``state`` when they differ (timm's feature wrappers flatten module names).

    Raises:
        ValueError: naming how many of the backbone's tensors matched, and the first that did not.
    """
    own = backbone.state_dict()
    rename = rename or (lambda key: key)
    matched, missing, mismatched = {}, [], []
    for key, tensor in own.items():
        source_key = rename(key)
        value = state.get(source_key)
        if value is None:
            missing.append(key)
        elif not isinstance(value, Tensor) or value.shape != tensor.shape:
            mismatched.append(f"{key}: {tuple(getattr(value, 'shape', ()))} vs {tuple(tensor.shape)}")
        else:
            matched[key] = value
    if missing or mismatched:
        raise ValueError(
            f"{what} weights from {source} do not fit this backbone: {len(matched)} of {len(own)} tensors "
            f"matched ({len(state)} in the file)" + _listing("missing", missing, 3)
            + _listing("shape mismatches (file vs backbone)", mismatched, 3)
        )
    backbone.load_state_dict(matched, strict=True)
