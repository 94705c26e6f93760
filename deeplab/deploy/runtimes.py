"""Which runtime runs a model: our fast eager path (torch), ONNX Runtime or OpenVINO.

Every runtime is checked against the fp32 reference when a model is opened (logits within 1e-4 of the largest
reference logit in fp32; the same class on >= 99.9% of pixels in reduced precision) and refused, with the
reason, if it disagrees. ``auto`` then times each verified runtime on one input of the probe size and keeps the
fastest; the choice is cached per model, input size, precision, CPU kind and library versions, so the probe runs
once. ONNX Runtime and OpenVINO run a checkpoint from an ONNX file written once into the same cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..constants import cache_dir
from ..imageio import atomic_write
from ..modelfile import ModelCard, Runner
from .fastpath import fast_copy
from .onnxfile import write_onnx
from .precision import INT8_REFUSAL, autocast_dtype, check_precision, cpu_flags, cpu_has_bf16, cpu_has_int8
from .runners import OnnxRunner, OpenVinoRunner, load_torchscript

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
RUNTIME_ENV = "DEEPLAB_RUNTIME"  # the default runtime where none is asked for (else auto)
PROBE_SIZE = 513
FP32_TOLERANCE = 1e-4  # of the largest reference logit
REDUCED_AGREEMENT = 0.999  # fraction of pixels with the reference's class, for bf16 and int8
_VERIFY_SHAPE = (1, 3, 97, 129)
# what each runtime can run at each precision (an int8 or bf16 export runs at the precision baked into it)
_PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}


def default_runtime() -> str:
    """``$DEEPLAB_RUNTIME`` if set (a deployment pins its runtime there), else ``auto``."""
    runtime = os.environ.get(RUNTIME_ENV, "auto")
    if runtime not in RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV}={runtime!r}; valid choices: {', '.join(RUNTIMES)}")
    return runtime


@dataclass
class RuntimeChoice:
    """What runs the model and why.

    Attributes:
        runtime: ``torch``, ``onnxruntime`` or ``openvino``.
        precision: the arithmetic it runs at.
        seconds: median latency of each verified runtime on the probe input (``auto`` only).
        refused: runtime -> why it was not used (not installed, disagreed with the reference, ...).
        probe_size: side of the square probe input.
        cached: the choice came from the cache (the chosen runtime was verified again).
    """

    runtime: str
    precision: str
    seconds: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    probe_size: int = PROBE_SIZE
    cached: bool = False

    def describe(self) -> str:
        """One line for the user."""
        why = "as asked, verified against fp32"
        if len(self.seconds) > 1:
            times = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in sorted(self.seconds.items(),
                                                                                     key=lambda item: item[1]))
            why = f"fastest verified at 1x3x{self.probe_size}x{self.probe_size} on this CPU: {times}"
        elif self.seconds or self.refused:
            why = "the only verified runtime"
        refused = "; ".join(f"{name}: {reason}" for name, reason in self.refused.items())
        return (f"runtime: {self.runtime} {self.precision} ({why}{'; cached choice' if self.cached else ''})"
                + (f"; not used: {refused}" if refused else ""))


def open_with_runtime(runner: Runner, card: ModelCard, *, runtime: str | None = None, precision: str = "fp32",
                      device: str | torch.device = "cpu", probe_size: int = PROBE_SIZE,
                      log: Callable[[str], None] | None = None,
                      tolerance: float = FP32_TOLERANCE) -> tuple[Runner, RuntimeChoice]:
    """(the runner to use, the choice) for a model opened by :mod:`deeplab.modelfile`.

    Args:
        runner: the eager model (checkpoint, published weights, TF checkpoint) or an export's runner.
        card: its card (an ONNX export's ``source`` is the file ONNX Runtime and OpenVINO read).
        runtime: ``auto``, ``torch``, ``onnxruntime``, ``openvino``; default :func:`default_runtime`.
        precision: ``fp32``, ``bf16``, ``fp16`` for an eager model; an export keeps the one baked into it.
        device: ONNX Runtime and OpenVINO run here on the CPU; a GPU gets the torch runtime.
        probe_size: side of the input ``auto`` times the runtimes on.
        log: receives a line for each slow step (writing the ONNX file, timing), e.g. ``print`` to stderr.
        tolerance: the fp32 check's bound, relative to the largest reference logit (the benchmark, on random
            weights whose deep residual stacks amplify rounding, allows more).

    Raises:
        ValueError: an unknown runtime, one that cannot run this model at this precision, or one that disagrees
            with the reference.
    """
    device = torch.device(device)
    precision = card.precision if card.is_export else precision
    if runtime is None:
        runtime = default_runtime()
        if card.is_export and runtime != "auto" and runtime_problem(runtime, card, precision, device):
            runtime = "torch" if card.format == "torchscript" else "onnxruntime"  # a pin that cannot run this file
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; valid choices: {', '.join(RUNTIMES)}")
    if runtime != "auto":
        problem = runtime_problem(runtime, card, precision, device)
        if problem:
            raise ValueError(f"--runtime {runtime}: {problem}")
        if runtime == "torch":  # the fast path checks its own BatchNorm folding (deploy.fastpath)
            return runner, RuntimeChoice(runtime, precision, probe_size=probe_size)
        candidate = runtime_runner(runtime, runner, card, precision, device, log)
        if card.format == "onnx" and runtime == "onnxruntime":  # the reference itself (verified at export)
            return candidate, RuntimeChoice(runtime, precision, probe_size=probe_size)
        problem = _disagreement(candidate, _reference(runner, card), precision, runtime, tolerance,
                                card.spec.in_channels)
        if problem:
            raise ValueError(f"--runtime {runtime} disagrees with the fp32 reference on this model ({problem}); "
                             "use --runtime torch")
        return candidate, RuntimeChoice(runtime, precision, probe_size=probe_size)
    return _auto(runner, card, precision, device, probe_size, log, tolerance)


def runtime_problem(runtime: str, card: ModelCard, precision: str, device: torch.device) -> str | None:
    """Why ``runtime`` cannot run this model here, or None."""
    if card.format == "torchscript" and runtime != "torch":
        return "a TorchScript export runs on torch only"
    if card.format == "onnx" and runtime == "torch":
        return "an ONNX export runs on onnxruntime or openvino"
    if runtime != "torch" and device.type != "cpu":
        return f"{runtime} runs on the CPU here (device {device}); use --runtime torch on a GPU"
    if precision not in _PRECISIONS[runtime]:
        return f"{runtime} does not run {precision} (it runs {', '.join(_PRECISIONS[runtime])})"
    if runtime == "openvino" and precision == "bf16" and not cpu_has_bf16():
        return "bf16 needs a CPU with AVX512-BF16 or AMX, which this one lacks"
    if precision == "int8" and not cpu_has_int8():
        return INT8_REFUSAL
    try:
        if runtime == "onnxruntime":
            import onnxruntime  # noqa: F401
        if runtime == "openvino":
            import openvino  # noqa: F401
    except ImportError:
        extra = "deploy" if runtime == "onnxruntime" else "openvino"
        return f"{runtime} is not installed (pip install \"deeplab[{extra}]\")"
    if runtime == "torch" and not card.is_export:
        try:
            check_precision(precision, device)
        except ValueError as err:
            return str(err)
    return None


def runtime_runner(runtime: str, runner: Runner, card: ModelCard, precision: str, device: torch.device,
                   log: Callable[[str], None] | None = None, digest: str | None = None) -> Runner:
    """``runtime``'s runner for the model, NOT verified (:func:`open_with_runtime` verifies; the benchmark, which
    measures speed on random weights, takes it as it is). Check :func:`runtime_problem` first."""
    if runtime == "torch":
        return runner
    if card.format == "onnx":
        path = Path(card.source)
    else:
        path = _onnx_file(runner, digest or _weights_digest(runner), log)
    if runtime == "onnxruntime":
        return OnnxRunner(path, device)
    return OpenVinoRunner(path, device, precision="bf16" if precision == "bf16" else "fp32")


def _reference(runner: Runner, card: ModelCard) -> Callable[[torch.Tensor], torch.Tensor]:
    """fp32 logits to verify against: the eager model itself, or for an ONNX export ONNX Runtime on the file
    (which the exporter verified against the eager model)."""
    if card.format == "onnx":
        return OnnxRunner(card.source)
    if card.format == "torchscript":
        return load_torchscript(card.source)
    return runner


def _as_used(candidate: Runner, runtime: str, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The candidate as the Predictor will run it: the torch runtime through the fast path (and autocast)."""
    if runtime != "torch" or not isinstance(candidate, nn.Module) or isinstance(candidate, torch.jit.ScriptModule):
        return candidate
    fast = fast_copy(candidate, "cpu").to(memory_format=torch.channels_last)
    dtype = autocast_dtype(precision)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if dtype is None:
            return fast(x)
        with torch.autocast("cpu", dtype=dtype):
            return fast(x).float()

    return run


