"""Which runtime runs a model: our fast eager path (torch), ONNX Runtime or OpenVINO, and at what precision.

Every runtime is checked against the fp32 reference when a model is opened and refused, with the reason, if it
disagrees: in fp32 its logits must lie within 1e-4 of the largest reference logit (on one noise input: rounding
does not depend on the picture); in reduced precision (bf16, int8) its class maps must agree with fp32's on real
images (:mod:`deeplab.deploy.imagecheck`: the user's images, else the sample images shipped with the package).
``auto`` then times each verified runtime on one input of the probe size and keeps the fastest. ``precision
auto`` tries bf16 where the CPU computes it natively (AVX512-BF16 or AMX) and keeps it if it passes the real-image
check, else runs fp32. The choice is cached per model, input size, precision, CPU kind and library versions, so
the probe runs once; under torchrun, rank 0 decides and the other processes read its choice from torchrun's
store. ONNX Runtime and OpenVINO run a checkpoint from an ONNX file written once into the same cache; a model
that cannot be written as ONNX is refused by both, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from ..constants import cache_dir
from ..imageio import atomic_write
from ..modelfile import ModelCard, Runner
from .fastpath import fast_copy
from .imagecheck import check_images, compare_on_images
from .onnxfile import write_onnx
from .precision import (
    AUTO,
    INT8_REFUSAL,
    PRECISION_CHOICES,
    autocast_dtype,
    check_precision,
    cpu_flags,
    cpu_has_bf16,
    cpu_has_int8,
)
from .runners import OnnxRunner, OpenVinoRunner, load_torchscript, timed_run

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
RUNTIME_ENV = "DEEPLAB_RUNTIME"  # the default runtime where none is asked for (else auto)
PRECISION_ENV = "DEEPLAB_PRECISION"  # what precision auto means where it is set (else the check's choice)
PROBE_SIZE = 513
FP32_TOLERANCE = 1e-4  # of the largest reference logit
ONNX_FAILURE = "the model cannot be written as ONNX"
SHARED_TIMEOUT = timedelta(minutes=30)  # how long torchrun's other processes wait for rank 0's choice
_VERIFY_SHAPE = (1, 3, 97, 129)
# what each runtime can run at each precision (an int8 or bf16 export runs at the precision baked into it)
_PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}


def default_precision() -> str:
    """What ``precision auto`` means: ``$DEEPLAB_PRECISION`` if set (a deployment or a test suite pins it there,
    e.g. to fp32), else ``auto``."""
    precision = os.environ.get(PRECISION_ENV, AUTO)
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"{PRECISION_ENV}={precision!r}; valid choices: {', '.join(PRECISION_CHOICES)}")
    return precision


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
        cached: the choice came from the cache (its key holds what the checks depend on, so they are not rerun).
        check: the check the chosen runtime passed, in words.
        precision_note: under ``precision auto``, why this precision.
        decided_by: who made the choice when it was not this process (``process 0`` under torchrun).
        channels: the probe input's channels (the model's input channels).
    """

    runtime: str
    precision: str
    seconds: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    probe_size: int = PROBE_SIZE
    cached: bool = False
    check: str = ""
    precision_note: str = ""
    decided_by: str = ""
    channels: int = 3

    def describe(self) -> str:
        """One line for the user."""
        why = "as asked, verified against fp32"
        if len(self.seconds) > 1:
            times = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in sorted(self.seconds.items(),
                                                                                     key=lambda item: item[1]))
            why = f"fastest verified at 1x{self.channels}x{self.probe_size}x{self.probe_size} on this CPU: {times}"
        elif self.seconds or self.refused:
            why = "the only verified runtime"
        notes = [why] + (["cached choice"] if self.cached else []) + ([f"chosen by {self.decided_by}"]
                                                                     if self.decided_by else [])
        line = f"runtime: {self.runtime} {self.precision} ({'; '.join(notes)})"
        if self.precision_note:
            line += f"; precision auto: {self.precision_note}"
        if self.check:
            line += f"; check passed: {self.check}"
        refused = "; ".join(f"{name}: {reason}" for name, reason in self.refused.items())
        return line + (f"; not used: {refused}" if refused else "")


