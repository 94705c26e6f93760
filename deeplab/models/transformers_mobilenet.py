"""transformers' DeepLab v3 checkpoints (``MobileNetV2ForSemanticSegmentation``) as our ``deeplabv3_mobilenetv2``.

transformers ported the authors' TF model (``google/deeplabv3_mobilenet_v2_1.0_513``): a MobileNetV2 at
output stride 8 with TF "SAME" padding and BatchNorm epsilon 1e-3, and the reference's v3 head for
MobileNet (image pooling and a 1x1 branch, no atrous branches; its BatchNorms at 1e-5). That is our
``deeplabv3_mobilenetv2`` with the TF numerics (:func:`deeplab.models.tf_import.tf_spec`). Here only
plain values are read (the ``config.json`` dict, the safetensors state dict): transformers itself is
never imported.

Layout facts (transformers' ``models/mobilenet_v2/modeling_mobilenet_v2.py``): every conv is a
``MobileNetV2ConvLayer`` with ``convolution`` and ``normalization``; the stem is first_conv (3x3/2),
conv_3x3 (depthwise) and reduce_1x1, i.e. torchvision's ``features.0`` and ``features.1``; ``layer.i`` is
torchvision's ``features.{i+2}``; ``conv_1x1`` (1280 channels) belongs to the classifier network and the
segmentation head does not use it; the head concatenates [image pooling, 1x1], ours [1x1, image pooling].
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..classes import VOC_CLASSES, dataset_classes
from ..constants import Colour
from ..palettes import voc_palette
from .spec import ModelSpec
from .tf_import import tf_spec

ARCHITECTURE = "MobileNetV2ForSemanticSegmentation"
# What our MobileNetV2 (torchvision's, width 1.0) is; a config asking for another network is refused.
_FIXED = {"depth_multiplier": 1.0, "depth_divisible_by": 8, "min_depth": 8, "expand_ratio": 6.0,
          "first_layer_is_expansion": True, "hidden_act": "relu6", "num_channels": 3}
_UNUSED = "mobilenet_v2.conv_1x1."  # the classifier network's last conv: no part of the segmentation model
_LAYER = re.compile(r"(?P<layer>.+)\.(?P<part>convolution|normalization)\.(?P<attribute>\w+)")
_PROJECTION = "head.0.project.0.weight"


def is_transformers_deeplab(config: Mapping[str, Any]) -> bool:
    """True for the ``config.json`` of a transformers ``MobileNetV2ForSemanticSegmentation``."""
    return config.get("model_type") == "mobilenet_v2" and ARCHITECTURE in (config.get("architectures") or ())


def transformers_spec(config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None = None) -> ModelSpec:
    """Our spec for a transformers DeepLab v3 MobileNetV2 ``config.json`` (and its ``preprocessor_config.json``,
    whose ``image_mean``/``image_std`` are the input normalisation; transformers' default is 0.5/0.5)."""
    different = [f"{key}={config[key]!r} (deeplab's is {value!r})" for key, value in _FIXED.items()
                 if key in config and config[key] != value]
    if different:
        raise ValueError(f"this {ARCHITECTURE} is not deeplab's MobileNetV2 (torchvision's, width 1.0): "
                         + ", ".join(different))
    preprocessor = preprocessor or {}
    normalise = preprocessor.get("do_normalize", True)
    mean = tuple(preprocessor.get("image_mean", (0.5,) * 3)) if normalise else (0.0,) * 3
    std = tuple(preprocessor.get("image_std", (0.5,) * 3)) if normalise else (1.0,) * 3
    dropout = float(config.get("classifier_dropout_prob", 0.1))
    return tf_spec("deeplabv3_mobilenetv2", num_classes=_num_classes(config),
                   output_stride=int(config.get("output_stride", 32)), atrous_rates=(),
                   tf_padding=bool(config.get("tf_padding", True)), bn_eps=float(config.get("layer_norm_eps", 1e-3)),
                   dropout=dropout if 0.0 <= dropout < 1.0 else 0.1, mean=mean, std=std)


def _num_classes(config: Mapping[str, Any]) -> int:
    labels = config.get("id2label")
    return len(labels) if isinstance(labels, Mapping) and labels else int(config.get("num_labels", 2))


def transformers_classes(config: Mapping[str, Any]) -> tuple[list[str], list[Colour]]:
    """Class names from ``id2label`` and a palette: VOC's names and colours for a VOC model (as the authors'
    is), the default names of the class count when the labels are transformers' placeholders (``LABEL_0``)."""
    count = _num_classes(config)
    labels = config.get("id2label") or {}
    names = [str(labels.get(str(i), labels.get(i, ""))) for i in range(count)]
    if count == len(VOC_CLASSES) and [_plain(n) for n in names] in ([_plain(n) for n in VOC_CLASSES], [""] * count):
        return list(VOC_CLASSES), voc_palette(count)
    default_names, palette = dataset_classes(None, count)
    if all(not name or re.fullmatch(r"LABEL_\d+", name) for name in names):
        return default_names, palette
    return names, palette


def _plain(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _our_layer(layer: str) -> tuple[str, str | None] | None:
    """(our conv prefix, our BN prefix) for one transformers ``MobileNetV2ConvLayer``."""
    stem = {"mobilenet_v2.conv_stem.first_conv": ("backbone.features.0.0", "backbone.features.0.1"),
            "mobilenet_v2.conv_stem.conv_3x3": ("backbone.features.1.conv.0.0", "backbone.features.1.conv.0.1"),
            "mobilenet_v2.conv_stem.reduce_1x1": ("backbone.features.1.conv.1", "backbone.features.1.conv.2"),
            "segmentation_head.conv_aspp": ("head.0.convs.0.0", "head.0.convs.0.1"),
            "segmentation_head.conv_pool": ("head.0.convs.1.1", "head.0.convs.1.2"),
            "segmentation_head.conv_projection": ("head.0.project.0", "head.0.project.1"),
            "segmentation_head.classifier": ("head.1", None)}
    if layer in stem:
        return stem[layer]
    if m := re.fullmatch(r"mobilenet_v2\.layer\.(\d+)\.(expand_1x1|conv_3x3|reduce_1x1)", layer):
        block = f"backbone.features.{int(m.group(1)) + 2}.conv"
        return {"expand_1x1": (f"{block}.0.0", f"{block}.0.1"), "conv_3x3": (f"{block}.1.0", f"{block}.1.1"),
                "reduce_1x1": (f"{block}.2", f"{block}.3")}[m.group(2)]
    return None


def transformers_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict from a transformers DeepLab v3 MobileNetV2 state dict; every tensor it holds must find
    its place (``conv_1x1``, unused by the segmentation model, is the one left out)."""
    ours: dict[str, Tensor] = {}
    unplaced = []
    norms = set()
    for key, value in state.items():
        if key.startswith(_UNUSED):
            continue
        m = _LAYER.fullmatch(key)
        target = _our_layer(m.group("layer")) if m else None
        prefix = None if target is None else target[0] if m.group("part") == "convolution" else target[1]
        if prefix is None:
            unplaced.append(key)
            continue
        ours[f"{prefix}.{m.group('attribute')}"] = value
        if m.group("part") == "normalization":
            norms.add(prefix)
    if unplaced:
        more = " ..." if len(unplaced) > 6 else ""
        raise ValueError(f"not a transformers {ARCHITECTURE} state dict deeplab knows: no place for "
                         f"{len(unplaced)} tensors ({', '.join(unplaced[:6])}{more})")
    for prefix in norms:  # transformers may leave the BN step counters out; they do not change the outputs
        ours.setdefault(f"{prefix}.num_batches_tracked", torch.tensor(0))
    if _PROJECTION in ours:  # [image pooling, 1x1] -> [1x1, image pooling]
        pooling, branch = ours[_PROJECTION].chunk(2, dim=1)
        ours[_PROJECTION] = torch.cat([branch, pooling], dim=1).contiguous()
    return ours