def _disagreement(candidate: Runner, reference: Callable[[torch.Tensor], torch.Tensor], precision: str,
                  runtime: str = "", tolerance: float = FP32_TOLERANCE, channels: int = 3) -> str | None:
    """Why ``candidate`` fails the check against ``reference`` (on ``channels``-channel inputs), or None."""
    x = torch.randn(_VERIFY_SHAPE[0], channels, *_VERIFY_SHAPE[2:], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = reference(x).float()
        got = _as_used(candidate, runtime, precision)(x).float()
    if got.shape != expected.shape:
        return f"it returned {tuple(got.shape)} for {tuple(expected.shape)}"
    if precision == "fp32":
        ratio = ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()
        return None if ratio <= tolerance else f"max |d logits| = {ratio:.1e} of the largest, > {tolerance:g}"
    if expected.shape[1] == 1:  # one logit (binary): the same side of the 0.5 probability
        agreement = ((got > 0) == (expected > 0)).float().mean().item()
    else:
        agreement = (got.argmax(1) == expected.argmax(1)).float().mean().item()
    return None if agreement >= REDUCED_AGREEMENT else (f"same class on {100 * agreement:.2f}% of pixels, "
                                                         f"< {100 * REDUCED_AGREEMENT:.1f}%")


def _auto(runner: Runner, card: ModelCard, precision: str, device: torch.device, probe_size: int,
          log: Callable[[str], None] | None, tolerance: float) -> tuple[Runner, RuntimeChoice]:
    refused: dict[str, str] = {}
    names = [name for name in RUNTIMES[1:] if not _skip(name, card, precision, device, refused)]
    if not names:
        raise ValueError(f"no runtime can run this model at {precision} here: "
                         + "; ".join(f"{name}: {why}" for name, why in refused.items()))
    digest = _model_digest(runner, card)
    key = _cache_key(digest, precision, device, probe_size, names)
    cached = _cached_choice(key)
    if cached is not None and cached["runtime"] in names:
        candidate = runtime_runner(cached["runtime"], runner, card, precision, device, log, digest)
        if _disagreement(candidate, _reference(runner, card), precision, cached["runtime"], tolerance,
                         card.spec.in_channels) is None:
            return candidate, RuntimeChoice(cached["runtime"], precision, dict(cached["seconds"]),
                                            dict(cached.get("refused", {})), probe_size, cached=True)
    reference = _reference(runner, card)
    verified: dict[str, Runner] = {}
    for name in names:
        candidate = runtime_runner(name, runner, card, precision, device, log, digest)
        # the torch runtime at fp32 is the fast path, which checks its own BatchNorm folding (the fallback)
        problem = None if (name, precision) == ("torch", "fp32") else _disagreement(candidate, reference, precision,
                                                                                   name, tolerance,
                                                                                   card.spec.in_channels)
        if problem:
            refused[name] = f"disagrees with fp32 ({problem})"
        else:
            verified[name] = candidate
    if not verified:
        raise ValueError("no runtime agrees with the fp32 reference on this model: "
                         + "; ".join(f"{name}: {why}" for name, why in refused.items()))
    seconds = _time(verified, precision, probe_size, log, card.spec.in_channels) if len(verified) > 1 else {}
    best = min(seconds, key=seconds.get) if seconds else next(iter(verified))
    _store_choice(key, {"runtime": best, "seconds": seconds, "refused": refused})
    return verified[best], RuntimeChoice(best, precision, seconds, refused, probe_size)


def _skip(name: str, card: ModelCard, precision: str, device: torch.device, refused: dict[str, str]) -> bool:
    problem = runtime_problem(name, card, precision, device)
    if problem and not problem.startswith(("a TorchScript", "an ONNX")):
        refused[name] = problem
    return problem is not None


def _time(runners: dict[str, Runner], precision: str, size: int,
          log: Callable[[str], None] | None, channels: int = 3) -> dict[str, float]:
    """Median of 3 interleaved runs (after one warm-up each) of every runtime on one 1 x C x size x size input."""
    if log:
        log(f"timing {', '.join(runners)} at 1x{channels}x{size}x{size} to pick the fastest (once per model and CPU)")
    x = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(1))
    runs = {name: _as_used(runner, name, precision) for name, runner in runners.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for run in runs.values():
            run(x)
        for _ in range(3):
            for name, run in runs.items():
                start = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _model_digest(runner: Runner, card: ModelCard) -> str:
    """A hash of what the model computes: the export file's bytes, or the eager model's spec and weights."""
    if not card.is_export:
        return _weights_digest(runner)
    digest = hashlib.sha1()
    with open(card.source, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_digest(model: nn.Module) -> str:
    """A hash of an eager model's spec and every tensor of its state."""
    spec = getattr(model, "spec", None)
    digest = hashlib.sha1(json.dumps(spec.to_dict() if spec is not None else {}, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    found = {"torch": torch.__version__}
    for module in ("onnxruntime", "openvino"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            pass
    return found


def _cache_key(digest: str, precision: str, device: torch.device, size: int, names: list[str]) -> str:
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                                  "amx_int8"})
    parts = {"model": digest, "precision": precision, "device": str(device), "size": size,
             "runtimes": names, "cpu": flags, "threads": torch.get_num_threads(), "versions": _versions()}
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _choices_file() -> Path:
    return cache_dir() / "runtime_choices.json"


def _cached_choice(key: str) -> dict | None:
    try:
        return json.loads(_choices_file().read_text()).get(key)
    except (OSError, ValueError):
        return None


def _store_choice(key: str, choice: dict) -> None:
    path = _choices_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known[key] = choice
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as handle:
            json.dump(known, handle, indent=1)
    except OSError:  # a read-only home: the choice is simply made again next time
        pass


def _onnx_file(model: Runner, digest: str, log: Callable[[str], None] | None) -> Path:
    """The ONNX file of an eager model, written once into the cache (named by the model's digest)."""
    path = cache_dir() / "onnx" / f"{digest}.onnx"
    if not path.is_file():
        if log:
            log(f"writing the model as ONNX once, for onnxruntime and openvino: {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        write_onnx(model, partial)
        os.replace(partial, path)
    return path
