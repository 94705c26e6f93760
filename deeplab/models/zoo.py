"""One keyword-only constructor per published DeepLab variant, a name registry, and ``build_model``.

Every way of making a model goes through :func:`build_model` (``deeplab.create_model`` reads weight files,
then calls it): it resolves a :class:`ModelSpec` (the constructor's defaults, the paper's atrous rates for
the output stride, what the given weights imply, the caller's arguments, in rising order of precedence),
builds the network from the spec alone, attaches it as ``model.spec`` and loads the weights. The public
builders (``deeplabv3plus_resnet101(...)`` and the rest) are thin aliases of ``build_model(name, ...)``.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchvision import models as tvm

from ..constants import NORMALIZATIONS, check_normalization
from .backbones import MobileNetV2Backbone, ResNetBackbone, VGG16Backbone, XceptionBackbone
from .heads import AuxHead, DeepLabV2Head, DeepLabV3Head, DeepLabV3PlusHead, LargeFOVHead, LargeFOVMScHead
from .msc import MSCSegmenter, check_scales
from .resnet_beta import ResNetV1BetaBackbone
from .segmenter import Segmenter
from .spec import RATE_OPTIONS, ModelSpec, scaled_rates
from .timm_encoder import (
    TIMM_PREFIX,
    TimmEncoder,
    check_timm_name,
    load_timm_file,
    pretrained_normalization,
    timm_version,
    timm_weights_problem,
)
from .weights import load_backbone_weights, load_weights, weights_and_implied

# ImageNet weights published by torchvision, fetched through torch.hub's download path and cache.
IMAGENET_URLS = {
    "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1.url,
    "resnet101": tvm.ResNet101_Weights.IMAGENET1K_V1.url,
    "vgg16": tvm.VGG16_Weights.IMAGENET1K_V1.url,
    "mobilenetv2": tvm.MobileNet_V2_Weights.IMAGENET1K_V1.url,
}

# Arguments that say how to initialise the weights, not what the network is: never part of a spec.
INIT_ARGUMENTS = ("weights", "pretrained_backbone")
# Options every model takes, applied by ``build_from_spec`` around the built network rather than by
# its constructor, with their defaults. ``msc_scales``: v2's multi-scale input fusion (MSCSegmenter);
# off (None, or an empty list) unless set. A spec records it only when it is on.
GENERIC_OPTIONS: dict[str, Any] = {"msc_scales": None}
# Options where ``None`` is a real choice rather than "use the default" (``msc_scales=None`` turns
# off the fusion that weights from an MSC checkpoint would bring).
_NONE_IS_A_CHOICE = frozenset({"multi_grid", "msc_scales"})


@dataclass(frozen=True)
class ModelEntry:
    """Registry row: how to build a model and what the CLI lists and the model table compares against.

    ``paper_rates`` are the default atrous rates, chosen at output stride ``rates_stride``; they
    scale with the output stride the model is built at.
    """

    name: str
    version: str
    backbone: str
    construct: Callable[..., Segmenter]
    normalization: str = "imagenet"
    paper_rates: tuple[int, ...] = ()
    rates_stride: int = 16
    paper_macs: Mapping[int, float] = field(default_factory=dict)  # output stride -> GMACs at 513x513
    # (mean, std) the backbone's weights expect when no preset names them (a timm encoder's pretrained config).
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def options(self) -> dict[str, Any]:
        """The constructor's architecture arguments with their defaults (``mean``/``std`` included)."""
        params = inspect.signature(self.construct).parameters
        defaults = {k: p.default for k, p in params.items() if k not in INIT_ARGUMENTS}
        mean, std = self.mean_std or NORMALIZATIONS[self.normalization]
        return {**defaults, "mean": mean, "std": std}


_MODELS: dict[str, ModelEntry] = {}


def _register(version: str, backbone: str, *, normalization: str = "imagenet", paper_rates: Sequence[int] = (),
              rates_stride: int = 16, paper_macs: Mapping[int, float] | None = None):
    def wrap(construct: Callable[..., Segmenter]) -> Callable[..., Segmenter]:
        name = construct.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelEntry(name, version, backbone, construct, normalization, tuple(paper_rates),
                                   rates_stride, dict(paper_macs or {}))

        @functools.wraps(construct)
        def builder(**kwargs: Any) -> Segmenter:
            return build_model(name, **kwargs)

        return builder

    return wrap


def list_models() -> list[str]:
    """Names accepted by :func:`build_model` and ``deeplab.create_model``, besides the ``HEAD_tu-ENCODER`` ones
    (:data:`TIMM_HEADS` over any fitting timm model)."""
    return sorted(_MODELS)


