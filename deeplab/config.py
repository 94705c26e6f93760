"""Run configuration: dataclasses, with YAML as their file format and typed ``section.key=value`` overrides."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


# Binary and multilabel models: a pixel holds a class where its sigmoid probability exceeds this (eval.threshold's
# default, and predict's and serve's where the run does not record one).
DEFAULT_THRESHOLD = 0.5


@dataclass
class ModelConfig:
    """The model to build. Every architecture option defaults to ``None``: "the model's own default"
    (the builder's, or what ``weights`` imply). A key the chosen model does not take is an error."""

    name: str = "deeplabv3plus_mobilenetv2"
    output_stride: int | None = None  # None: 16 for v3/v3+, 8 for v1/v2 and for torchvision's weights
    atrous_rates: list[int] | None = None  # ASPP rates; None: the paper's rates for the output stride
    atrous_rate: int | None = None  # v1 LargeFOV's fc6 rate (12 at OS 8)
    multi_grid: list[int] | None = None  # ResNet block4 unit rates, (1, 2, 4) in the v3 paper
    separable: bool | None = None  # atrous separable convs in ASPP and decoder (v3+)
    head_conv: bool | None = None  # torchvision's extra 3x3 conv after ASPP (v3 ResNet)
    dropout: float | None = None  # head dropout; 0 turns it off
    aux_loss: bool | None = None  # auxiliary FCN head on ResNet stage 3
    multiscale_features: bool | None = None  # v1 DeepLab-MSc: MLPs on the image and pool1-4, concatenated before fc8
    msc_scales: list[float] | None = None  # v2 multi-scale inputs fused by max, e.g. [1.0, 0.75, 0.5]; [] turns off
    mean: list[float] | None = None  # input normalisation; None: what the backbone's weights expect
    std: list[float] | None = None
    pretrained_backbone: bool | str = False  # True: torchvision/timm ImageNet weights; or a local path / URL
    weights: str | None = None  # initial weights: a checkpoint, torchvision's DeepLabV3 state dict, or a name
    task: str | None = None  # multiclass (softmax; default) | binary (one logit) | multilabel (a sigmoid per class)
    in_channels: int | None = None  # input image channels (default 3); mean/std then need one value per channel


@dataclass
class DataConfig:
    name: str = "demo"  # demo | folder | voc | voc_aug | cityscapes | ade20k
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    crop_size: int = 513
    scale_min: float = 0.5
    scale_max: float = 2.0
    scale_step: float = 0.25  # the recipe's discrete scales 0.5, 0.75, ..., 2.0; 0 = continuous
    hflip: bool = True
    num_classes: int | None = None  # folder datasets without classes.txt
    ignore_index: int = 255
    val_ratio: float = 0.2  # folder datasets without splits/
    skip_bad: bool = False  # skip bad pairs with a warning instead of failing
    verify: bool = True  # standard datasets: decode every file of both splits at start (cached per file)
    image_size: int = 128  # demo dataset
    num_images: int | None = None  # demo dataset: images per split (None: its defaults)
    num_workers: int = 2
    # Your own data (folder datasets; docs/data.md): stored mask value -> class id, applied on load, e.g. {255: 1}
    label_map: dict[int, int] | None = None
    max_value: float | None = None  # image value read as 1.0; None: 255 for 8-bit, 65535 for 16-bit, float as is


@dataclass
class TrainConfig:
    iterations: int = 30000
    batch_size: int = 16  # the global batch: split evenly over the processes of a distributed run
    lr: float = 0.007
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    warmup_iterations: int = 0
    backbone_lr_mult: float = 1.0
    aux_weight: float = 0.4
    freeze_bn: bool = False
    sync_bn: bool | None = None  # BatchNorm over the global batch; None: on when there are several processes
    amp: str = "off"  # off | bf16 | fp16 (fp16 on CUDA only, with a gradient scaler)
    channels_last: bool = False  # NHWC memory format (faster convolutions with AMP on recent GPUs)
    compile: bool = False  # torch.compile the training module
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: each process its LOCAL_RANK's GPU)
    seed: int = 0
    run_dir: str = "runs/default"
    eval_every: int = 1000
    eval_protocol: str = "fast"  # fast: one scale, no flip, training output stride | eval: the eval section
    log_every: int = 10
    progress: bool = True
    # ce | bce | focal | dice | tversky | lovasz, "ce+dice", or a weighted list with options, e.g.
    # [{name: ce, weight: 1, top_k_percent_pixels: 0.25}, {name: dice, weight: 1}]; see docs/losses.md
    loss: str | list[str | dict[str, Any]] = "ce"
    class_weights: list[float] | str | None = None  # ce/bce pixel weights per class, or "auto" (median frequency)


@dataclass
class EvalConfig:
    output_stride: int | None = 8  # None: the training output stride
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    window: int | None = None  # sliding-window side in pixels for large images
    pad_to: list[int] | None = None  # [h, w]: pad each image (bottom/right) with the mean pixel, crop the scores back
    batch_size: int = 1
    crf: bool = False  # DenseCRF post-processing (v1/v2); needs the extra: pip install 'deeplab[crf]'
    crf_iterations: int | None = None  # mean-field iterations; None: deeplab.postprocess.CRFParams' default (10)
    crf_w1: float | None = None  # appearance kernel weight; None: the default (4), see `deeplab crf-tune`
    crf_sigma_alpha: float | None = None  # its position width in pixels (default 121)
    crf_sigma_beta: float | None = None  # its colour width, 0..255 RGB (default 5)
    crf_w2: float | None = None  # smoothness kernel weight (default 3, fixed in the papers)
    crf_sigma_gamma: float | None = None  # its position width in pixels (default 3, fixed in the papers)
    crf_workers: int | None = None  # CRF processes; None: one per CPU core
    # The TF reference's resize before padding (its min_resize_value / max_resize_value / resize_factor flags; the
    # zoo's ADE20K: 513 / 513 / 16, longer side 513): the image bilinear (align_corners), the label nearest.
    min_resize_value: int | None = None
    max_resize_value: int | None = None
    resize_factor: int | None = None
    threshold: float = DEFAULT_THRESHOLD  # binary and multilabel models: foreground where the sigmoid exceeds it


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fields(section: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(section)}


def _hints(section: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(section))


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Checks ``value`` against a field's type (int, float, bool, str, lists, optionals and unions)."""
    if hint is Any:
        return value  # checked by whoever reads it (e.g. deeplab.losses for train.loss's options)
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if typing.get_origin(option) is dict and isinstance(value, dict):
            key_hint, value_hint = typing.get_args(option)
            return {coerce(k, key_hint, key): coerce(v, value_hint, key) for k, v in value.items()}
        if typing.get_origin(option) is list and isinstance(value, list | tuple):
            (item,) = typing.get_args(option)
            return [coerce(v, item, key) for v in value]
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if option is str and isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}")


