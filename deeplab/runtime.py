"""Fast inference building blocks: BatchNorm folding, channels-last, precision checks, exported-model loaders.

The fast eager path (:func:`fast_copy`) is what :class:`deeplab.inference.Predictor` uses by default: an
eval-mode copy of the caller's model (which is left untouched) with every BatchNorm that directly follows
a convolution folded into that convolution's weights, in channels-last memory format. Exported files
(ONNX, TorchScript; written by :mod:`deeplab.export`) carry a JSON metadata record (:class:`ExportInfo`)
from which :func:`load_export` rebuilds everything a predictor needs.
"""

from __future__ import annotations

import copy
import functools
import json
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .models.spec import ModelSpec

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
EXPORT_FORMAT = "deeplab-export-1"
METADATA_KEY = "deeplab"  # ONNX metadata_props key; the TorchScript extra file is METADATA_KEY + ".json"
DEPLOY_EXTRA_HINT = 'pip install "deeplab[deploy]"'

# Input side of the probe pass that finds conv -> BN pairs: valid for every backbone at OS 8, 16 and 32.
_PROBE_SIZE = 65


# ----------------------------------------------------------------------------- optional dependencies


def require_onnxruntime():
    """Imports onnxruntime, or raises an ImportError that names the extra to install."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"ONNX export and inference need onnx and onnxruntime: {DEPLOY_EXTRA_HINT}") from err
    return onnxruntime


def require_onnx():
    """Imports onnx, or raises an ImportError that names the extra to install."""
    try:
        import onnx
    except ImportError as err:
        raise ImportError(f"ONNX export and inference need onnx and onnxruntime: {DEPLOY_EXTRA_HINT}") from err
    return onnx


# ----------------------------------------------------------------------------- precision


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16), so bf16 autocast is a speed-up."""
    flags = cpu_flags()
    if flags:
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def cpu_has_vnni() -> bool:
    """True where the CPU has an 8-bit dot-product instruction (AVX512-VNNI or AVX-VNNI)."""
    flags = cpu_flags()
    if flags:
        return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())


def check_precision(precision: str, device: str | torch.device) -> str:
    """Validates an eager-model precision for ``device``; returns it.

    ``fp32`` runs anywhere; ``bf16`` on a GPU that supports it or a CPU with native bf16 (elsewhere it
    would be emulated, slower than fp32, so it is refused); ``fp16`` on a GPU only. ``int8`` belongs
    to exports (``deeplab export --precision int8``).
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid choices: {', '.join(PRECISIONS)}")
    if precision == "int8":
        raise ValueError("int8 inference runs from an export: `deeplab export --precision int8 --out model.onnx`, "
                         "then predict/eval with --model model.onnx")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"fp16 needs a CUDA device (got {device}); on a CPU use bf16 where supported, or an "
                         "int8 export")
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"bf16 is not supported by this GPU ({torch.cuda.get_device_name(device)}); use fp16")
        if device.type == "cpu" and not cpu_has_bf16():
            raise ValueError("bf16 needs a CPU with AVX512-BF16 or AMX, which this one lacks: bf16 would be "
                             "emulated and slower than fp32. Use fp32 (the default), or an int8 export "
                             "(deeplab export --precision int8)")
    return precision


# ----------------------------------------------------------------------------- the fast eager path


def fast_copy(model: nn.Module, device: str | torch.device = "cpu", *, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` on ``device``, BatchNorms folded into their convolutions, channels-last.

    The caller's model is not modified (its mode, weights and device stay as they were), so this can be
    called on a model in the middle of training: the copy reflects its current weights. Gradients are
    switched off in the copy.
    """
    device = torch.device(device)
    fast = _eval_copy(model, device)
    if any(isinstance(module, nn.BatchNorm2d) for module in fast.modules()) and not _fold_batchnorms(fast, device):
        warnings.warn("BatchNorm folding changed this model's output; running it unfolded", stacklevel=2)
        fast = _eval_copy(model, device)
    if channels_last and device.type in ("cpu", "cuda"):
        fast = fast.to(memory_format=torch.channels_last)
    return fast