def model_entry(name: str) -> ModelEntry:
    """The registry row of ``name``: a registered model, or ``HEAD_tu-ENCODER`` for a timm encoder."""
    if name in _MODELS:
        return _MODELS[name]
    head, sep, encoder = name.partition("_" + TIMM_PREFIX)
    if sep and encoder:
        return _timm_entry(head, encoder)
    raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(list_models())}, or "
                     f"{{{', '.join(TIMM_HEADS)}}}_{TIMM_PREFIX}<timm model> (`deeplab models --encoders`)")


def build_model(name: str, *, weights: Mapping[str, Tensor] | None = None, pretrained_backbone: bool | str = False,
                **options: Any) -> Segmenter:
    """Builds a registered model by name, with the ImageNet weights its builder loads itself.

    :func:`deeplab.models.build_model` (above, in :mod:`deeplab.models.pretrained`) is this plus the backbone
    weights that live above the builders (the TF zoo's by name, timm's for ``tu-`` encoders);
    ``deeplab.create_model`` is that with weight files and names.

    Args:
        name: one of :func:`list_models`, or ``HEAD_tu-ENCODER``.
        weights: a state dict or a checkpoint's dict in memory (ours, or torchvision's DeepLabV3). Weights
            that imply an architecture (torchvision's head layout at output stride 8, a checkpoint's spec)
            set the defaults; explicit ``options`` still win.
        pretrained_backbone: True for torchvision's / timm's Xception ImageNet weights, or a local path / URL.
        **options: the model's architecture arguments (``num_classes``, ``output_stride``,
            ``atrous_rates``, ...; see each builder), plus ``mean``/``std`` for the input normalisation.
            A key the model does not take is an error that lists the ones it does.

    Returns:
        The model in training mode, with its resolved :class:`ModelSpec` as ``model.spec``.
    """
    if weights is not None and not isinstance(weights, Mapping):
        raise TypeError(f"build_model takes weights as a state dict in memory, not {type(weights).__name__}; "
                        "for a file or a published name use deeplab.create_model(name, weights=...)")
    state, implied = weights_and_implied(weights, name) if weights is not None else (None, {})
    spec = resolve_spec(name, options, implied)
    if state is not None:
        return build_with_weights(spec, state)  # the weights replace any ImageNet backbone anyway
    if isinstance(pretrained_backbone, str) and not any(c in pretrained_backbone for c in "/.") and \
            not os.path.exists(pretrained_backbone):
        raise ValueError(f"pretrained_backbone={pretrained_backbone!r} is neither a file nor a URL; a TF model-zoo "
                         f"checkpoint's name loads through deeplab.create_model or deeplab.models.build_model")
    return build_from_spec(spec, pretrained_backbone=pretrained_backbone)


def resolve_spec(name: str, options: Mapping[str, Any], implied: Mapping[str, Any] | None = None) -> ModelSpec:
    """The spec of model ``name`` for the given options; ``implied`` are defaults that weights impose.

    ``implied`` may hold a whole spec's arguments (a checkpoint used as initial weights); its atrous
    rates are rescaled when ``options`` ask for another output stride.
    """
    entry = model_entry(name)
    defaults = {**entry.options(), **GENERIC_OPTIONS}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        keys = ", ".join(repr(k) for k in unknown)
        raise ValueError(f"{name} does not take {keys}; it accepts: {', '.join(defaults)} "
                         f"(and {', '.join(INIT_ARGUMENTS)})")
    given = {k: v for k, v in options.items() if v is not None or k in _NONE_IS_A_CHOICE}
    implied = {k: v for k, v in (implied or {}).items() if k in defaults}
    if "output_stride" in given and "output_stride" in implied:
        implied = _rescale_rates(implied, given["output_stride"])
    values = {**defaults, **implied, **given}
    for key in RATE_OPTIONS:
        if key in values and values[key] is None:
            rates = scaled_rates(entry.paper_rates, entry.rates_stride, values["output_stride"])
            values[key] = rates[0] if key == "atrous_rate" else rates
    return _checked_spec(name, values)


def _rescale_rates(arguments: Mapping[str, Any], output_stride: int) -> dict[str, Any]:
    rest = {k: v for k, v in arguments.items() if k not in ("num_classes", "output_stride")}
    spec = ModelSpec("", arguments.get("num_classes", 1), arguments["output_stride"], rest)
    return {**arguments, **spec.at_output_stride(output_stride).options, "output_stride": output_stride}