def open_with_runtime(runner: Runner, card: ModelCard, *, runtime: str | None = None, precision: str = "fp32",
                      device: str | torch.device = "cpu", probe_size: int | None = None,
                      log: Callable[[str], None] | None = None, tolerance: float = FP32_TOLERANCE,
                      check_folder: str | Path | None = None) -> tuple[Runner, RuntimeChoice]:
    """(the runner to use, the choice) for a model opened by :mod:`deeplab.modelfile`.

    Args:
        runner: the eager model (checkpoint, published weights, TF checkpoint) or an export's runner.
        card: its card (an ONNX export's ``source`` is the file ONNX Runtime and OpenVINO read).
        runtime: ``auto``, ``torch``, ``onnxruntime``, ``openvino``; default :func:`default_runtime`.
        precision: ``auto`` (bf16 where the CPU has bf16 units and it passes the real-image check, else fp32),
            ``fp32``, ``bf16``, ``fp16`` for an eager model; an export keeps the one baked into it.
        device: ONNX Runtime and OpenVINO run here on the CPU; a GPU gets the torch runtime.
        probe_size: side of the input ``auto`` times the runtimes on (default :data:`PROBE_SIZE`).
        log: receives a line for each slow step (writing the ONNX file, timing), e.g. ``print`` to stderr.
        tolerance: the fp32 check's bound, relative to the largest reference logit (the benchmark, on random
            weights whose deep residual stacks amplify rounding, allows more).
        check_folder: images for the reduced-precision check (default: the sample images shipped with deeplab).

    Raises:
        ValueError: an unknown runtime, one that cannot run this model at this precision, or one that disagrees
            with the reference.
    """
    device = torch.device(device)
    precision = card.precision if card.is_export else default_precision() if precision == AUTO else precision
    if runtime is None:
        runtime = default_runtime()
        if card.is_export and runtime != "auto" and runtime_problem(runtime, card, precision, device):
            runtime = "torch" if card.format == "torchscript" else "onnxruntime"  # a pin that cannot run this file
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; valid choices: {', '.join(RUNTIMES)}")
    opening = _Opening(runner, card, device, probe_size or PROBE_SIZE, log, tolerance, check_folder)
    if runtime != "auto" and precision != AUTO:
        return opening.open(runtime, precision, verify_torch=False)
    return opening.shared(runtime, precision)


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


def auto_precision_candidate(device: torch.device) -> tuple[str | None, str]:
    """(the reduced precision ``precision auto`` tries here, or None; why none)."""
    if device.type != "cpu":
        return None, f"on {device} auto keeps fp32 (ask for --precision bf16 or fp16)"
    if not cpu_has_bf16():
        return None, "this CPU has no bf16 units (AVX512-BF16 or AMX), so bf16 would be slower than fp32"
    return "bf16", ""


def runtime_runner(runtime: str, runner: Runner, card: ModelCard, precision: str, device: torch.device,
                   log: Callable[[str], None] | None = None, digest: str | None = None) -> Runner:
    """``runtime``'s runner for the model, NOT verified (:func:`open_with_runtime` verifies; the benchmark, which
    measures speed on random weights, takes it as it is). Check :func:`runtime_problem` first.

    Raises:
        ValueError: the model cannot be written as ONNX, or the runtime cannot load it (with the reason).
    """
    if runtime == "torch":
        return runner
    if card.format == "onnx":
        path = Path(card.source)
    else:
        path = _onnx_file(runner, digest or _weights_digest(runner), log)
    if runtime == "onnxruntime":
        return OnnxRunner(path, device)
    return OpenVinoRunner(path, device, precision="bf16" if precision == "bf16" else "fp32")