def _eval_copy(model: nn.Module, device: torch.device) -> nn.Module:
    copied = copy.deepcopy(model).to(device).eval()
    copied.requires_grad_(False)
    return copied


def _fold_batchnorms(model: nn.Module, device: torch.device) -> bool:
    """Folds the conv -> BN pairs a probe pass finds, in place; False if that changed the model's output."""
    probe = torch.randn(1, 3, _PROBE_SIZE, _PROBE_SIZE, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        pairs, reference = conv_bn_pairs(model, probe)
    except Exception:  # a model that cannot run the probe input is served as it is
        return True
    if not pairs:
        return True
    fold_pairs(model, pairs)
    with torch.no_grad():
        output = model(probe)
    return _max_difference(output, reference) <= 1e-3 * max(1.0, _max_magnitude(reference))


def _max_difference(a: Any, b: Any) -> float:
    if isinstance(a, torch.Tensor):
        return (a.float() - b.float()).abs().max().item()
    if isinstance(a, dict):
        return max((_max_difference(a[key], b[key]) for key in a), default=0.0)
    return 0.0 if a == b else float("inf")


def _max_magnitude(a: Any) -> float:
    if isinstance(a, torch.Tensor):
        return a.float().abs().max().item()
    if isinstance(a, dict):
        return max((_max_magnitude(value) for value in a.values()), default=0.0)
    return 0.0


def conv_bn_pairs(model: nn.Module, probe: torch.Tensor) -> tuple[list[tuple[str, str]], Any]:
    """Names of the (Conv2d, BatchNorm2d) pairs where the BN normalises the conv's output and nothing else
    reads it, found by running ``probe`` through ``model`` (in eval mode) with hooks; also returns the output.

    A pair is kept only if every call of the BN took the output of the same conv, and that output went to
    no other module. Modules are matched by tensor identity, so a conv output that a plain function also
    reads would go unseen: :func:`fast_copy` checks the folded model's output against this one's.
    """
    names = {module: name for name, module in model.named_modules()}
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> conv name (the tensor keeps the id alive)
    readers: dict[str, set[str]] = {}  # conv name -> modules that read its output
    sources: dict[str, set[str | None]] = {}  # BN name -> convs it read from (None: something else)

    def before(module: nn.Module, args: tuple) -> None:
        name = names[module]
        tensors = [arg for arg in args if isinstance(arg, torch.Tensor)]
        for tensor in tensors:
            if id(tensor) in produced:
                readers.setdefault(produced[id(tensor)][0], set()).add(name)
        if isinstance(module, nn.BatchNorm2d):
            first = produced.get(id(tensors[0])) if tensors else None
            sources.setdefault(name, set()).add(first[0] if first else None)

    def after(module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            produced[id(output)] = (names[module], output)

    handles = []
    for module in model.modules():
        if module is model:
            continue
        handles.append(module.register_forward_pre_hook(before))
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(after))
    try:
        with torch.no_grad():
            output = model(probe)
    finally:
        for handle in handles:
            handle.remove()
    pairs = []
    for bn, convs in sources.items():
        conv = next(iter(convs))
        if len(convs) == 1 and conv is not None and readers.get(conv) == {bn}:
            pairs.append((conv, bn))
    return pairs, output


def fold_pairs(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Folds each named BN into its conv (``torch.nn.utils.fusion``) and removes the BN, in place.

    A BN that carries its own activation (timm's ``BatchNormAct2d``) is replaced by that activation.
    """
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias)
        conv.weight, conv.bias = weight, bias
        rest: nn.Module = nn.Identity()
        if type(bn) is not nn.BatchNorm2d and isinstance(getattr(bn, "act", None), nn.Module):
            rest = nn.Sequential(getattr(bn, "drop", nn.Identity()), bn.act)
        parent_name, _, attribute = bn_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attribute, rest)


# ----------------------------------------------------------------------------- exported models


@dataclass
class ExportInfo:
    """What an exported file carries besides the network: enough to predict and evaluate with it alone.

    Attributes:
        spec: the exported model's spec (``output_stride`` is the one it was exported at).
        classes: class names.
        palette: one RGB colour per class.
        precision: ``fp32``, ``bf16`` or ``int8``: the arithmetic baked into the file.
        config: the training run's config as a plain dict (names the dataset for ``deeplab eval --model``).
        format: ``onnx`` or ``torchscript``.
        extra: anything else the exporter recorded (source checkpoint, verification figures).
    """

    spec: ModelSpec
    classes: list[str]
    palette: list[tuple[int, int, int]]
    precision: str
    config: dict[str, Any]
    format: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.spec.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.spec.std

    def to_json(self) -> str:
        return json.dumps({
            "format": EXPORT_FORMAT, "model_spec": self.spec.to_dict(), "classes": list(self.classes),
            "palette": [list(colour) for colour in self.palette], "mean": list(self.spec.mean),
            "std": list(self.spec.std), "precision": self.precision, "config": self.config,
            "file_format": self.format, "extra": self.extra,
        })

    @classmethod
    def from_json(cls, text: str | bytes, path: str | Path) -> ExportInfo:
        """Parses the metadata record; a damaged or foreign one is a ``ValueError`` naming ``path``."""
        try:
            data = json.loads(text)
            if data.get("format") != EXPORT_FORMAT:
                raise ValueError(f"unknown export format {data.get('format')!r} (this deeplab reads {EXPORT_FORMAT})")
            return cls(ModelSpec.from_dict(data["model_spec"]), list(data["classes"]),
                       [tuple(colour) for colour in data["palette"]], data["precision"], dict(data["config"]),
                       data["file_format"], dict(data.get("extra", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{path}: damaged deeplab export metadata ({type(err).__name__}: {err})") from err


def detect_format(path: str | Path) -> str:
    """``"checkpoint"``, ``"torchscript"`` or ``"onnx"``: what kind of model file ``path`` is, from its contents.

    A zip archive with TorchScript code is TorchScript, any other zip archive a (training) checkpoint;
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


def read_export(path: str | Path) -> ExportInfo:
    """The metadata of an ONNX or TorchScript export, without loading its weights into a runtime."""
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
        return ExportInfo.from_json(props[METADATA_KEY], path)
    if kind == "torchscript":
        with zipfile.ZipFile(path) as archive:
            entry = [name for name in archive.namelist() if name.endswith(f"/extra/{METADATA_KEY}.json")]
            if not entry:
                raise ValueError(f"{path} is a TorchScript file but not a deeplab export (no {METADATA_KEY}.json); "
                                 "export it with `deeplab export --format torchscript`")
            return ExportInfo.from_json(archive.read(entry[0]), path)
    raise ValueError(f"{path} is not an export (ONNX or TorchScript from `deeplab export`)")


class OnnxRunner:
    """Runs an ONNX model with ONNX Runtime as a tensor -> tensor function (``N x 3 x H x W -> N x C x H x W``)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None) -> None:
        ort = require_onnxruntime()
        device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError(f"{path}: device {device} needs onnxruntime-gpu (CUDAExecutionProvider); "
                                 "this onnxruntime runs on the CPU only (use --device cpu)")
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"ONNX Runtime cannot load {path} ({type(err).__name__}: {err})") from err
        self.input_name = self.session.get_inputs()[0].name
        self.path = Path(path)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def load_torchscript(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Loads a TorchScript export onto ``device`` (the metadata is read by :func:`read_export`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        try:
            return torch.jit.load(str(path), map_location=torch.device(device)).eval()
        except RuntimeError as err:
            raise ValueError(f"{path} is not a loadable TorchScript file ({err})") from err


def load_export(path: str | Path, device: str | torch.device = "cpu") -> tuple[Callable[[torch.Tensor], torch.Tensor],
                                                                             ExportInfo]:
    """(runner, metadata) for an ONNX or TorchScript export: the runner maps a normalised batch to logits."""
    info = read_export(path)
    runner = OnnxRunner(path, device) if info.format == "onnx" else load_torchscript(path, device)
    return runner, info