def _checked_spec(name: str, values: dict[str, Any]) -> ModelSpec:
    num_classes, output_stride = values.pop("num_classes"), values.pop("output_stride")
    mean, std = values.pop("mean"), values.pop("std")
    in_channels = values.pop("in_channels", 3)
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(output_stride, bool) or not isinstance(output_stride, int):
        raise ValueError(f"output_stride must be an int (8, 16 or 32), got {output_stride!r}")
    check_normalization(mean, std, in_channels)
    dropout = values.get("dropout")
    if dropout is not None and not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    for key in ("atrous_rates", "multi_grid"):
        if values.get(key) is not None:
            if isinstance(values[key], str | bytes) or not all(isinstance(v, int) and v >= 1 for v in values[key]):
                raise ValueError(f"{key} must be a list of positive ints, got {values[key]!r}")
            values[key] = tuple(values[key])
    scales = values.pop("msc_scales", None)
    scales = () if scales is None else check_scales(scales)
    if scales:  # recorded only when on, so a plain model's spec is the same as before MSC existed
        values["msc_scales"] = scales
    return ModelSpec(name, num_classes, output_stride, values, tuple(mean), tuple(std), in_channels=in_channels)


def build_from_spec(spec: ModelSpec, *, pretrained_backbone: bool | str = False) -> Segmenter:
    """Builds exactly the network a spec describes (random weights, or the ImageNet weights its builder loads:
    torchvision's and timm's Xception; the TF zoo's and timm encoders' come from :mod:`deeplab.models.pretrained`)."""
    arguments = spec.builder_arguments()
    generic = {key: arguments.pop(key, default) for key, default in GENERIC_OPTIONS.items()}
    construct = model_entry(spec.name).construct
    if "in_channels" in inspect.signature(construct).parameters:  # built for its input channels (timm's in_chans)
        arguments["in_channels"] = spec.in_channels
    model = construct(**arguments, pretrained_backbone=pretrained_backbone)
    if generic["msc_scales"]:
        model = MSCSegmenter.from_segmenter(model, generic["msc_scales"])
    model.spec = spec
    model.in_channels = spec.in_channels
    return model


def build_with_weights(spec: ModelSpec, weights: Mapping[str, Tensor], *,
                       device: str | torch.device = "cpu") -> Segmenter:
    """The network ``spec`` describes on ``device``, holding ``weights`` (loaded strictly by :func:`load_weights`).

    The layers are made on the meta device and get their memory empty, so the random initialisation that the
    weights would overwrite never runs (a ResNet-101 opens about 0.5 s sooner). A model with a buffer that no
    state dict carries (a non-persistent one) is built the ordinary way instead, so nothing is left unset.
    """
    with torch.device("meta"):
        model = build_from_spec(spec)
    saved = set(model.state_dict())
    if all(name in saved for name, _ in itertools.chain(model.named_parameters(), model.named_buffers())):
        model = model.to_empty(device=device)
    else:
        model = build_from_spec(spec).to(device)
    load_weights(model, weights)
    return model


def _pretrain(backbone: nn.Module, key: str, pretrained_backbone: bool | str) -> None:
    if pretrained_backbone:
        source = IMAGENET_URLS[key] if pretrained_backbone is True else str(pretrained_backbone)
        load_backbone_weights(backbone, source, what=f"ImageNet {key}")


def _resnet(depth: int, output_stride: int, multi_grid: Sequence[int] | None, pretrained: bool | str):
    backbone = ResNetBackbone(depth, output_stride=output_stride, multi_grid=multi_grid)
    _pretrain(backbone, f"resnet{depth}", pretrained)
    return backbone


def _aux(backbone: nn.Module, num_classes: int, aux_loss: bool) -> nn.Module | None:
    return AuxHead(backbone.feature_specs["aux"].channels, num_classes) if aux_loss else None


# ---------------------------------------------------------------- v1 and v2 (VGG-16, ResNet-101)


def _vgg(output_stride: int, pretrained: bool | str) -> VGG16Backbone:
    backbone = VGG16Backbone(output_stride=output_stride)
    _pretrain(backbone, "vgg16", pretrained)
    return backbone


