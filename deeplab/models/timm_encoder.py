"""Any timm network as a DeepLab backbone: timm's ``features_only`` model, dilated to the output stride.

timm applies ``output_stride`` when it builds the network (strides past the target become dilation), for
the families whose constructor takes it (ResNet, ConvNeXt, EfficientNet, MobileNetV3/V4, RegNet, NFNet,
ByobNet, ...); others are refused at output stride 8 and 16 and built at 32. The encoder answers with
our named features: ``"low_level"`` (the stride-4 feature for the v3+ decoder), ``"aux"`` (the feature
before the last, for the auxiliary head) and ``"out"`` (at the output stride), channels and strides
taken from timm's ``feature_info``. Features that timm returns channels-last (N x H x W x C, e.g.
MambaOut) are turned to N x C x H x W here, so heads never see the difference.

timm is imported inside functions: only the ``tu-`` models need it, and importing it costs a second.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from ..torchfile import fetch_torch_file
from .backbones import FeatureSpec, check_output_stride
from .weights import load_backbone_state

TIMM_PREFIX = "tu-"
OUTPUT_STRIDES = (8, 16, 32)


def timm_version() -> str:
    import timm

    return str(timm.__version__)


def check_timm_name(encoder: str) -> None:
    """Raises ``ValueError`` unless timm has a model called ``encoder`` (a pretrained tag may follow a dot)."""
    import timm

    if not timm.is_model(encoder):
        close = timm.list_models(f"*{encoder.split('.')[0][:6]}*")[:8]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise ValueError(f"timm {timm.__version__} has no model {encoder!r}{hint} "
                         f"(`deeplab models --encoders PATTERN` lists the ones that fit)")


def create_features_model(encoder: str, *, output_stride: int, in_channels: int = 3, pretrained: bool = False,
                          **timm_options) -> nn.Module:
    """timm's ``features_only`` network at ``output_stride``; a clear ``ValueError`` where timm cannot give it.

    ``timm_options`` pass through to ``timm.create_model`` unchanged (the one pass-through to timm).
    """
    import timm

    check_output_stride(f"timm encoder {encoder}", output_stride, OUTPUT_STRIDES)
    kwargs = dict(features_only=True, pretrained=pretrained, in_chans=in_channels, **timm_options)
    if output_stride != 32:  # many timm constructors take no output_stride: ask only when it matters
        kwargs["output_stride"] = output_stride
    try:
        body = timm.create_model(encoder, **kwargs)
    except TypeError as err:
        if "output_stride" not in str(err):
            raise
        raise ValueError(f"timm's {encoder} cannot be dilated: its constructor takes no output_stride, so it gives "
                         f"only output_stride=32 (asked for {output_stride})") from err
    except RuntimeError as err:
        if "features_only" not in str(err):
            raise
        raise ValueError(f"timm's {encoder} has no features_only form, so it cannot be a DeepLab encoder") from err
    reductions = body.feature_info.reduction()
    if max(reductions) > output_stride:  # a constructor that swallowed output_stride without dilating
        raise ValueError(f"timm's {encoder} ignored output_stride={output_stride}: its last feature is at stride "
                         f"{max(reductions)}; use output_stride=32 with it")
    return body


def timm_key_rename(state: Mapping[str, object]) -> Callable[[str], str]:
    """Maps a key of a timm feature wrapper to the key the classification model's state dict has.

    ``FeatureListNet`` flattens top-level ``nn.Sequential`` children (``stages.0`` becomes ``stages_0``); weights
    files hold the classification model's names. A key the file has as it is stays as it is.
    """

    def rename(key: str) -> str:
        if key in state:
            return key
        head, _, rest = key.partition(".")
        parent, _, child = head.rpartition("_")
        return f"{parent}.{child}.{rest}" if parent and rest else key

    return rename


def load_timm_file(body: nn.Module, source: str, *, what: str) -> None:
    """Loads a timm classification model's weights file (path or URL) into its ``features_only`` network, strictly
    (:func:`deeplab.models.weights.load_backbone_state`: the classifier is left out, every other tensor must fit)."""
    state = fetch_torch_file(source, what=f"{what} weights", hint="Without internet, download that file elsewhere "
                             "and pass its local path as pretrained_backbone='/path/to/model.safetensors'.")
    load_backbone_state(body, state, what=what, source=source, rename=timm_key_rename(state))


class TimmEncoder(nn.Module):
    """A timm ``features_only`` network returning DeepLab's named features.

    Args:
        encoder: a timm model name (``convnext_tiny``, ``efficientnet_b3``, ``regnety_016``, ...).
        output_stride: 8, 16 (by dilation, where the timm family supports it) or 32.
        in_channels: input channels (timm's ``in_chans``; timm adapts pretrained first-conv weights).
        multi_grid: unit rates of the last stage (DeepLab v3's Multi_Grid), applied to its dilated convs;
            ``None`` keeps timm's dilation. Needs output stride 8 or 16.

    Random weights: ImageNet's come from :mod:`deeplab.models.timm_weights`, above the builders.
    """

    def __init__(self, encoder: str, *, output_stride: int = 16, in_channels: int = 3,
                 multi_grid: Sequence[int] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.body = create_features_model(encoder, output_stride=output_stride, in_channels=in_channels)
        info = self.body.feature_info
        reductions, channels = info.reduction(), info.channels()
        # timm's feature wrappers that return N x H x W x C say so in ``output_fmt``; the rest are N x C x H x W.
        self.channels_last = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        self._low_level = reductions.index(4) if 4 in reductions else None
        self.feature_specs = {"out": FeatureSpec(channels[-1], reductions[-1])}
        if self._low_level is not None:
            self.feature_specs["low_level"] = FeatureSpec(channels[self._low_level], 4)
        if len(channels) > 1:
            self.feature_specs["aux"] = FeatureSpec(channels[-2], reductions[-2])
        if multi_grid is not None:
            apply_multi_grid(self.body, info.module_name()[-1], multi_grid, encoder)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.body(x)
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        named = {"out": features[-1]}
        if self._low_level is not None:
            named["low_level"] = features[self._low_level]
        if len(features) > 1:
            named["aux"] = features[-2]
        return named


def apply_multi_grid(body: nn.Module, stage_name: str, grid: Sequence[int], encoder: str) -> None:
    """Multi-grid on the last stage: unit ``i``'s spatial convs get the stage's rate times ``grid[i % len]``.

    timm has no multi-grid argument, so the rates are set on the built stage, before any weights load (only
    dilation and padding change, never a shape), as our ResNet does when it builds: every unit of the stage,
    the first included, takes its rate from the grid.
    """
    stage = _stage_module(body, stage_name)
    units = [] if stage is None else [u for u in _units(stage) if _spatial_convs(u)]
    convs = [conv for unit in units for conv in _spatial_convs(unit)]
    rate = max((conv.dilation[0] for conv in convs), default=1)
    if rate == 1 or any(isinstance(conv.padding, str) or type(conv) is not nn.Conv2d for conv in convs):
        raise ValueError(f"multi_grid needs the last stage of {encoder} dilated (output_stride 8 or 16) with plain "
                         f"convs; set multi_grid=None for this encoder")
    for index, unit in enumerate(units):
        for conv in _spatial_convs(unit):
            dilation = rate * grid[index % len(grid)]
            conv.dilation = (dilation, dilation)
            conv.padding = tuple((k - 1) * dilation // 2 for k in conv.kernel_size)


def _stage_module(body: nn.Module, name: str) -> nn.Module | None:
    for candidate in (name, name.replace(".", "_", 1)):  # FeatureListNet flattens "stages.3" to "stages_3"
        try:
            return body.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def _units(stage: nn.Module) -> list[nn.Module]:
    """The stage's residual units (ConvNeXt-like stages keep them in ``blocks``, beside a downsample)."""
    blocks = getattr(stage, "blocks", None)
    return list((blocks if isinstance(blocks, nn.Sequential) else stage).children())


def _spatial_convs(unit: nn.Module) -> list[nn.Conv2d]:
    """Stride-1 convs with a kernel over 1x1: the ones dilation applies to."""
    return [m for m in unit.modules() if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1 and max(m.stride) == 1]


def pretrained_normalization(encoder: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) of the encoder's default pretrained weights, from timm's pretrained config; None if it has none."""
    import timm

    cfg = timm.get_pretrained_cfg(encoder)
    if cfg is None or cfg.mean is None or cfg.std is None:
        return None
    return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)


def pretrained_location(encoder: str) -> str:
    """Where timm looks for the encoder's ImageNet weights: the Hub repo and file in the Hugging Face cache,
    or the URL and file in torch.hub's checkpoint folder, said so that a person can put the file there."""
    import os

    import timm
    import torch
    from huggingface_hub.file_download import repo_folder_name

    from ..hub import cache_folder

    cfg = timm.get_pretrained_cfg(encoder)
    if cfg is None:
        return f"timm has no pretrained weights for {encoder}"
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id.partition("@")[0]
        filename = cfg.hf_hub_filename or "model.safetensors"
        folder = os.path.join(cache_folder(), repo_folder_name(repo_id=repo, repo_type="model"))
        return (f"timm reads them from the Hugging Face Hub repo {repo} (file {filename}, or pytorch_model.bin), "
                f"kept in the Hub cache at {folder}. On a machine with internet run `hf download {repo}` and copy "
                f"{folder} into this machine's Hub cache (HF_HUB_CACHE; set HF_HUB_OFFLINE=1 to read it without "
                f"asking the network)")
    if cfg.url:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(cfg.url))
        return f"timm reads them from {cfg.url}, kept by torch.hub at {path}: download that file there"
    return f"timm's pretrained config for {encoder} names no file"


def timm_weights_problem(encoder: str, err: Exception) -> str:
    """The message for timm's ImageNet weights that could not be read: what failed, and where the file goes."""
    text = str(err).strip()
    first_line = text.splitlines()[0][:300] if text else ""
    return (f"could not load timm's ImageNet weights for {encoder} ({type(err).__name__}: {first_line}). "
            f"{pretrained_location(encoder)}; or pass pretrained_backbone='/path/to/model.safetensors'.")


@dataclass(frozen=True)
class EncoderRow:
    """A timm model as a DeepLab encoder: its name, timm family (module), whether it dilates to OS 8/16 and has
    ImageNet weights."""

    name: str
    family: str
    dilates: bool
    pretrained: bool


def encoder_rows(pattern: str = "*") -> list[EncoderRow]:
    """The timm models matching ``pattern`` (``fnmatch``), with their output-stride support.

    A family (timm module) dilates when one of its models builds at output stride 8 with its features there;
    that model is built on the meta device, once per family (building all 1,300 would take minutes). A family
    whose constructors take no ``output_stride`` is not built at all.
    """
    import timm
    from timm.models import get_arch_name, is_model_pretrained

    names = timm.list_models(pattern)
    families: dict[str, list[str]] = {}
    for name in names:
        families.setdefault(_family(name), []).append(name)
    dilates = {family: _family_dilates(family, models) for family, models in families.items()}
    return [EncoderRow(name, _family(name), dilates[_family(name)], is_model_pretrained(get_arch_name(name)))
            for name in names]


def _family(name: str) -> str:
    from timm.models import model_entrypoint

    return model_entrypoint(name).__module__.rsplit(".", 1)[-1]


def _family_dilates(family: str, models: list[str]) -> bool:
    import importlib
    import inspect

    import torch

    module = importlib.import_module(f"timm.models.{family}")
    takes_stride = any(
        inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__
        and "output_stride" in inspect.signature(obj.__init__).parameters for obj in vars(module).values()
    )
    if not takes_stride:
        return False
    probe = min(models, key=lambda name: (len(name), name))  # the short names are the small base models
    try:
        with torch.device("meta"):
            body = create_features_model(probe, output_stride=8)
    except Exception:  # noqa: BLE001 - any failure means "not at OS 8", which is what the listing says
        return False
    return max(body.feature_info.reduction()) == 8
