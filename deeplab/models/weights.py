"""Loading weights safely: our checkpoints, torchvision's DeepLabV3 state dicts, ImageNet backbones.

Every file is read with ``torch.load(..., weights_only=True)`` or safetensors: nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

WeightsLike = str | Path | Mapping[str, Tensor]

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


def torch_file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot have been written by ``torch.save``, judged from its first bytes; None if it may have.

    ``torch.save`` writes a zip archive (``PK``), or a pickle (first byte 0x80) in its legacy format;
    anything else would only reach the unpickler's opaque errors (a text file gives ``KeyError: 101``).
    """
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head:
        return "it is empty"
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        return None
    try:
        head.decode("utf-8")
        text = b"\x00" not in head
    except UnicodeDecodeError as err:
        text = err.start >= len(head) - 3 and b"\x00" not in head  # a character cut by the 512-byte read
    if text:
        return "it is a text file, not a file written by torch.save"
    return "it is neither a zip archive nor a pickle, the two formats torch.save writes"


def _read_file(weights: WeightsLike) -> dict[str, Any]:
    if isinstance(weights, Mapping):
        return dict(weights)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    problem = torch_file_problem(path)
    if problem is not None:
        raise ValueError(f"{path} is not a weights file: {problem} (expected a .pt/.pth state dict or checkpoint, "
                         "or a .safetensors file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path} is not a readable weights file ({type(err).__name__}: {err})") from err
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return dict(state)


def read_state_dict(weights: WeightsLike) -> dict[str, Tensor]:
    """A state dict from a mapping, a ``.pt``/``.pth`` file (plain or our checkpoint), or ``.safetensors``."""
    state = _read_file(weights)
    if isinstance(state.get("model"), Mapping):  # a training checkpoint
        state = dict(state["model"])
    return state


def resolve_weights(weights: WeightsLike | None, model_name: str) -> tuple[dict[str, Tensor] | None, dict[str, Any]]:
    """The state dict to load and the architecture arguments the weights imply for ``model_name``.

    A published weights name (``"deeplabv3_resnet101.coco_voc"``) is fetched through torch.hub's cache;
    torchvision's DeepLabV3 layout implies :data:`TORCHVISION_LAYOUT`; one of our checkpoints with a
    model spec for the same model implies that spec's arguments.
    """
    if weights is None:
        return None, {}
    if isinstance(weights, str) and not Path(weights).exists():
        from .published import PUBLISHED_WEIGHTS, fetch_published

        if weights in PUBLISHED_WEIGHTS:
            published = PUBLISHED_WEIGHTS[weights]
            if published.model != model_name:
                raise ValueError(f"published weights {weights!r} are for {published.model}, not {model_name}")
            return resolve_weights(fetch_published(published), model_name)
    raw = _read_file(weights)
    spec = raw.get("model_spec")
    state = dict(raw["model"]) if isinstance(raw.get("model"), Mapping) else raw
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


def load_weights(model: nn.Module, weights: WeightsLike) -> None:
    """Loads a whole-model state dict strictly, with an error that says what does not fit."""
    state = read_state_dict(weights)
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


def fetch_state_dict(source: str, *, what: str) -> dict[str, Tensor]:
    """Reads a local file, or downloads a URL through torch.hub's cache (``file://`` works too)."""
    if Path(source).is_file():
        return torch.load(source, map_location="cpu", weights_only=True)
    try:
        return torch.hub.load_state_dict_from_url(source, map_location="cpu", progress=True, weights_only=True)
    except Exception as err:  # network errors come in many types; all mean the same to the user
        raise RuntimeError(
            f"could not fetch the {what} weights from {source} ({type(err).__name__}: {err}). "
            f"Without internet, download that file elsewhere and pass its local path as "
            f"pretrained_backbone='/path/to/file.pth'."
        ) from err


def load_backbone_weights(backbone: nn.Module, source: str, *, what: str) -> None:
    """Loads ImageNet weights into a backbone, ignoring the classifier layers it does not have."""
    state = fetch_state_dict(source, what=what)
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(f"{what} weights from {source} lack {len(missing)} backbone keys, e.g. {missing[:3]}")
    backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