@_register("v1", "VGG-16", paper_rates=(12,), rates_stride=8)
def deeplabv1_vgg16(
    *, num_classes: int = 21, output_stride: int = 8, atrous_rate: int | None = None, dropout: float = 0.5,
    multiscale_features: bool = False, pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v1 LargeFOV: atrous VGG-16 (OS 8), fc6 3x3 rate 12 with 1024 channels, fc7, fc8.

    Args:
        atrous_rate: fc6's rate; default 12 at OS 8 (the LargeFOV row of the v1 paper), scaled with the stride.
        dropout: after fc6 and fc7 (0.5 in the paper's Caffe model).
        multiscale_features: DeepLab-MSc-LargeFOV: a two-layer MLP (128 3x3, 128 1x1) on the input and
            on each of the first four pooling outputs, their 640 channels concatenated with fc7's
            output before fc8 (v1 paper, Sec. 4.3).
    """
    backbone = _vgg(output_stride, pretrained_backbone)
    if multiscale_features:
        head = LargeFOVMScHead(backbone.feature_specs, num_classes, output_stride=output_stride, rate=atrous_rate,
                               dropout=dropout)
    else:
        head = LargeFOVHead(512, num_classes, rate=atrous_rate, dropout=dropout)
    return Segmenter(backbone, head, num_classes=num_classes, output_stride=output_stride)


@_register("v2", "VGG-16", paper_rates=(6, 12, 18, 24), rates_stride=8)
def deeplabv2_vgg16(
    *, num_classes: int = 21, output_stride: int = 8, atrous_rates: Sequence[int] | None = None,
    dropout: float = 0.5, pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v2 ASPP-L on VGG-16: four fc6-fc7-fc8 branches at rates 6/12/18/24 (OS 8), summed."""
    backbone = _vgg(output_stride, pretrained_backbone)
    head = DeepLabV2Head(512, num_classes, atrous_rates, fc_layers=True, dropout=dropout)
    return Segmenter(backbone, head, num_classes=num_classes, output_stride=output_stride)


@_register("v2", "ResNet-101", paper_rates=(6, 12, 18, 24), rates_stride=8)
def deeplabv2_resnet101(
    *, num_classes: int = 21, output_stride: int = 8, atrous_rates: Sequence[int] | None = None,
    pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v2 on ResNet-101 (OS 8): four 3x3 atrous classifiers at rates 6/12/18/24, summed."""
    backbone = _resnet(101, output_stride, None, pretrained_backbone)
    head = DeepLabV2Head(2048, num_classes, atrous_rates, fc_layers=False)
    return Segmenter(backbone, head, num_classes=num_classes, output_stride=output_stride)


# ---------------------------------------------------------------- v3


def _deeplabv3_resnet(
    depth: int, *, num_classes: int, output_stride: int, atrous_rates: Sequence[int],
    multi_grid: Sequence[int] | None, head_conv: bool, dropout: float, aux_loss: bool,
    pretrained_backbone: bool | str,
) -> Segmenter:
    backbone = _resnet(depth, output_stride, multi_grid, pretrained_backbone)
    head = DeepLabV3Head(2048, num_classes, atrous_rates, extra_conv=head_conv, dropout=dropout)
    return Segmenter(backbone, head, _aux(backbone, num_classes, aux_loss), num_classes=num_classes,
                     output_stride=output_stride)


@_register("v3", "ResNet-50", paper_rates=(6, 12, 18))
def deeplabv3_resnet50(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] | None = (1, 2, 4), head_conv: bool = False, dropout: float = 0.1,
    aux_loss: bool = False, pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v3 on ResNet-50. See :func:`deeplabv3_resnet101` for the arguments."""
    return _deeplabv3_resnet(
        50, num_classes=num_classes, output_stride=output_stride, atrous_rates=atrous_rates,
        multi_grid=multi_grid, head_conv=head_conv, dropout=dropout, aux_loss=aux_loss,
        pretrained_backbone=pretrained_backbone,
    )


@_register("v3", "ResNet-101", paper_rates=(6, 12, 18), paper_macs={16: 81.02, 8: 276.18})
def deeplabv3_resnet101(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] | None = (1, 2, 4), head_conv: bool = False, dropout: float = 0.1,
    aux_loss: bool = False, pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v3: dilated ResNet-101 with multi-grid block4, ASPP with image pooling, 1x1 classifier.

    Args:
        num_classes: output classes.
        output_stride: 8, 16 (default, the paper's training setting) or 32; 8 when torchvision's
            DeepLabV3 weights are given (they were trained at 8).
        atrous_rates: ASPP rates; default (6, 12, 18) at OS 16, scaled with the output stride.
        multi_grid: block4 unit rates (1, 2, 4) as in the paper; ``None`` for torchvision's layout.
        head_conv: torchvision's extra 3x3 conv after ASPP.
        dropout: after the ASPP projection (0.1 as in the TF reference; torchvision uses 0.5).
        aux_loss: add the auxiliary FCN head on stage 3 (its logits in ``forward_train``).
        pretrained_backbone: True for torchvision's ImageNet weights, or a local path / URL.

    ``weights`` (see ``deeplab.create_model``) may be torchvision's ``deeplabv3_resnet*`` state dict, which
    implies ``head_conv=True``, ``multi_grid=None``, ``dropout=0.5`` and output stride 8.
    """
    return _deeplabv3_resnet(
        101, num_classes=num_classes, output_stride=output_stride, atrous_rates=atrous_rates,
        multi_grid=multi_grid, head_conv=head_conv, dropout=dropout, aux_loss=aux_loss,
        pretrained_backbone=pretrained_backbone,
    )


@_register("v3", "MobileNetV2", paper_macs={16: 2.75})
def deeplabv3_mobilenetv2(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] = (), dropout: float = 0.1,
    align_corners: bool = False, tf_padding: bool = False, bn_eps: float = 1e-5,
    pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v3 on MobileNetV2 as in the TF reference: ASPP with only the 1x1 and image-pooling
    branches (pass ``atrous_rates`` to add 3x3 atrous branches).

    Args:
        align_corners, tf_padding, bn_eps: the TF reference's numerics (``align_corners=True``,
            ``tf_padding=True``, ``bn_eps=1e-3``), set by ``deeplab import-tf`` for the authors' weights;
            the defaults are torchvision's MobileNetV2.
    """
    backbone = _mobilenetv2(output_stride, bn_eps, tf_padding, pretrained_backbone)
    head = DeepLabV3Head(320, num_classes, tuple(atrous_rates), dropout=dropout, align_corners=align_corners)
    return Segmenter(backbone, head, num_classes=num_classes, output_stride=output_stride,
                     align_corners=align_corners)


def _mobilenetv2(output_stride: int, bn_eps: float, tf_padding: bool, pretrained: bool | str) -> MobileNetV2Backbone:
    backbone = MobileNetV2Backbone(output_stride=output_stride, bn_eps=bn_eps, tf_padding=tf_padding)
    _pretrain(backbone, "mobilenetv2", pretrained)
    return backbone


# ---------------------------------------------------------------- v3+


def _deeplabv3plus(
    backbone: nn.Module, *, num_classes: int, output_stride: int, atrous_rates: Sequence[int],
    separable: bool, dropout: float, aux_loss: bool = False, align_corners: bool = False,
) -> Segmenter:
    specs = backbone.feature_specs
    head = DeepLabV3PlusHead(specs["out"].channels, specs["low_level"].channels, num_classes, atrous_rates,
                             separable=separable, dropout=dropout, align_corners=align_corners)
    return Segmenter(backbone, head, _aux(backbone, num_classes, aux_loss), num_classes=num_classes,
                     output_stride=output_stride, align_corners=align_corners)


@_register("v3+", "ResNet-50", paper_rates=(6, 12, 18))
def deeplabv3plus_resnet50(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] | None = (1, 2, 4), separable: bool = False, dropout: float = 0.1,
    aux_loss: bool = False, pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v3+ on ResNet-50. See :func:`deeplabv3plus_resnet101` for the arguments."""
    backbone = _resnet(50, output_stride, multi_grid, pretrained_backbone)
    return _deeplabv3plus(backbone, num_classes=num_classes, output_stride=output_stride, atrous_rates=atrous_rates,
                          separable=separable, dropout=dropout, aux_loss=aux_loss)


@_register("v3+", "ResNet-101", paper_rates=(6, 12, 18), paper_macs={16: 101.28, 8: 297.92})
def deeplabv3plus_resnet101(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] | None = (1, 2, 4), separable: bool = False, dropout: float = 0.1,
    aux_loss: bool = False, pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v3+: the v3 encoder plus a decoder on the stride-4 feature (layer1).

    Args:
        separable: atrous separable convs in ASPP and decoder (plain convs by default for ResNet).
        Others as in :func:`deeplabv3_resnet101`.
    """
    backbone = _resnet(101, output_stride, multi_grid, pretrained_backbone)
    return _deeplabv3plus(backbone, num_classes=num_classes, output_stride=output_stride, atrous_rates=atrous_rates,
                          separable=separable, dropout=dropout, aux_loss=aux_loss)


def _xception(depth: int, output_stride: int, pretrained_backbone: bool | str,
              low_level_preact: bool = False) -> XceptionBackbone:
    if isinstance(pretrained_backbone, str):  # a file: read by us and loaded strictly, never silently partly
        backbone = XceptionBackbone(depth, output_stride=output_stride, low_level_preact=low_level_preact)
        load_timm_file(backbone.body, pretrained_backbone, what=f"ImageNet xception{depth}")
        return backbone
    try:
        return XceptionBackbone(depth, output_stride=output_stride, pretrained=bool(pretrained_backbone),
                                low_level_preact=low_level_preact)
    except (OSError, RuntimeError, ValueError) as err:
        if not pretrained_backbone:
            raise
        raise RuntimeError(timm_weights_problem(f"xception{depth}", err)) from err


# timm's aligned Xception weights expect inputs scaled to -1..1 (mean = std = 0.5), as in the TF reference.
@_register("v3+", "Xception-65", normalization="inception", paper_rates=(6, 12, 18),
           paper_macs={16: 54.17, 8: 177.10})
def deeplabv3plus_xception65(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    separable: bool = True, dropout: float = 0.1, align_corners: bool = False, low_level_preact: bool = False,
    pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v3+ on timm's modified aligned Xception-65, separable ASPP and decoder.

    Args:
        align_corners: bilinear resizes as the TF reference's (``True`` for the authors' weights).
        low_level_preact: the decoder reads the stride-4 feature before its ReLU, as the TF reference does.
    """
    backbone = _xception(65, output_stride, pretrained_backbone, low_level_preact)
    return _deeplabv3plus(backbone, num_classes=num_classes, output_stride=output_stride, atrous_rates=atrous_rates,
                          separable=separable, dropout=dropout, align_corners=align_corners)


@_register("v3+", "Xception-71", normalization="inception", paper_rates=(6, 12, 18))
def deeplabv3plus_xception71(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    separable: bool = True, dropout: float = 0.1, align_corners: bool = False, low_level_preact: bool = False,
    pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v3+ on timm's modified aligned Xception-71. See :func:`deeplabv3plus_xception65`."""
    backbone = _xception(71, output_stride, pretrained_backbone, low_level_preact)
    return _deeplabv3plus(backbone, num_classes=num_classes, output_stride=output_stride, atrous_rates=atrous_rates,
                          separable=separable, dropout=dropout, align_corners=align_corners)


@_register("v3+", "MobileNetV2", paper_rates=(6, 12, 18))
def deeplabv3plus_mobilenetv2(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    separable: bool = False, dropout: float = 0.1, align_corners: bool = False, tf_padding: bool = False,
    bn_eps: float = 1e-5, pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v3+ on MobileNetV2: full ASPP (rates 6/12/18 at OS 16) and the decoder on block 3.

    ``align_corners``, ``tf_padding``, ``bn_eps``: as in :func:`deeplabv3_mobilenetv2`.
    """
    backbone = _mobilenetv2(output_stride, bn_eps, tf_padding, pretrained_backbone)
    return _deeplabv3plus(backbone, num_classes=num_classes, output_stride=output_stride, atrous_rates=atrous_rates,
                          separable=separable, dropout=dropout, align_corners=align_corners)


# The TF reference's configuration for MobileNet-v2 (common.py's flags, model.py): no 3x3 ASPP branches
# (atrous_rates=None for mobilenet_v2), separable ASPP and decoder convs (aspp_with_separable_conv and
# decoder_use_separable_conv default to True), 256 ASPP and decoder filters, depth multiplier 1.0. Its own
# default has no decoder (``deeplabv3_mobilenetv2``); this adds the stride-4 decoder (decoder_output_stride=4).
@_register("v3+", "MobileNetV2")
def deeplabv3plus_mobilenetv2_light(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] = (), separable: bool = True,
    dropout: float = 0.1, align_corners: bool = False, tf_padding: bool = False, bn_eps: float = 1e-5,
    pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v3+ on MobileNetV2, light as the TF reference configures it: ASPP with only the 1x1 and
    image-pooling branches, separable decoder convs (5.3 GMACs at 513 px and OS 16, against
    :func:`deeplabv3plus_mobilenetv2`'s 26.9).

    Args:
        atrous_rates: 3x3 ASPP branches to add (separable when ``separable``); none by default.
        separable: atrous separable convs in ASPP and decoder (the reference's default).
        align_corners, tf_padding, bn_eps: as in :func:`deeplabv3_mobilenetv2`.
    """
    backbone = _mobilenetv2(output_stride, bn_eps, tf_padding, pretrained_backbone)
    return _deeplabv3plus(backbone, num_classes=num_classes, output_stride=output_stride,
                          atrous_rates=tuple(atrous_rates), separable=separable, dropout=dropout,
                          align_corners=align_corners)


@_register("v3+", "Xception-41", normalization="inception", paper_rates=(6, 12, 18))
def deeplabv3plus_xception41(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    separable: bool = True, dropout: float = 0.1, align_corners: bool = False, low_level_preact: bool = False,
    pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v3+ on timm's modified aligned Xception-41. See :func:`deeplabv3plus_xception65`."""
    backbone = _xception(41, output_stride, pretrained_backbone, low_level_preact)
    return _deeplabv3plus(backbone, num_classes=num_classes, output_stride=output_stride, atrous_rates=atrous_rates,
                          separable=separable, dropout=dropout, align_corners=align_corners)


# ---------------------------------------------------------------- the TF reference's ResNet-v1 "beta"
# Defaults follow the reference (resnet_v1_beta.py, model.py and common.py's flags): separable ASPP and
# decoder, multi-grid (1, 1, 1), TF resizes and padding, inputs scaled to -1..1 (its
# ``_preprocess_zero_mean_unit_range`` for the beta variants).


def _resnet_beta(depth: int, output_stride: int, multi_grid: Sequence[int], bn_eps: float, tf_padding: bool,
                 pretrained_backbone: bool | str) -> ResNetV1BetaBackbone:
    if pretrained_backbone:
        raise ValueError(f"ResNet-v1-{depth}-beta has no torchvision ImageNet weights; load the TF reference's "
                         f"checkpoint with `deeplab import-tf` or pass weights=")
    return ResNetV1BetaBackbone(depth, output_stride=output_stride, multi_grid=multi_grid, bn_eps=bn_eps,
                                tf_padding=tf_padding)


def _beta_v3plus(depth: int, **kw: Any) -> Segmenter:
    backbone = _resnet_beta(depth, kw.pop("output_stride"), kw.pop("multi_grid"), kw.pop("bn_eps"),
                            kw.pop("tf_padding"), kw.pop("pretrained_backbone"))
    return _deeplabv3plus(backbone, output_stride=backbone.feature_specs["out"].stride, **kw)


def _beta_v3(depth: int, *, num_classes: int, output_stride: int, atrous_rates: Sequence[int],
             multi_grid: Sequence[int], separable: bool, dropout: float, aux_loss: bool, align_corners: bool,
             bn_eps: float, tf_padding: bool, pretrained_backbone: bool | str) -> Segmenter:
    backbone = _resnet_beta(depth, output_stride, multi_grid, bn_eps, tf_padding, pretrained_backbone)
    head = DeepLabV3Head(2048, num_classes, atrous_rates, dropout=dropout, separable=separable,
                         align_corners=align_corners)
    return Segmenter(backbone, head, _aux(backbone, num_classes, aux_loss), num_classes=num_classes,
                     output_stride=output_stride, align_corners=align_corners)


@_register("v3+", "ResNet-50-beta", normalization="inception", paper_rates=(6, 12, 18))
def deeplabv3plus_resnet50_beta(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] = (1, 1, 1), separable: bool = True, dropout: float = 0.1, aux_loss: bool = False,
    align_corners: bool = True, bn_eps: float = 1e-5, tf_padding: bool = True, pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v3+ on the TF reference's ResNet-v1-50 "beta". See :func:`deeplabv3plus_resnet101_beta`."""
    return _beta_v3plus(50, num_classes=num_classes, output_stride=output_stride, atrous_rates=atrous_rates,
                        multi_grid=multi_grid, separable=separable, dropout=dropout, aux_loss=aux_loss,
                        align_corners=align_corners, bn_eps=bn_eps, tf_padding=tf_padding,
                        pretrained_backbone=pretrained_backbone)


@_register("v3+", "ResNet-101-beta", normalization="inception", paper_rates=(6, 12, 18))
def deeplabv3plus_resnet101_beta(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] = (1, 1, 1), separable: bool = True, dropout: float = 0.1, aux_loss: bool = False,
    align_corners: bool = True, bn_eps: float = 1e-5, tf_padding: bool = True, pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v3+ on the TF reference's ResNet-v1-101 "beta" (3-conv stem, strides in each block's last unit).

    Args:
        multi_grid: block 4's unit rates (the reference's default (1, 1, 1); the v3 paper's is (1, 2, 4)).
        separable: atrous separable convs in ASPP and decoder (the reference's default).
        align_corners, bn_eps, tf_padding: the reference's numerics.
        Others as in :func:`deeplabv3plus_resnet101`.
    """
    return _beta_v3plus(101, num_classes=num_classes, output_stride=output_stride, atrous_rates=atrous_rates,
                        multi_grid=multi_grid, separable=separable, dropout=dropout, aux_loss=aux_loss,
                        align_corners=align_corners, bn_eps=bn_eps, tf_padding=tf_padding,
                        pretrained_backbone=pretrained_backbone)


@_register("v3", "ResNet-50-beta", normalization="inception", paper_rates=(6, 12, 18))
def deeplabv3_resnet50_beta(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] = (1, 1, 1), separable: bool = True, dropout: float = 0.1, aux_loss: bool = False,
    align_corners: bool = True, bn_eps: float = 1e-5, tf_padding: bool = True, pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v3 on the TF reference's ResNet-v1-50 "beta". See :func:`deeplabv3plus_resnet101_beta`."""
    return _beta_v3(50, num_classes=num_classes, output_stride=output_stride, atrous_rates=atrous_rates,
                    multi_grid=multi_grid, separable=separable, dropout=dropout, aux_loss=aux_loss,
                    align_corners=align_corners, bn_eps=bn_eps, tf_padding=tf_padding,
                    pretrained_backbone=pretrained_backbone)


@_register("v3", "ResNet-101-beta", normalization="inception", paper_rates=(6, 12, 18))
def deeplabv3_resnet101_beta(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] = (1, 1, 1), separable: bool = True, dropout: float = 0.1, aux_loss: bool = False,
    align_corners: bool = True, bn_eps: float = 1e-5, tf_padding: bool = True, pretrained_backbone: bool | str = False,
) -> Segmenter:
    """DeepLab v3 on the TF reference's ResNet-v1-101 "beta". See :func:`deeplabv3plus_resnet101_beta`."""
    return _beta_v3(101, num_classes=num_classes, output_stride=output_stride, atrous_rates=atrous_rates,
                    multi_grid=multi_grid, separable=separable, dropout=dropout, aux_loss=aux_loss,
                    align_corners=align_corners, bn_eps=bn_eps, tf_padding=tf_padding,
                    pretrained_backbone=pretrained_backbone)


# ---------------------------------------------------------------- timm encoders: HEAD_tu-ENCODER
# Any timm ``features_only`` network under the v3 or v3+ head. The rows are made when a name is first asked
# for (timm has over a thousand models), with the input normalisation of the encoder's pretrained weights.

TIMM_HEADS = ("deeplabv3", "deeplabv3plus")
_TIMM_ENTRIES: dict[str, ModelEntry] = {}


def _timm_entry(head: str, encoder: str) -> ModelEntry:
    name = f"{head}_{TIMM_PREFIX}{encoder}"
    if name in _TIMM_ENTRIES:
        return _TIMM_ENTRIES[name]
    if head not in TIMM_HEADS:
        raise ValueError(f"unknown model {name!r}: a timm encoder goes under one of {', '.join(TIMM_HEADS)} "
                         f"(e.g. deeplabv3plus_{TIMM_PREFIX}{encoder})")
    check_timm_name(encoder)
    entry = ModelEntry(name, "v3+" if head == "deeplabv3plus" else "v3", f"timm {encoder}",
                       _timm_constructor(head, encoder), paper_rates=(6, 12, 18),
                       mean_std=pretrained_normalization(encoder))
    _TIMM_ENTRIES[name] = entry
    return entry


def _timm_constructor(head: str, encoder: str) -> Callable[..., Segmenter]:
    installed = timm_version()

    def construct(
        *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
        multi_grid: Sequence[int] | None = None, separable: bool = False, dropout: float = 0.1, aux_loss: bool = False,
        in_channels: int = 3, encoder: str = encoder, timm_version: str = installed,
        pretrained_backbone: bool | str = False,
    ) -> Segmenter:
        """DeepLab v3 / v3+ on a timm encoder (``features_only``, dilated to the output stride by timm).

        Args:
            output_stride: 8 or 16 where the timm family dilates (timm's ``output_stride``), 32 for any.
            multi_grid: last-stage unit rates (v3's Multi_Grid, e.g. (1, 2, 4)); ``None`` keeps timm's.
            in_channels: input channels (timm's ``in_chans``).
            encoder: the timm model (fixed by the name; recorded in the spec).
            timm_version: the timm the model was built with (recorded in the spec; a warning if it differs).
            pretrained_backbone: not here: timm's ImageNet weights load above the builders
                (:func:`deeplab.models.build_model`, ``deeplab.create_model``).
            Others as in :func:`deeplabv3plus_resnet101`.
        """
        if encoder != construct.encoder:
            raise ValueError(f"{construct.model_name} is built on timm's {construct.encoder}, not {encoder!r}: "
                             f"the encoder is part of the model's name")
        if timm_version != installed:
            warnings.warn(f"{construct.model_name} was built with timm {timm_version}; timm {installed} is installed "
                          f"(a layer that changed between them would not load)", stacklevel=2)
        if pretrained_backbone:
            raise ValueError(f"{construct.model_name}: timm's ImageNet weights load through deeplab.models.build_model "
                             f"or deeplab.create_model, not the registry's builder")
        backbone = TimmEncoder(encoder, output_stride=output_stride, in_channels=in_channels, multi_grid=multi_grid)
        if head == "deeplabv3":
            head_module = DeepLabV3Head(backbone.feature_specs["out"].channels, num_classes, atrous_rates,
                                        dropout=dropout, separable=separable)
            return Segmenter(backbone, head_module, _aux(backbone, num_classes, aux_loss), num_classes=num_classes,
                             output_stride=output_stride)
        if "low_level" not in backbone.feature_specs:
            raise ValueError(f"timm's {encoder} has no stride-4 feature for the v3+ decoder (its features are at "
                             f"strides {backbone.body.feature_info.reduction()}); use deeplabv3_{TIMM_PREFIX}{encoder}")
        return _deeplabv3plus(backbone, num_classes=num_classes, output_stride=output_stride,
                              atrous_rates=atrous_rates, separable=separable, dropout=dropout, aux_loss=aux_loss)

    construct.encoder, construct.model_name = encoder, f"{head}_{TIMM_PREFIX}{encoder}"
    construct.__name__ = construct.model_name
    return construct
