"""The one place where a file or a name becomes a model.

A *model source* is a training checkpoint (format 1 or 2), an export (ONNX, TorchScript), a TensorFlow
DeepLab checkpoint, or a published weights name. :func:`read_model` reads and identifies it once and
returns a :class:`ModelFile`: its :class:`ModelCard` (spec, classes, palette, normalisation, precision,
format, the training config) and ``open()``, which gives the runner (an ``nn.Module`` or, for ONNX, a
tensor -> tensor function) on a device, optionally at another output stride. Plain state dicts and
``.safetensors`` files say nothing about the architecture: they are weights for :func:`create_model`.

Every ``torch.save`` file is read by :mod:`deeplab.torchfile` (``weights_only=True``); export runners come
from :mod:`deeplab.deploy.runners`. Writing checkpoints is the training engine's job
(``deeplab.engine.checkpoint``), writing exports the exporter's (``deeplab.deploy.export``).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .classes import dataset_classes
from .config import Config, from_dict
from .constants import IMAGENET_MEAN, IMAGENET_STD, Colour
from .deploy.onnxfile import METADATA_KEY
from .deploy.runners import OnnxRunner, load_torchscript, require_onnx
from .hub import (
    CONFIG_NAME,
    PREPROCESSOR_NAME,
    WEIGHTS_NAME,
    HubFileMissing,
    HubName,
    hub_file,
    looks_like_repo_id,
    missing_file_message,
    parse_hub_name,
)
from .hubfolder import is_pretrained_config
from .models import ModelSpec, Segmenter, build_model, build_with_weights, resolve_spec
from .models.channels import adapt_input_weight, adaptation_rule, input_convolutions
from .models.pretrained import fetch_published
from .models.published import PUBLISHED_WEIGHTS, published_weights
from .models.weights import weights_and_implied
from .torchfile import read_torch_file

CHECKPOINT_FORMAT = "deeplab-checkpoint-2"
LEGACY_CHECKPOINT_FORMAT = "deeplab-checkpoint-1"
EXPORT_FORMAT = "deeplab-export-1"

Runner = nn.Module | Callable[[Tensor], Tensor]
WeightsLike = str | Path | Mapping[str, Tensor]

# Format 1 (deeplab 0.1.0) stored no spec: the config's model section named the builder and set a few
# keys (output_stride, atrous_rates, aux_loss), the builder's defaults of that release did the rest, and
# every model was fed ImageNet-normalised images. Those defaults are pinned here, so a later change of
# a default cannot change what an old file rebuilds. The one choice that release inferred from the
# weights, torchvision's head layout (a fine-tuned torchvision model), is recognised by its keys.
_FORMAT1_DEFAULTS: dict[str, dict[str, Any]] = {
    "deeplabv1_vgg16": {"dropout": 0.5},
    "deeplabv2_vgg16": {"dropout": 0.5},
    "deeplabv2_resnet101": {},
    "deeplabv3_resnet50": {"multi_grid": (1, 2, 4), "head_conv": False, "dropout": 0.1},
    "deeplabv3_resnet101": {"multi_grid": (1, 2, 4), "head_conv": False, "dropout": 0.1},
    "deeplabv3_mobilenetv2": {"atrous_rates": (), "dropout": 0.1},
    "deeplabv3plus_resnet50": {"multi_grid": (1, 2, 4), "separable": False, "dropout": 0.1},
    "deeplabv3plus_resnet101": {"multi_grid": (1, 2, 4), "separable": False, "dropout": 0.1},
    "deeplabv3plus_xception65": {"separable": True, "dropout": 0.1},
    "deeplabv3plus_xception71": {"separable": True, "dropout": 0.1},
    "deeplabv3plus_mobilenetv2": {"separable": False, "dropout": 0.1},
}
_TORCHVISION_HEAD_KEY = "head.1.0.weight"  # the extra 3x3 conv of torchvision's DeepLabV3 head, renamed


@dataclass
class ModelCard:
    """What a model source says about its model besides the weights: enough to predict and evaluate with it.

    Attributes:
        spec: the model's spec (for an export, ``output_stride`` is the one it was exported at).
        classes: class names.
        palette: one RGB colour per class.
        format: ``checkpoint``, ``onnx``, ``torchscript``, ``tf-checkpoint``, ``published``, ``pretrained`` (a
            ``save_pretrained`` folder or Hub repo) or ``transformers`` (a transformers DeepLab checkpoint).
        precision: the arithmetic baked into an export (``fp32``, ``bf16``, ``int8``); ``fp32`` for weights.
        config: the training run's config as a plain dict (names the dataset for ``deeplab eval``), if known.
        source: the path or name it was read from.
        extra: anything else the file recorded (an export's source checkpoint and verification figures).
    """

    spec: ModelSpec
    classes: list[str]
    palette: list[Colour]
    format: str
    precision: str = "fp32"
    config: dict[str, Any] | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.spec.mean

    @property
    def eval_threshold(self) -> float | None:
        """The training run's ``eval.threshold`` (binary and multilabel models' sigmoid cut), if its config says."""
        value = ((self.config or {}).get("eval") or {}).get("threshold")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    @property
    def std(self) -> tuple[float, float, float]:
        return self.spec.std

    @property
    def is_export(self) -> bool:
        return self.format in ("onnx", "torchscript")

    def to_json(self) -> str:
        """The metadata record an export carries (ONNX ``metadata_props``, a TorchScript extra file)."""
        return json.dumps({
            "format": EXPORT_FORMAT, "model_spec": self.spec.to_dict(), "classes": list(self.classes),
            "palette": [list(colour) for colour in self.palette], "mean": list(self.spec.mean),
            "std": list(self.spec.std), "precision": self.precision, "config": self.config or {},
            "file_format": self.format, "extra": self.extra,
        })

    @classmethod
    def from_json(cls, text: str | bytes, path: str | Path) -> ModelCard:
        """Parses an export's metadata record; a damaged or foreign one is a ``ValueError`` naming ``path``."""
        try:
            data = json.loads(text)
            if data.get("format") != EXPORT_FORMAT:
                raise ValueError(f"unknown export format {data.get('format')!r} (this deeplab reads {EXPORT_FORMAT})")
            return cls(ModelSpec.from_dict(data["model_spec"]), list(data["classes"]),
                       [tuple(colour) for colour in data["palette"]], data["file_format"], data["precision"],
                       dict(data["config"]), str(path), dict(data.get("extra", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{path}: damaged deeplab export metadata ({type(err).__name__}: {err})") from err


@dataclass
class Checkpoint:
    """What a training checkpoint holds besides the tensors (``raw`` is the whole file's dict)."""

    spec: ModelSpec
    config: Config
    classes: list[str]
    palette: list[Colour]
    step: int
    best_miou: float
    raw: dict[str, Any]

    def card(self, source: str | Path) -> ModelCard:
        return ModelCard(self.spec, list(self.classes), list(self.palette), "checkpoint", "fp32",
                         self.config.to_dict(), str(source), {"step": self.step})


class ModelFile:
    """A model source, read and identified once: its :attr:`card`, and :meth:`open` for the runner."""

    def __init__(self, card: ModelCard, opener: Callable[[int | None, torch.device], Runner]) -> None:
        self.card = card
        self._opener = opener

    def open(self, *, output_stride: int | None = None, device: str | torch.device = "cpu") -> Runner:
        """The runner on ``device``: an eval-mode ``nn.Module`` (rebuilt at ``output_stride`` for weights), or an
        export's runner (whose output stride is fixed: asking for another is a ``ValueError``)."""
        return self._opener(output_stride, torch.device(device))


def open_model(source: str | Path, *, device: str | torch.device = "cpu",
               output_stride: int | None = None) -> tuple[Runner, ModelCard]:
    """(runner, card) for a model source; see :func:`read_model`."""
    model_file = read_model(source)
    return model_file.open(output_stride=output_stride, device=device), model_file.card


def read_model(source: str | Path) -> ModelFile:
    """Reads and identifies a checkpoint, an export, a TF checkpoint (prefix, folder, zoo ``.tar.gz``), a
    published weights name (``deeplab models`` lists them; fetched through torch.hub's cache), a
    ``save_pretrained`` folder or a Hugging Face Hub name ``hf-hub:ORG/NAME[@REVISION]`` (see
    :func:`read_pretrained`).

    Raises:
        FileNotFoundError: no such file (and not a published name).
        ValueError: a file of another kind, damaged, or a plain state dict (which does not say which model it is).
    """
    hub = parse_hub_name(source)
    if hub is not None:
        return _weights_file(*read_pretrained(hub))
    if isinstance(source, str) and source in PUBLISHED_WEIGHTS and not Path(source).exists():
        return _published(source)
    path = Path(source)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return _weights_file(*read_pretrained(path))
    if is_tf_checkpoint(path):
        return _tf_checkpoint(path)
    kind = detect_format(path)
    if kind in ("onnx", "torchscript"):
        return _export(path)
    raw = read_torch_file(path, what="checkpoint", expected="a .pt file written by deeplab train")
    if raw.get("format") in (CHECKPOINT_FORMAT, LEGACY_CHECKPOINT_FORMAT):
        checkpoint = checkpoint_from_raw(raw, path)
        return _weights_file(checkpoint.card(path), raw["model"])
    if isinstance(raw.get("model_spec"), Mapping) and isinstance(raw.get("model"), Mapping) and "classes" in raw:
        return _weights_file(_card_from_raw(raw, path, "checkpoint"), raw["model"])  # a converted TF-zoo model
    raise ValueError(f"{path} is not a deeplab training checkpoint: it holds a plain state dict, which does not say "
                     "which model it is (load it with deeplab.create_model(NAME, weights=PATH))")


def detect_format(path: str | Path) -> str:
    """``"checkpoint"``, ``"torchscript"`` or ``"onnx"``: what kind of model file ``path`` is, from its contents.

    A zip archive with TorchScript code is TorchScript, any other zip archive a ``torch.save`` file;
    an ``.onnx`` file or a protobuf starting like an ONNX model is ONNX. Anything else is reported as
    a checkpoint, whose reader gives the precise error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any("/code/" in name or name.endswith("/constants.pkl") for name in names):
            return "torchscript"
        return "checkpoint"
    with open(path, "rb") as handle:
        head = handle.read(1)
    if path.suffix.lower() == ".onnx" or head == b"\x08":  # field 1 (ir_version), varint: ONNX's first byte
        return "onnx"
    return "checkpoint"


def is_tf_checkpoint(path: Path) -> bool:
    """A TF checkpoint prefix (``model.ckpt`` beside ``model.ckpt.index``), its ``.index``, a folder holding one, or
    a ``.tar.gz`` (the model zoo's archives)."""
    if path.name.endswith((".tar.gz", ".tgz")) or path.suffix == ".index":
        return path.is_file()
    if path.is_dir():
        return any(path.glob("*.index"))
    return not path.exists() and Path(f"{path}.index").is_file()


# ----------------------------------------------------------------------------- weights files


def _weights_file(card: ModelCard, state: Mapping[str, Tensor]) -> ModelFile:
    def opener(output_stride: int | None, device: torch.device) -> Runner:
        try:
            model = build_with_weights(card.spec.at_output_stride(output_stride), state, device=device)
        except ValueError as err:
            raise ValueError(f"{card.source}: {err}") from err
        return model.eval()

    return ModelFile(card, opener)


def _card_from_raw(raw: Mapping[str, Any], source: str | Path, kind: str) -> ModelCard:
    return ModelCard(ModelSpec.from_dict(raw["model_spec"]), list(raw["classes"]),
                     [tuple(colour) for colour in raw["palette"]], kind, source=str(source))


def _published(name: str) -> ModelFile:
    published = published_weights(name)
    state, implied = weights_and_implied(fetch_published(published), published.model)
    spec = resolve_spec(published.model, {}, implied)
    return _weights_file(ModelCard(spec, list(published.classes), list(published.palette), "published",
                                   source=name), state)


def _tf_checkpoint(path: Path) -> ModelFile:
    from .models.tf_import import import_tf_variables
    from .tfcheckpoint import is_training_state, read_tf_checkpoint

    variables = read_tf_checkpoint(path, include=lambda name: not is_training_state(name))
    try:
        spec, state = import_tf_variables(variables)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    classes, palette = dataset_classes(None, spec.num_classes)
    return _weights_file(ModelCard(spec, classes, palette, "tf-checkpoint", source=str(path)), state)


# ----------------------------------------------------------------------------- save_pretrained folders, the Hub


def read_pretrained(source: str | Path | HubName) -> tuple[ModelCard, dict[str, Tensor]]:
    """(card, state dict) of a model folder: one ``save_pretrained`` wrote, or a transformers
    ``MobileNetV2ForSemanticSegmentation`` (loaded as ``deeplabv3_mobilenetv2`` with the TF numerics), from a
    local folder or a Hub repo (``HubName``, or ``hf-hub:ORG/NAME[@REVISION]``).

    Only ``config.json``, ``model.safetensors`` and transformers' ``preprocessor_config.json`` are read: no
    pickle, no code from the repo. A folder or repo without them is refused, naming what it holds.
    """
    hub = source if isinstance(source, HubName) else parse_hub_name(source)
    fetch = (lambda name: hub_file(hub, name)) if hub is not None else _folder_file(Path(source))
    label = str(hub if hub is not None else source)
    config = _read_json(fetch(CONFIG_NAME), label)
    if is_pretrained_config(config):
        try:
            card = ModelCard(ModelSpec.from_dict(config["model_spec"]), list(config["classes"]),
                             [tuple(colour) for colour in config["palette"]], "pretrained",
                             config=_config_for_eval(config.get("training")), source=label,
                             extra={"metrics": config.get("metrics")})
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{label}: damaged deeplab {CONFIG_NAME} ({type(err).__name__}: {err})") from err
        return card, read_torch_file(fetch(WEIGHTS_NAME), what="weights file")
    from .models.transformers_mobilenet import (
        ARCHITECTURE,
        is_transformers_deeplab,
        transformers_classes,
        transformers_spec,
        transformers_state,
    )

    if not is_transformers_deeplab(config):
        raise ValueError(f"{label}: its {CONFIG_NAME} is neither a deeplab model's (save_pretrained) nor a "
                         f"transformers {ARCHITECTURE}'s (it says model_type={config.get('model_type')!r}, "
                         f"architectures={config.get('architectures')!r})")
    try:
        preprocessor = _read_json(fetch(PREPROCESSOR_NAME), label)
    except FileNotFoundError:  # optional: transformers' default normalisation then
        preprocessor = None
    try:
        spec = transformers_spec(config, preprocessor)
        state = transformers_state(read_torch_file(fetch(WEIGHTS_NAME), what="weights file"))
    except ValueError as err:
        raise ValueError(f"{label}: {err}") from err
    classes, palette = transformers_classes(config)
    return ModelCard(spec, classes, palette, "transformers", source=label), state


def from_pretrained(source: str | Path, *, output_stride: int | None = None,
                    device: str | torch.device = "cpu") -> Segmenter:
    """The model of a ``save_pretrained`` folder or a Hub repo, in eval mode, with its spec as ``model.spec``.

    ``source``: a folder, ``hf-hub:ORG/NAME[@REVISION]`` or plain ``ORG/NAME`` (when no such folder exists);
    a transformers ``MobileNetV2ForSemanticSegmentation`` repo such as ``google/deeplabv3_mobilenet_v2_1.0_513``
    loads as ``deeplabv3_mobilenetv2``. Repos are fetched into (and, offline, read from) the Hugging Face cache.
    For the classes, palette and metrics use ``deeplab.open_model(source)``, which returns the card too.
    """
    if isinstance(source, str) and not Path(source).exists() and looks_like_repo_id(source):
        source = f"hf-hub:{source}"
    if parse_hub_name(source) is None and not Path(source).is_dir():
        raise FileNotFoundError(f"no model folder at {source} (from_pretrained takes a save_pretrained folder, "
                                "hf-hub:ORG/NAME or ORG/NAME)")
    return _weights_file(*read_pretrained(source)).open(output_stride=output_stride, device=device)


def _folder_file(folder: Path) -> Callable[[str], Path]:
    def fetch(name: str) -> Path:
        path = folder / name
        if not path.is_file():
            held = [p.name for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
            raise HubFileMissing(missing_file_message(folder, name, held))
        return path

    return fetch


def _read_json(path: Path, label: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{label}: {path.name} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{label}: {path.name} holds {type(data).__name__}, not a JSON object")
    return data


def _config_for_eval(training: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The training essentials as a config dict ``deeplab eval`` can start from (its data section)."""
    if not training:
        return None
    try:
        return from_dict(dict(training)).to_dict()
    except ValueError:  # essentials of another deeplab version: the card still loads, eval needs --config
        return None


def _hub_backbone(model: Segmenter, name: HubName) -> None:
    """``pretrained_backbone=hf-hub:...``: the backbone of a Hub model (ours or transformers'), loaded strictly."""
    card, state = read_pretrained(name)
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    if model.spec.in_channels != 3:  # an RGB backbone for N channels: its first convolution adapts
        for conv in input_convolutions(model, model.spec.in_channels):
            key = f"{conv.removeprefix('backbone.')}.weight"
            if conv.startswith("backbone.") and key in backbone and backbone[key].shape[1] == 3:
                backbone[key] = adapt_input_weight(backbone[key], model.spec.in_channels)
                model.init_notes = [*model.init_notes, f"input: {conv} adapted from {name}'s 3 channels to "
                                    f"{model.spec.in_channels} ({adaptation_rule(model.spec.in_channels)})"]
    try:
        model.backbone.load_state_dict(backbone, strict=True)
    except RuntimeError as err:
        raise ValueError(f"pretrained_backbone={name}: the backbone of its {card.spec.name} ({len(backbone)} "
                         f"tensors) does not fit {model.spec.name}'s ({len(model.backbone.state_dict())}): "
                         f"{str(err).splitlines()[0]}") from err


# ----------------------------------------------------------------------------- training checkpoints


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Reads a training checkpoint safely (no unpickling of arbitrary objects); format 1 files are upgraded."""
    raw = read_torch_file(path, what="checkpoint", expected="a .pt file written by deeplab train")
    if raw.get("format") not in (CHECKPOINT_FORMAT, LEGACY_CHECKPOINT_FORMAT):
        raise ValueError(f"{path} is not a deeplab training checkpoint (for plain state dicts use "
                         "create_model(..., weights=PATH))")
    return checkpoint_from_raw(raw, path)


def checkpoint_from_raw(raw: dict[str, Any], path: str | Path) -> Checkpoint:
    """The :class:`Checkpoint` view of a checkpoint file's dict; a damaged one is a ``ValueError`` naming ``path``."""
    try:
        if raw["format"] == LEGACY_CHECKPOINT_FORMAT:
            config = from_dict(_legacy_config(raw["config"]))
            spec = legacy_spec(raw)
        else:
            config = from_dict(raw["config"])
            spec = ModelSpec.from_dict(raw["model_spec"])
        palette = [tuple(colour) for colour in raw["palette"]]
        return Checkpoint(spec, config, list(raw["classes"]), palette, raw["step"], raw["best_miou"], raw)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is a damaged checkpoint ({type(err).__name__}: {err})") from err


def _legacy_config(config: dict[str, Any]) -> dict[str, Any]:
    model = dict(config.get("model", {}))
    if not model.get("aux_loss"):  # format 1 wrote aux_loss: false for every model, even those without an aux head
        model.pop("aux_loss", None)
    return {**config, "model": model}


def legacy_spec(raw: dict[str, Any]) -> ModelSpec:
    """The spec of a format-1 checkpoint, from its config, its class list and its weights' keys."""
    model = raw["config"]["model"]
    name = model["name"]
    options: dict[str, Any] = dict(_FORMAT1_DEFAULTS[name])
    if model.get("atrous_rates") is not None:
        options["atrous_rates"] = tuple(model["atrous_rates"])
    if model.get("aux_loss"):
        options["aux_loss"] = True
    if name.startswith("deeplabv3_resnet") and _TORCHVISION_HEAD_KEY in raw["model"]:
        options.update(head_conv=True, multi_grid=None, dropout=0.5)
    return resolve_spec(name, {"num_classes": len(raw["classes"]), "output_stride": model["output_stride"],
                               "mean": IMAGENET_MEAN, "std": IMAGENET_STD, **options})


def load_checkpoint(path: str | Path, *, output_stride: int | None = None,
                    device: str | torch.device = "cpu") -> tuple[Segmenter, Checkpoint]:
    """Rebuilds the model a checkpoint was trained with, optionally at another output stride, in eval mode.

    Reads checkpoints of ``deeplab train``, ``deeplab.save_model`` and ``deeplab import-tf``.

    Returns:
        ``(model, checkpoint)``: the :class:`Segmenter` (its spec as ``model.spec``) and the :class:`Checkpoint`
        with what the file holds besides the weights: ``spec``, ``config`` (the run's :class:`Config`),
        ``classes``, ``palette``, ``step``, ``best_miou`` (-1 when never evaluated) and ``raw`` (the whole dict).
    """
    checkpoint = read_checkpoint(path)
    model = _weights_file(checkpoint.card(path), checkpoint.raw["model"]).open(output_stride=output_stride,
                                                                                device=device)
    return model, checkpoint


# ----------------------------------------------------------------------------- exports


def _export(path: Path) -> ModelFile:
    card = read_export(path)

    def opener(output_stride: int | None, device: torch.device) -> Runner:
        if output_stride is not None and output_stride != card.spec.output_stride:
            raise ValueError(f"{path} was exported at output stride {card.spec.output_stride}; for "
                             f"{output_stride}, export again with --output-stride {output_stride}")
        return OnnxRunner(path, device) if card.format == "onnx" else load_torchscript(path, device)

    return ModelFile(card, opener)


def read_export(path: str | Path) -> ModelCard:
    """The card of an ONNX or TorchScript export, without loading its weights into a runtime."""
    path = Path(path)
    kind = detect_format(path)
    if kind == "onnx":
        onnx = require_onnx()
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # protobuf raises several types for a file that is not ONNX
            raise ValueError(f"{path} is not an ONNX model ({type(err).__name__}: {err})") from err
        props = {prop.key: prop.value for prop in proto.metadata_props}
        if METADATA_KEY not in props:
            raise ValueError(f"{path} is an ONNX model but not a deeplab export (no '{METADATA_KEY}' metadata); "
                             "export it with `deeplab export`")
        return ModelCard.from_json(props[METADATA_KEY], path)
    if kind == "torchscript":
        with zipfile.ZipFile(path) as archive:
            entry = [name for name in archive.namelist() if name.endswith(f"/extra/{METADATA_KEY}.json")]
            if not entry:
                raise ValueError(f"{path} is a TorchScript file but not a deeplab export (no {METADATA_KEY}.json); "
                                 "export it with `deeplab export --format torchscript`")
            return ModelCard.from_json(archive.read(entry[0]), path)
    raise ValueError(f"{path} is not an export (ONNX or TorchScript from `deeplab export`)")


# ----------------------------------------------------------------------------- weights for create_model


def read_weights(weights: WeightsLike, model_name: str) -> Mapping[str, Any]:
    """Weights in memory from a state dict, a ``.pt``/``.pth``/``.safetensors`` path (plain or a checkpoint), a
    published weights name for ``model_name`` (fetched through torch.hub's cache) or a Hub model
    (``hf-hub:ORG/NAME``, its spec implied as a checkpoint's is)."""
    if isinstance(weights, Mapping):
        return weights
    hub = parse_hub_name(weights)
    if hub is not None:
        card, state = read_pretrained(hub)
        return {"model_spec": card.spec.to_dict(), "model": state}
    if isinstance(weights, str) and not Path(weights).exists() and weights in PUBLISHED_WEIGHTS:
        published = PUBLISHED_WEIGHTS[weights]
        if published.model != model_name:
            raise ValueError(f"published weights {weights!r} are for {published.model}, not {model_name}")
        return fetch_published(published)
    path = Path(weights)
    if path.is_file() and detect_format(path) in ("onnx", "torchscript"):
        return read_torch_file(export_source_checkpoint(path))
    return read_torch_file(weights)


def export_source_checkpoint(path: str | Path) -> Path:
    """The checkpoint an export was made from (recorded in it by name, looked for beside it): the weights to
    fine-tune, as an export's own weights are folded and possibly quantised."""
    path = Path(path)
    name = read_export(path).extra.get("source")
    if not name or not (path.parent / name).is_file():
        what = f"its source checkpoint {name!r}" if name else "it does not name its source checkpoint and"
        raise ValueError(f"{path} is an export; to start from its weights, deeplab needs {what} beside it "
                         "(pass that checkpoint as the weights instead)")
    return path.parent / name


def create_model(name: str, *, weights: WeightsLike | None = None, pretrained_backbone: bool | str = False,
                 **options: Any) -> Segmenter:
    """Builds a registered model by name, with its weights: :func:`deeplab.models.build_model` (see it for
    ``pretrained_backbone`` and the architecture ``options``), reading ``weights`` first.

    ``weights``: a state dict, a checkpoint / ``.pt`` / ``.safetensors`` path (an imported TF checkpoint too),
    torchvision's DeepLabV3 state dict, an export (its source checkpoint, found beside it), a published weights
    name (see ``deeplab.models.published``) or a Hub model ``hf-hub:ORG/NAME``; weights that imply an architecture
    set the defaults (the TF numerics of an imported model included), explicit ``options`` still win.
    Fine-tuning: with another ``num_classes``, ``task`` or ``in_channels`` than the weights', the classifier
    layers start afresh or the first convolution is adapted, and ``model.init_notes`` says which tensors did not
    come from the weights as they were; anything else that does not fit is a ``ValueError``.
    ``pretrained_backbone`` may also be a Hub model (``hf-hub:ORG/NAME``) whose backbone fits. Returns the model
    in training mode, its spec as ``model.spec``.
    """
    loaded = None if weights is None else read_weights(weights, name)
    hub_backbone = parse_hub_name(pretrained_backbone) if isinstance(pretrained_backbone, str) else None
    if hub_backbone is not None and hub_backbone.repo_id.startswith("timm/"):  # timm's own weights: timm loads them
        tag = hub_backbone.repo_id.removeprefix("timm/")
        raise ValueError(f"pretrained_backbone={hub_backbone} is timm's ImageNet checkpoint of {tag}: name the "
                         f"encoder with its tag and let timm load it, model {name.split('_')[0]}_tu-{tag} with "
                         "pretrained_backbone=true")
    model = build_model(name, weights=loaded, pretrained_backbone=False if hub_backbone else pretrained_backbone,
                        **options)
    if hub_backbone is not None and loaded is None:  # whole-model weights replace the backbone's anyway
        _hub_backbone(model, hub_backbone)
    return model
