"""One keyword-only builder per published DeepLab variant, and a name registry for the CLI."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn
from torchvision import models as tvm

from .backbones import MobileNetV2Backbone, ResNetBackbone, VGG16Backbone, XceptionBackbone
from .heads import AuxHead, DeepLabV2Head, DeepLabV3Head, DeepLabV3PlusHead, LargeFOVHead
from .segmenter import Segmenter
from .weights import WeightsLike, is_torchvision_deeplab, load_backbone_weights, load_weights, read_state_dict

# ImageNet weights published by torchvision, fetched through torch.hub's download path and cache.
IMAGENET_URLS = {
    "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1.url,
    "resnet101": tvm.ResNet101_Weights.IMAGENET1K_V1.url,
    "vgg16": tvm.VGG16_Weights.IMAGENET1K_V1.url,
    "mobilenetv2": tvm.MobileNet_V2_Weights.IMAGENET1K_V1.url,
}


@dataclass(frozen=True)
class ModelEntry:
    """Registry row: what the CLI lists and what the model table compares against."""

    name: str
    version: str
    backbone: str
    builder: Callable[..., Segmenter]
    paper_macs: Mapping[int, float] = field(default_factory=dict)  # output stride -> GMACs at 513x513


_MODELS: dict[str, ModelEntry] = {}


def _register(version: str, backbone: str, paper_macs: Mapping[int, float] | None = None):
    def wrap(builder: Callable[..., Segmenter]) -> Callable[..., Segmenter]:
        name = builder.__name__
        _MODELS[name] = ModelEntry(name, version, backbone, builder, dict(paper_macs or {}))
        return builder

    return wrap


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_MODELS)


def model_entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, **kwargs) -> Segmenter:
    """Builds a registered model by name; keyword arguments go to its typed builder."""
    return model_entry(name).builder(**kwargs)


def scaled_rates(base: Sequence[int], base_stride: int, output_stride: int) -> tuple[int, ...]:
    """The papers couple atrous rates to the output stride: halve the stride, double the rates."""
    return tuple(max(1, rate * base_stride // output_stride) for rate in base)


def _finish(model: Segmenter, weights: WeightsLike | None) -> Segmenter:
    if weights is not None:
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


@_register("v1", "VGG-16")
def deeplabv1_vgg16(
    *, num_classes: int = 21, output_stride: int = 8, atrous_rate: int | None = None,
    pretrained_backbone: bool | str = False, weights: WeightsLike | None = None,
) -> Segmenter:
    """DeepLab v1 LargeFOV: atrous VGG-16 (OS 8), fc6 3x3 rate 12 with 1024 channels, fc7, fc8."""
    rate = atrous_rate or scaled_rates((12,), 8, output_stride)[0]
    backbone = _vgg(output_stride, pretrained_backbone)
    head = LargeFOVHead(512, num_classes, rate=rate)
    return _finish(Segmenter(backbone, head, num_classes=num_classes, output_stride=output_stride), weights)


@_register("v2", "VGG-16")
def deeplabv2_vgg16(
    *, num_classes: int = 21, output_stride: int = 8, atrous_rates: Sequence[int] | None = None,
    pretrained_backbone: bool | str = False, weights: WeightsLike | None = None,
) -> Segmenter:
    """DeepLab v2 ASPP-L on VGG-16: four fc6-fc7-fc8 branches at rates 6/12/18/24 (OS 8), summed."""
    rates = tuple(atrous_rates) if atrous_rates else scaled_rates((6, 12, 18, 24), 8, output_stride)
    backbone = _vgg(output_stride, pretrained_backbone)
    head = DeepLabV2Head(512, num_classes, rates, fc_layers=True)
    return _finish(Segmenter(backbone, head, num_classes=num_classes, output_stride=output_stride), weights)


@_register("v2", "ResNet-101")
def deeplabv2_resnet101(
    *, num_classes: int = 21, output_stride: int = 8, atrous_rates: Sequence[int] | None = None,
    pretrained_backbone: bool | str = False, weights: WeightsLike | None = None,
) -> Segmenter:
    """DeepLab v2 on ResNet-101 (OS 8): four 3x3 atrous classifiers at rates 6/12/18/24, summed."""
    rates = tuple(atrous_rates) if atrous_rates else scaled_rates((6, 12, 18, 24), 8, output_stride)
    backbone = _resnet(101, output_stride, None, pretrained_backbone)
    head = DeepLabV2Head(2048, num_classes, rates, fc_layers=False)
    return _finish(Segmenter(backbone, head, num_classes=num_classes, output_stride=output_stride), weights)


# ---------------------------------------------------------------- v3


def _deeplabv3_resnet(
    depth: int, *, num_classes: int, output_stride: int, atrous_rates: Sequence[int] | None,
    multi_grid: Sequence[int] | None, head_conv: bool, aux_loss: bool, pretrained_backbone: bool | str,
    weights: WeightsLike | None,
) -> Segmenter:
    if weights is not None:
        weights = read_state_dict(weights)
        if is_torchvision_deeplab(weights):
            # torchvision's layout: no multi-grid, one extra 3x3 conv after ASPP, dropout 0.5.
            multi_grid, head_conv = None, True
    rates = tuple(atrous_rates) if atrous_rates else scaled_rates((6, 12, 18), 16, output_stride)
    backbone = _resnet(depth, output_stride, multi_grid, pretrained_backbone)
    head = DeepLabV3Head(2048, num_classes, rates, extra_conv=head_conv, dropout=0.5 if head_conv else 0.1)
    model = Segmenter(backbone, head, _aux(backbone, num_classes, aux_loss), num_classes=num_classes,
                      output_stride=output_stride)
    return _finish(model, weights)


@_register("v3", "ResNet-50")
def deeplabv3_resnet50(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] | None = (1, 2, 4), head_conv: bool = False, aux_loss: bool = False,
    pretrained_backbone: bool | str = False, weights: WeightsLike | None = None,
) -> Segmenter:
    """DeepLab v3 on ResNet-50. See :func:`deeplabv3_resnet101` for the arguments."""
    return _deeplabv3_resnet(
        50, num_classes=num_classes, output_stride=output_stride, atrous_rates=atrous_rates,
        multi_grid=multi_grid, head_conv=head_conv, aux_loss=aux_loss,
        pretrained_backbone=pretrained_backbone, weights=weights,
    )


@_register("v3", "ResNet-101", paper_macs={16: 81.02, 8: 276.18})
def deeplabv3_resnet101(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] | None = (1, 2, 4), head_conv: bool = False, aux_loss: bool = False,
    pretrained_backbone: bool | str = False, weights: WeightsLike | None = None,
) -> Segmenter:
    """DeepLab v3: dilated ResNet-101 with multi-grid block4, ASPP with image pooling, 1x1 classifier.

    Args:
        num_classes: output classes.
        output_stride: 8, 16 (default, the paper's training setting) or 32.
        atrous_rates: ASPP rates; default (6, 12, 18) at OS 16, scaled with the output stride.
        multi_grid: block4 unit rates (1, 2, 4) as in the paper; ``None`` for torchvision's layout.
        head_conv: torchvision's extra 3x3 conv after ASPP.
        aux_loss: add the auxiliary FCN head on stage 3 (``forward_with_aux``).
        pretrained_backbone: True for torchvision's ImageNet weights, or a local path / URL.
        weights: a state dict, a path to our checkpoint, or torchvision's ``deeplabv3_resnet*``
            state dict (which implies ``head_conv=True`` and ``multi_grid=None``).
    """
    return _deeplabv3_resnet(
        101, num_classes=num_classes, output_stride=output_stride, atrous_rates=atrous_rates,
        multi_grid=multi_grid, head_conv=head_conv, aux_loss=aux_loss,
        pretrained_backbone=pretrained_backbone, weights=weights,
    )


@_register("v3", "MobileNetV2", paper_macs={16: 2.75})
def deeplabv3_mobilenetv2(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] = (),
    pretrained_backbone: bool | str = False, weights: WeightsLike | None = None,
) -> Segmenter:
    """DeepLab v3 on MobileNetV2 as in the TF reference: ASPP with only the 1x1 and image-pooling
    branches (pass ``atrous_rates`` to add 3x3 atrous branches)."""
    backbone = MobileNetV2Backbone(output_stride=output_stride)
    _pretrain(backbone, "mobilenetv2", pretrained_backbone)
    head = DeepLabV3Head(320, num_classes, tuple(atrous_rates))
    return _finish(Segmenter(backbone, head, num_classes=num_classes, output_stride=output_stride), weights)


# ---------------------------------------------------------------- v3+


def _deeplabv3plus(
    backbone: nn.Module, *, num_classes: int, output_stride: int, atrous_rates: Sequence[int] | None,
    separable: bool, aux_loss: bool = False, weights: WeightsLike | None,
) -> Segmenter:
    rates = tuple(atrous_rates) if atrous_rates else scaled_rates((6, 12, 18), 16, output_stride)
    specs = backbone.feature_specs
    head = DeepLabV3PlusHead(specs["out"].channels, specs["low_level"].channels, num_classes, rates,
                             separable=separable)
    model = Segmenter(backbone, head, _aux(backbone, num_classes, aux_loss), num_classes=num_classes,
                      output_stride=output_stride)
    return _finish(model, weights)


@_register("v3+", "ResNet-50")
def deeplabv3plus_resnet50(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] | None = (1, 2, 4), separable: bool = False, aux_loss: bool = False,
    pretrained_backbone: bool | str = False, weights: WeightsLike | None = None,
) -> Segmenter:
    """DeepLab v3+ on ResNet-50. See :func:`deeplabv3plus_resnet101` for the arguments."""
    backbone = _resnet(50, output_stride, multi_grid, pretrained_backbone)
    return _deeplabv3plus(backbone, num_classes=num_classes, output_stride=output_stride,
                          atrous_rates=atrous_rates, separable=separable, aux_loss=aux_loss, weights=weights)


@_register("v3+", "ResNet-101", paper_macs={16: 101.28, 8: 297.92})
def deeplabv3plus_resnet101(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] | None = (1, 2, 4), separable: bool = False, aux_loss: bool = False,
    pretrained_backbone: bool | str = False, weights: WeightsLike | None = None,
) -> Segmenter:
    """DeepLab v3+: the v3 encoder plus a decoder on the stride-4 feature (layer1).

    Args:
        separable: atrous separable convs in ASPP and decoder (plain convs by default for ResNet).
        Others as in :func:`deeplabv3_resnet101`.
    """
    backbone = _resnet(101, output_stride, multi_grid, pretrained_backbone)
    return _deeplabv3plus(backbone, num_classes=num_classes, output_stride=output_stride,
                          atrous_rates=atrous_rates, separable=separable, aux_loss=aux_loss, weights=weights)


def _xception(depth: int, output_stride: int, pretrained_backbone: bool | str) -> XceptionBackbone:
    weights_file = pretrained_backbone if isinstance(pretrained_backbone, str) else None
    try:
        return XceptionBackbone(depth, output_stride=output_stride, pretrained=bool(pretrained_backbone),
                                weights_file=weights_file)
    except (OSError, RuntimeError, ValueError) as err:
        if not pretrained_backbone:
            raise
        raise RuntimeError(
            f"could not load timm's ImageNet xception{depth} weights ({type(err).__name__}: {err}). "
            f"Without internet, download them elsewhere and pass pretrained_backbone='/path/to/file'."
        ) from err


@_register("v3+", "Xception-65", paper_macs={16: 54.17, 8: 177.10})
def deeplabv3plus_xception65(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    separable: bool = True, pretrained_backbone: bool | str = False, weights: WeightsLike | None = None,
) -> Segmenter:
    """DeepLab v3+ on timm's modified aligned Xception-65, separable ASPP and decoder."""
    backbone = _xception(65, output_stride, pretrained_backbone)
    return _deeplabv3plus(backbone, num_classes=num_classes, output_stride=output_stride,
                          atrous_rates=atrous_rates, separable=separable, weights=weights)


@_register("v3+", "Xception-71")
def deeplabv3plus_xception71(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    separable: bool = True, pretrained_backbone: bool | str = False, weights: WeightsLike | None = None,
) -> Segmenter:
    """DeepLab v3+ on timm's modified aligned Xception-71, separable ASPP and decoder."""
    backbone = _xception(71, output_stride, pretrained_backbone)
    return _deeplabv3plus(backbone, num_classes=num_classes, output_stride=output_stride,
                          atrous_rates=atrous_rates, separable=separable, weights=weights)


@_register("v3+", "MobileNetV2")
def deeplabv3plus_mobilenetv2(
    *, num_classes: int = 21, output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
    separable: bool = False, pretrained_backbone: bool | str = False, weights: WeightsLike | None = None,
) -> Segmenter:
    """DeepLab v3+ on MobileNetV2: full ASPP (rates 6/12/18 at OS 16) and the decoder on block 3."""
    backbone = MobileNetV2Backbone(output_stride=output_stride)
    _pretrain(backbone, "mobilenetv2", pretrained_backbone)
    return _deeplabv3plus(backbone, num_classes=num_classes, output_stride=output_stride,
                          atrous_rates=atrous_rates, separable=separable, weights=weights)
