"""The authors' TensorFlow DeepLab checkpoints as deeplab models: architecture from the variables, weights renamed.

The TF reference (tensorflow/models ``research/deeplab``) names every variable by its scope, e.g.
``xception_65/entry_flow/conv1_1/weights`` or ``decoder/feature_projection0/BatchNorm/gamma``. This module
knows, for each of our parameters, the TF variable it comes from (one rule per layer kind), so the same
rules read a checkpoint (:func:`import_tf_variables`) and write one (:func:`tf_variables`, which tests use
to fabricate checkpoints without TensorFlow). The architecture is inferred from names and shapes; the
options no variable records (output stride, atrous rates, multi-grid) default to the reference's
(OS 16, rates 6/12/18, multi-grid 1/1/1) and can be given.

Facts of the reference that shape the import, read from its code:
- inputs are scaled to -1..1 (``2x/255 - 1``) for Xception, MobileNet-v2 and ResNet-v1-beta alike:
  mean = std = 0.5 on the 0..1 scale;
- every bilinear resize has ``align_corners=True``; strided MobileNet convs and the ResNet-beta stem's
  pool pad as 'SAME'; MobileNet's BatchNorm epsilon is 1e-3 (Xception's is timm's 1e-3 already);
- ASPP concatenates [image pooling, 1x1, atrous...]; ours is [1x1, atrous..., image pooling], so the
  projection's input channels are permuted;
- the decoder reads Xception's stride-4 feature before its ReLU (``low_level_preact``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..constants import INCEPTION_MEAN, INCEPTION_STD
from ..tfcheckpoint import is_training_state
from .channels import adapt_input_weight
from .segmenter import Segmenter
from .spec import ModelSpec
from .zoo import build_model, resolve_spec

_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_XCEPTION_BLOCKS = {41: (3, 8), 65: (3, 16), 71: (5, 16)}  # entry-flow blocks, middle-flow units; exit: 2
_TF_OPTIONS: dict[str, dict[str, Any]] = {
    "xception": {"align_corners": True, "low_level_preact": True},
    "mobilenetv2": {"align_corners": True, "tf_padding": True, "bn_eps": 1e-3},
    "beta": {"align_corners": True, "tf_padding": True, "bn_eps": 1e-5},
}


# ----------------------------------------------------------------------------- architecture from variables


def _backbone_scope(names: Sequence[str]) -> str:
    scopes = {name.split("/", 1)[0] for name in names if "/" in name}
    known = sorted(s for s in scopes if re.fullmatch(r"xception_(41|65|71)|MobilenetV2|resnet_v1_(50|101)", s))
    if len(known) != 1:
        found = ", ".join(sorted(scopes)) or "none"
        raise ValueError("not a TF DeepLab checkpoint this importer knows: expected exactly one backbone scope of "
                         f"xception_41/65/71, MobilenetV2, resnet_v1_50/101 (beta); found top-level scopes: {found}")
    return known[0]


def infer_architecture(shapes: Mapping[str, Sequence[int]], *, output_stride: int = 16,
                       atrous_rates: Sequence[int] | None = None,
                       multi_grid: Sequence[int] | None = None) -> tuple[str, dict[str, Any]]:
    """(registry name, builder options) of the network a TF DeepLab checkpoint holds.

    Args:
        shapes: variable name -> shape.
        output_stride: the stride to build at (the zoo's models were trained at 16).
        atrous_rates: ASPP rates at ``output_stride``; default the reference's 6/12/18 at OS 16, scaled.
        multi_grid: ResNet-beta's block-4 unit rates (default the reference's (1, 1, 1)).
    """
    names = [n for n in shapes if not is_training_state(n)]
    scope = _backbone_scope(names)
    if "logits/semantic/weights" not in shapes:
        raise ValueError("the checkpoint has no 'logits/semantic/weights': a backbone-only (ImageNet) checkpoint "
                         "is used with pretrained_backbone=, not imported as a segmentation model")
    num_classes = int(shapes["logits/semantic/weights"][-1])
    branches = sorted({int(m.group(1)) for n in names if (m := re.match(r"aspp(\d+)", n)) and m.group(1) != "0"})
    separable_aspp = any(n.startswith("aspp1_depthwise/") for n in names)
    decoder = any(n.startswith("decoder/") for n in names)
    separable_decoder = any(n.startswith("decoder/decoder_conv0_depthwise/") for n in names)
    if decoder and branches and separable_decoder != separable_aspp:
        raise ValueError("ASPP and decoder differ in separable convs; deeplab builds both alike")
    if "image_pooling/weights" not in shapes:
        raise ValueError("the checkpoint has no image-pooling branch ('image_pooling/weights'); deeplab's v3 and "
                         "v3+ heads always have one")
    separable = separable_aspp if branches else separable_decoder
    if atrous_rates is None:
        atrous_rates = tuple(max(1, r * 16 // output_stride) for r in (6, 12, 18))[: len(branches)]
    elif len(atrous_rates) != len(branches):
        raise ValueError(f"the checkpoint has {len(branches)} atrous ASPP branches; got {len(atrous_rates)} rates")
    options: dict[str, Any] = {"num_classes": num_classes, "output_stride": output_stride,
                               "atrous_rates": tuple(atrous_rates), "mean": INCEPTION_MEAN, "std": INCEPTION_STD}
    version = "deeplabv3plus" if decoder else "deeplabv3"
    if scope.startswith("xception"):
        if not decoder:
            raise ValueError(f"{scope} without a decoder is not a deeplab model (only v3+ uses Xception)")
        return f"{version}_xception{scope.split('_')[1]}", {**options, "separable": separable,
                                                            **_TF_OPTIONS["xception"]}
    if scope == "MobilenetV2":
        if decoder:
            raise ValueError("MobileNet-v2 with a decoder reads 'layer_4/depthwise_output' in the reference, a "
                             "feature deeplab's MobileNetV2 v3+ does not use; only the zoo's v3 form is importable")
        if separable and branches:
            raise ValueError("MobileNet-v2 with separable atrous ASPP branches is not a deeplab model")
        return "deeplabv3_mobilenetv2", {**options, **_TF_OPTIONS["mobilenetv2"]}
    depth = scope.split("_")[-1]
    if f"{scope}/conv1_1/weights" not in shapes:
        raise ValueError(f"{scope} has no 3-conv stem ('{scope}/conv1_1/weights'): only the 'beta' ResNet-v1 of the "
                         "DeepLab reference is supported")
    grid = tuple(multi_grid) if multi_grid is not None else (1, 1, 1)
    return f"{version}_resnet{depth}_beta", {**options, "separable": separable, "multi_grid": grid,
                                             **_TF_OPTIONS["beta"]}


# ----------------------------------------------------------------------------- our parameter -> TF variable

Rule = tuple[str, str]  # (TF variable name, kind): kind "conv", "depthwise", "bn", "bias"


def _bn(scope: str, attribute: str) -> Rule:
    return f"{scope}/BatchNorm/{_BN[attribute]}", "bn"


def _layer(scope: str, attribute: str, depthwise: bool = False) -> Rule:
    """A conv's ``weight`` or a BN's attribute under one TF scope."""
    if attribute == "weight_conv":
        return (f"{scope}/depthwise_weights", "depthwise") if depthwise else (f"{scope}/weights", "conv")
    return _bn(scope, attribute)


def _xception_block_names(scope: str, depth: int) -> list[str]:
    entry, middle = _XCEPTION_BLOCKS[depth]
    return ([f"{scope}/entry_flow/block{b}/unit_1" for b in range(1, entry + 1)]
            + [f"{scope}/middle_flow/block1/unit_{u}" for u in range(1, middle + 1)]
            + [f"{scope}/exit_flow/block{b}/unit_1" for b in (1, 2)])


def _xception_rule(key: str, scope: str, blocks: list[str]) -> Rule | None:
    if m := re.fullmatch(r"stem_(\d)\.(conv|bn)\.(\w+)", key):
        index, part, attribute = m.groups()
        layer = f"{scope}/entry_flow/conv1_{int(index) + 1}"
        return _layer(layer, "weight_conv" if part == "conv" else attribute)
    if m := re.fullmatch(r"blocks_(\d+)\.stack\.conv(\d)\.(conv|bn)_(dw|pw)\.(\w+)", key):
        block, k, part, which, attribute = m.groups()
        if int(block) >= len(blocks):
            return None
        suffix = "depthwise" if which == "dw" else "pointwise"
        layer = f"{blocks[int(block)]}/xception_module/separable_conv{k}_{suffix}"
        return _layer(layer, "weight_conv" if part == "conv" else attribute, depthwise=which == "dw")
    if m := re.fullmatch(r"blocks_(\d+)\.shortcut\.(conv|bn)\.(\w+)", key):
        block, part, attribute = m.groups()
        if int(block) >= len(blocks):
            return None
        return _layer(f"{blocks[int(block)]}/xception_module/shortcut", "weight_conv" if part == "conv" else attribute)
    return None


def _mobilenet_rule(key: str, backbone: nn.Module) -> Rule | None:
    if m := re.fullmatch(r"features\.0\.(\d)\.(\w+)", key):
        part, attribute = m.groups()
        return _layer("MobilenetV2/Conv", "weight_conv" if part == "0" else attribute)
    m = re.fullmatch(r"features\.(\d+)\.conv\.(\d)\.(?:(\d)\.)?(\w+)", key)
    if not m:
        return None
    block, layer, inner, attribute = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
    name = "MobilenetV2/expanded_conv" + (f"_{block - 1}" if block > 1 else "")
    parts = ["expand", "depthwise", "project", "project"] if len(backbone.features[block].conv) == 4 \
        else ["depthwise", "project", "project"]
    part = parts[layer]
    if part == "project":  # a bare conv then a bare BN
        is_conv = layer == parts.index("project")
        return _layer(f"{name}/project", "weight_conv" if is_conv else attribute)
    return _layer(f"{name}/{part}", "weight_conv" if inner == "0" else attribute, depthwise=part == "depthwise")


def _beta_rule(key: str, scope: str) -> Rule | None:
    if m := re.fullmatch(r"stem\.(\d)\.(\d)\.(\w+)", key):
        index, part, attribute = m.groups()
        return _layer(f"{scope}/conv1_{int(index) + 1}", "weight_conv" if part == "0" else attribute)
    if m := re.fullmatch(r"block(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)", key):
        block, unit, part, k, attribute = m.groups()
        layer = f"{scope}/block{block}/unit_{int(unit) + 1}/bottleneck_v1/conv{k}"
        return _layer(layer, "weight_conv" if part == "conv" else attribute)
    if m := re.fullmatch(r"block(\d)\.(\d+)\.shortcut\.(\d)\.(\w+)", key):
        block, unit, part, attribute = m.groups()
        layer = f"{scope}/block{block}/unit_{int(unit) + 1}/bottleneck_v1/shortcut"
        return _layer(layer, "weight_conv" if part == "0" else attribute)
    return None


def _separable_or_plain(rest: str, scope: str) -> Rule | None:
    """A 3x3 branch: ``0.{0,1}.x`` / ``1.{0,1}.x`` (separable) or ``{0,1}.x`` (plain ConvBNReLU)."""
    if m := re.fullmatch(r"([01])\.([01])\.(\w+)", rest):
        which, part, attribute = m.groups()
        suffix = "_depthwise" if which == "0" else "_pointwise"
        return _layer(scope + suffix, "weight_conv" if part == "0" else attribute, depthwise=which == "0")
    if m := re.fullmatch(r"([01])\.(\w+)", rest):
        part, attribute = m.groups()
        return _layer(scope, "weight_conv" if part == "0" else attribute)
    return None


def _head_rule(key: str, head: nn.Module, branches: int) -> Rule | None:
    aspp_prefix = "aspp." if hasattr(head, "aspp") else "0."
    if key.startswith(aspp_prefix + "convs."):
        index, rest = key[len(aspp_prefix + "convs."):].split(".", 1)
        index = int(index)
        if index == 0:
            return _separable_or_plain(rest, "aspp0")
        if index <= branches:
            return _separable_or_plain(rest, f"aspp{index}")
        if m := re.fullmatch(r"([12])\.(\w+)", rest):  # image pooling: 1 conv, 2 bn
            return _layer("image_pooling", "weight_conv" if m.group(1) == "1" else m.group(2))
        return None
    if m := re.fullmatch(re.escape(aspp_prefix) + r"project\.([01])\.(\w+)", key):
        return _layer("concat_projection", "weight_conv" if m.group(1) == "0" else m.group(2))
    if m := re.fullmatch(r"low_level\.([01])\.(\w+)", key):
        return _layer("decoder/feature_projection0", "weight_conv" if m.group(1) == "0" else m.group(2))
    if m := re.fullmatch(r"fuse\.([01])\.(.+)", key):
        index, rest = m.groups()
        separable = _separable_or_plain(rest, f"decoder/decoder_conv{index}")
        if re.fullmatch(r"[01]\.[01]\.\w+", rest):
            return separable
        return _separable_or_plain(rest, f"decoder/decoder_conv0/decoder_conv0_{int(index) + 1}")
    if m := re.fullmatch(r"(classifier|\d+)\.(weight|bias)", key):
        return ("logits/semantic/weights", "conv") if m.group(2) == "weight" else ("logits/semantic/biases", "bias")
    return None


def _rules(model: Segmenter) -> dict[str, Rule]:
    """Our state-dict key -> (TF variable, kind), for every parameter and BN statistic of ``model``."""
    name = model.spec.name
    backbone_rule: Callable[[str], Rule | None]
    if "xception" in name:
        depth = int(name.rsplit("xception", 1)[1])
        blocks = _xception_block_names(f"xception_{depth}", depth)
        backbone_rule = lambda key: _xception_rule(key.removeprefix("body."), f"xception_{depth}", blocks)  # noqa: E731
    elif "mobilenetv2" in name:
        backbone_rule = lambda key: _mobilenet_rule(key, model.backbone)  # noqa: E731
    elif name.endswith("_beta"):
        scope = f"resnet_v1_{name.split('resnet')[1].split('_')[0]}"
        backbone_rule = lambda key: _beta_rule(key, scope)  # noqa: E731
    else:
        raise ValueError(f"{name} has no counterpart in the TF reference")
    branches = len(model.spec.options.get("atrous_rates", ()))
    rules: dict[str, Rule] = {}
    unplaced = []
    for key in model.state_dict():
        if key.endswith("num_batches_tracked"):
            continue
        part, _, rest = key.partition(".")
        rule = backbone_rule(rest) if part == "backbone" else _head_rule(rest, model.head, branches) \
            if part == "head" else None
        if rule is None:
            unplaced.append(key)
        else:
            rules[key] = rule
    if unplaced:
        more = " ..." if len(unplaced) > 8 else ""
        raise ValueError(f"{name}: no TF variable for {', '.join(unplaced[:8])}{more}")
    return rules


# ----------------------------------------------------------------------------- values


def _to_torch(value: np.ndarray, kind: str) -> Tensor:
    if kind == "conv":  # TF: kh, kw, in, out -> out, in, kh, kw
        value = value.transpose(3, 2, 0, 1)
    elif kind == "depthwise":  # TF: kh, kw, in, multiplier (1) -> in, 1, kh, kw
        value = value.transpose(2, 3, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))


def _to_tf(value: Tensor, kind: str) -> np.ndarray:
    array = value.detach().cpu().float().numpy()
    if kind == "conv":
        array = array.transpose(2, 3, 1, 0)
    elif kind == "depthwise":
        array = array.transpose(2, 3, 0, 1)
    return np.ascontiguousarray(array)


def _projection_order(model: Segmenter) -> list[int]:
    """Our ASPP projection's input blocks in TF's order: TF concatenates [pooling, 1x1, atrous...]."""
    branches = len(model.spec.options.get("atrous_rates", ()))
    return [branches + 1, *range(branches + 1)]


def _permute_projection(weight: Tensor, order: list[int], inverse: bool) -> Tensor:
    blocks = list(weight.chunk(len(order), dim=1))
    if inverse:  # ours -> TF
        return torch.cat([blocks[i] for i in order], dim=1)
    ours = [None] * len(order)
    for tf_position, our_index in enumerate(order):
        ours[our_index] = blocks[tf_position]
    return torch.cat(ours, dim=1)


def _is_projection(key: str) -> bool:
    return bool(re.fullmatch(r"head\.(aspp|0)\.project\.0\.weight", key))


def import_tf_variables(variables: Mapping[str, np.ndarray],
                        **architecture: Any) -> tuple[ModelSpec, dict[str, Tensor]]:
    """The spec and state dict of the network in a TF DeepLab checkpoint's variables.

    ``architecture``: ``output_stride``, ``atrous_rates``, ``multi_grid`` (see :func:`infer_architecture`).
    Raises ``ValueError`` naming the variables it could not place or that are missing or misshapen.
    """
    name, options = infer_architecture({k: np.shape(v) for k, v in variables.items()}, **architecture)
    model = build_model(name, **options)
    state = model_state_from_tf(variables, model)
    return model.spec, state


def model_state_from_tf(variables: Mapping[str, np.ndarray], model: Segmenter, *,
                        backbone_only: bool = False, adapt: Collection[str] = ()) -> dict[str, Tensor]:
    """``model``'s state dict filled from TF variables; every TF variable must find its place.

    With ``backbone_only`` (an ImageNet checkpoint), only backbone parameters are read and TF variables
    outside the backbone's scope (its classifier) are ignored. ``adapt``: keys of weights that read the image,
    whose 3-channel TF values are adapted to the model's input channels
    (:func:`deeplab.models.channels.adapt_input_weight`).
    """
    rules = _rules(model)
    if backbone_only:
        rules = {k: v for k, v in rules.items() if k.startswith("backbone.")}
    scope = {rule[0].split("/", 1)[0] for rule in rules.values() if rule[0].count("/") > 1}
    state = model.state_dict()
    missing, misshapen, used = [], [], set()
    for key, (tf_name, kind) in rules.items():
        if tf_name not in variables:
            missing.append(tf_name)
            continue
        value = _to_torch(np.asarray(variables[tf_name]), kind)
        if key in adapt and value.shape != state[key].shape and value.shape[1] == 3:
            value = adapt_input_weight(value, state[key].shape[1])
        if value.shape != state[key].shape:
            misshapen.append(f"{tf_name} {tuple(np.shape(variables[tf_name]))} (for {key} {tuple(state[key].shape)})")
            continue
        state[key] = value
        used.add(tf_name)
    extra = sorted(n for n in variables if n not in used and not is_training_state(n)
                   and not (backbone_only and (n.split("/", 1)[0] not in scope or "/logits/" in n)))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(missing[:6])}" + (" ..." if len(missing) > 6 else ""))
    if misshapen:
        problems.append(f"misshapen: {'; '.join(misshapen[:4])}")
    if extra:
        problems.append(f"could not place {len(extra)}: {', '.join(extra[:6])}" + (" ..." if len(extra) > 6 else ""))
    if problems:
        raise ValueError(f"TF variables do not fit {model.spec.name}: " + " | ".join(problems))
    if not backbone_only:
        key = next(k for k in state if _is_projection(k))
        state[key] = _permute_projection(state[key], _projection_order(model), inverse=False)
    return state


def backbone_state_from_tf(variables: Mapping[str, np.ndarray], model: Segmenter,
                           adapt: Collection[str] = ()) -> dict[str, Tensor]:
    """The backbone's state dict (keys as ``model.backbone`` names them) from an ImageNet TF checkpoint
    (``adapt``: see :func:`model_state_from_tf`)."""
    state = model_state_from_tf(variables, model, backbone_only=True, adapt=adapt)
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


def tf_variables(model: Segmenter) -> dict[str, np.ndarray]:
    """The inverse of the import: ``model``'s weights under the TF reference's names and layouts."""
    rules = _rules(model)
    state = model.state_dict()
    variables = {}
    for key, (tf_name, kind) in rules.items():
        value = state[key]
        if _is_projection(key):
            value = _permute_projection(value, _projection_order(model), inverse=True)
        variables[tf_name] = _to_tf(value, kind)
    return variables


def tf_spec(name: str, **options: Any) -> ModelSpec:
    """The spec :func:`import_tf_variables` gives for a model of ``name`` (the TF numerics switched on)."""
    family = "xception" if "xception" in name else "mobilenetv2" if "mobilenetv2" in name else "beta"
    return resolve_spec(name, {"mean": INCEPTION_MEAN, "std": INCEPTION_STD, **_TF_OPTIONS[family], **options})