class _Opening:
    """One model being opened: its reference, its check images (read once) and the steps of choosing."""

    def __init__(self, runner: Runner, card: ModelCard, device: torch.device, probe_size: int,
                 log: Callable[[str], None] | None, tolerance: float, check_folder: str | Path | None) -> None:
        self.runner, self.card, self.device = runner, card, device
        self.probe_size, self.log, self.tolerance, self.check_folder = probe_size, log, tolerance, check_folder
        self._reference: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._images: tuple[list[torch.Tensor], str] | None = None
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = _model_digest(self.runner, self.card)
        return self._digest

    def reference(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """fp32 logits to verify against: the eager model itself, or for an export ONNX Runtime / TorchScript on
        the file (which the exporter verified against the eager model)."""
        if self._reference is None:
            if self.card.format == "onnx":
                self._reference = OnnxRunner(self.card.source)
            elif self.card.format == "torchscript":
                self._reference = load_torchscript(self.card.source)
            else:
                self._reference = self.runner
        return self._reference

    def images(self) -> tuple[list[torch.Tensor], str]:
        if self._images is None:
            spec = self.card.spec
            self._images = check_images(spec.mean, spec.std, self.check_folder)
        return self._images

    def check(self, candidate: Runner, runtime: str, precision: str) -> tuple[str | None, str]:
        """(why ``candidate`` fails its check or None, the check it passed in words)."""
        run = _as_used(candidate, runtime, precision)
        if precision == "fp32":
            batch, _, height, width = _VERIFY_SHAPE  # on the model's input channels
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(batch, self.card.spec.in_channels, height, width, generator=generator)
            with torch.inference_mode():
                expected, got = self.reference()(x).float(), run(x).float()
            if got.shape != expected.shape:
                return f"it returned {tuple(got.shape)} for {tuple(expected.shape)}", ""
            ratio = ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()
            if ratio > self.tolerance:
                return f"max |d logits| = {ratio:.1e} of the largest, > {self.tolerance:g}", ""
            return None, f"fp32 logits within {self.tolerance:g} of the reference's largest"
        if self.card.spec.in_channels != 3:
            return f"the real-image check needs an RGB model (this one takes {self.card.spec.in_channels} " \
                   "channels)", ""
        images, source = self.images()
        agreement = compare_on_images(self.reference(), run, images, source)
        return (None if agreement.passed else agreement.describe()), agreement.describe()

    def open(self, runtime: str, precision: str, *, verify_torch: bool) -> tuple[Runner, RuntimeChoice]:
        """The runner of one asked-for runtime at one precision, checked (the torch runtime in fp32, or in a
        reduced precision the user asked for, runs as asked: the fast path checks its own BatchNorm folding)."""
        problem = runtime_problem(runtime, self.card, precision, self.device)
        if problem:
            raise ValueError(f"--runtime {runtime}: {problem}")
        if runtime == "torch" and (precision == "fp32" or not verify_torch):
            return self.runner, RuntimeChoice(runtime, precision, probe_size=self.probe_size)
        try:
            candidate = runtime_runner(runtime, self.runner, self.card, precision, self.device, self.log,
                                       self.digest if not self.card.is_export else None)
        except ValueError as err:
            raise ValueError(f"--runtime {runtime}: {err}") from err
        if self.card.format == "onnx" and runtime == "onnxruntime":  # the reference itself (verified at export)
            return candidate, RuntimeChoice(runtime, precision, probe_size=self.probe_size)
        problem, passed = self.check(candidate, runtime, precision)
        if problem:
            at = "" if precision == "fp32" else f" at {precision}"
            raise ValueError(f"--runtime {runtime} disagrees with the fp32 reference on this model{at} ({problem}); "
                             + ("use --runtime torch" if precision == "fp32" else "use --precision fp32"))
        return candidate, RuntimeChoice(runtime, precision, probe_size=self.probe_size, check=passed)

    def shared(self, runtime: str, precision: str) -> tuple[Runner, RuntimeChoice]:
        """:meth:`decide`, made once under torchrun: by process 0, whose choice the others read and follow."""
        store, rank = _torchrun_store()
        if store is None:
            return self.decide(runtime, precision)
        key = f"deeplab/runtime_choice/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{self.digest}/" \
              f"{runtime}/{precision}"
        if rank == 0:
            try:
                chosen, choice = self.decide(runtime, precision)
            except Exception as err:
                store.set(key, json.dumps({"error": f"{type(err).__name__}: {err}"}))
                raise
            store.set(key, json.dumps(asdict(choice)))
            return chosen, choice
        posted = json.loads(store.get(key))
        if "error" in posted:
            raise ValueError(f"process 0 could not open the model: {posted['error']}")
        choice = RuntimeChoice(**{**posted, "decided_by": "process 0"})
        candidate = runtime_runner(choice.runtime, self.runner, self.card, choice.precision, self.device, self.log,
                                   self.digest if not self.card.is_export else None)
        return candidate, choice

    def decide(self, runtime: str, precision: str) -> tuple[Runner, RuntimeChoice]:
        """The runner and choice for ``runtime`` (``auto`` or one) at ``precision`` (``auto`` or one)."""
        if precision != AUTO:
            return self.fastest(precision)  # runtime auto (open_with_runtime handles the rest)
        reduced, why = auto_precision_candidate(self.device)
        if reduced is not None and runtime != "auto":
            why = runtime_problem(runtime, self.card, reduced, self.device) or ""
        if reduced is not None and not why:
            try:
                chosen, choice = self.open(runtime, reduced, verify_torch=True) if runtime != "auto" \
                    else self.fastest(reduced)
                choice.precision_note = f"{reduced}, this CPU's bf16 units, passed the real-image check"
                return chosen, choice
            except ValueError as err:
                why = str(err)
        chosen, choice = self.open(runtime, "fp32", verify_torch=False) if runtime != "auto" \
            else self.fastest("fp32")
        choice.precision_note = f"fp32 ({reduced + ' not used: ' if reduced else ''}{why})"
        return chosen, choice

    def fastest(self, precision: str) -> tuple[Runner, RuntimeChoice]:
        """``runtime auto``: every runtime that can run the model, checked; the fastest on the probe input."""
        refused: dict[str, str] = {}
        names = [name for name in RUNTIMES[1:] if not _skip(name, self.card, precision, self.device, refused)]
        if not names:
            raise ValueError(f"no runtime can run this model at {precision} here: "
                             + "; ".join(f"{name}: {why}" for name, why in refused.items()))
        checked_on = "" if precision == "fp32" else str(Path(self.check_folder).resolve()) if self.check_folder else "*"
        key = _cache_key(self.digest, precision, self.device, self.probe_size, names, checked_on)
        cached = _cached_choice(key)
        if cached is not None and cached.get("runtime") is None:  # a precision every runtime failed before
            raise ValueError(cached["error"])
        if cached is not None and cached["runtime"] in names:
            # not checked again: the key holds all the check depends on (model, precision, CPU, library versions)
            try:
                candidate = runtime_runner(cached["runtime"], self.runner, self.card, precision, self.device,
                                           self.log, self.digest)
            except ValueError:
                candidate = None
            if candidate is not None:
                return candidate, RuntimeChoice(cached["runtime"], precision, dict(cached["seconds"]),
                                                dict(cached.get("refused", {})), self.probe_size, cached=True,
                                                check=cached.get("check", ""), channels=self.card.spec.in_channels)
        verified: dict[str, tuple[Runner, str]] = {}
        for name in names:
            unwritable = [why for why in refused.values() if why.startswith(ONNX_FAILURE)]
            if name != "torch" and self.card.format != "onnx" and unwritable:  # not written twice
                refused[name] = unwritable[0]
                continue
            try:
                candidate = runtime_runner(name, self.runner, self.card, precision, self.device, self.log,
                                           self.digest)
            except ValueError as err:
                refused[name] = str(err)
                continue
            # the torch runtime at fp32 is the fast path, which checks its own BatchNorm folding (the fallback)
            problem, passed = (None, "the fast path (BatchNorm folding checked against the model)") \
                if (name, precision) == ("torch", "fp32") else self.check(candidate, name, precision)
            if problem:
                refused[name] = f"disagrees with fp32 ({problem})"
            else:
                verified[name] = (candidate, passed)
        if not verified:
            error = f"no runtime agrees with the fp32 reference on this model at {precision}: " \
                    + "; ".join(f"{name}: {why}" for name, why in refused.items())
            _store_choice(key, {"runtime": None, "error": error})
            raise ValueError(error)
        runners = {name: runner for name, (runner, _) in verified.items()}
        seconds = _time(runners, precision, self.probe_size, self.log,
                        self.card.spec.in_channels) if len(verified) > 1 else {}
        best = min(seconds, key=seconds.get) if seconds else next(iter(verified))
        _store_choice(key, {"runtime": best, "seconds": seconds, "refused": refused, "check": verified[best][1]})
        return verified[best][0], RuntimeChoice(best, precision, seconds, refused, self.probe_size,
                                                check=verified[best][1], channels=self.card.spec.in_channels)


def _torchrun_store() -> tuple[torch.distributed.Store | None, int]:
    """(torchrun's key-value store, this process's rank) when several processes run under torchrun's agent
    (which hosts the store every worker can reach), else (None, 0)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 2 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None, 0
    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                                       is_master=False, timeout=SHARED_TIMEOUT)
    return store, int(os.environ.get("RANK", "0"))


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
                times[name].append(timed_run(run, x)[0])
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


# Bumped whenever the rule that accepts a reduced precision or the way runtimes are timed changes, so a choice cached
# under an older rule is made again (2: the real-image check's mIoU leaves out classes on < 1% of the pixels; 3: each
# timed run starts after a pause, deploy.runners.SETTLE_SECONDS, as the runtime that ran before may still hold cores).
CHOICE_RULE = 3


def _cache_key(digest: str, precision: str, device: torch.device, size: int, names: list[str],
               checked_on: str = "") -> str:
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                                  "amx_int8"})
    parts = {"model": digest, "precision": precision, "device": str(device), "size": size,
             "runtimes": names, "checked_on": checked_on, "cpu": flags, "threads": torch.get_num_threads(),
             "versions": _versions(), "choice_rule": CHOICE_RULE}
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
    """The ONNX file of an eager model, written once into the cache (named by the model's digest).

    Raises:
        ValueError: the exporter cannot write this model (the reason; both ONNX runtimes are then refused).
    """
    path = cache_dir() / "onnx" / f"{digest}.onnx"
    if not path.is_file():
        if log:
            log(f"writing the model as ONNX once, for onnxruntime and openvino: {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        # a name of this process's own: torchrun's processes on one node may write the same file at once
        handle, partial = tempfile.mkstemp(suffix=".partial", dir=path.parent)
        os.close(handle)
        try:
            write_onnx(model, partial)
        except Exception as err:  # the exporter raises many types; the model then runs on torch, with the reason
            Path(partial).unlink(missing_ok=True)
            raise ValueError(f"{ONNX_FAILURE} ({type(err).__name__}: {err})") from err
        os.replace(partial, path)
    return path