def _set(config: Config, key: str, value: Any) -> None:
    parts = key.split(".")
    sections = _fields(config)
    if len(parts) != 2 or parts[0] not in sections:
        raise ConfigError(f"unknown config key {key!r}; keys look like section.name with section one of: "
                          f"{', '.join(sections)}")
    section = getattr(config, parts[0])
    if parts[1] not in _fields(section):
        raise ConfigError(f"unknown key {key!r}; valid keys in '{parts[0]}': {', '.join(_fields(section))}")
    setattr(section, parts[1], coerce(value, _hints(section)[parts[1]], key))


def from_dict(data: dict[str, Any], *, base: Config | None = None) -> Config:
    """A config from nested dicts (unknown sections or keys are errors)."""
    config = base or Config()
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"section {section!r} must be a mapping of keys, got {values!r}")
        for key, value in values.items():
            _set(config, f"{section}.{key}", value)
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Reads a YAML file (or starts from the defaults) and applies ``section.key=value`` overrides."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        try:
            config = from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err
    return apply_overrides(config, overrides)


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    for text in overrides:
        _set(config, *parse_override(text))
    return config


def save_config(config: Config, path: str | Path) -> None:
    from .imageio import atomic_write

    with atomic_write(path, "w") as handle:
        yaml.safe_dump(config.to_dict(), handle, sort_keys=False)
