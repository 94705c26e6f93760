"""The deploy benchmark: latency and peak memory of every inference path we ship.

For each model, in one process: plain eager fp32, the fast path (what :class:`~deeplab.inference.Predictor`
does by default), a TorchScript export, an ONNX Runtime export (fp32 and int8), and bf16 autocast where the
hardware has it. Timed runs are interleaved (one run of every path, then the next round), so machine noise
hits all paths alike. Peak memory is measured separately, one fresh process per path: the peak resident
memory during inference (weights included) above that of an idle interpreter with the libraries loaded.
Weights are random (seeded). Speed-ups are per-round pairs: in each round a path's time against the baseline's
time of the same round (the machine's load then was the same for both), and the median of those ratios, with
their range (:func:`paired_ratio`); a target is judged only when that range is narrow enough. A progress bar
on stderr moves with each step (building, each export, each round, each memory child); the report's header
names the CPU (:func:`~deeplab.deploy.precision.cpu_kind`).
Other implementations of the same architectures (torchvision, segmentation_models_pytorch) are compared by
``benchmarks/peers.py``, which adds its paths through ``extra``.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..constants import BENCHMARK_MODELS
from ..inference import Predictor
from ..metrics import class_map
from ..modelfile import ModelCard, read_model
from ..models import build_model
from ..models.weights import TORCHVISION_LAYOUT
from ..palettes import default_palette
from .export import export_model
from .precision import INT8_REFUSAL, check_precision, cpu_has_bf16, cpu_has_int8, cpu_kind
from .runners import timed_run
from .runtimes import runtime_problem, runtime_runner

DEFAULT_MODELS = BENCHMARK_MODELS
NUM_CLASSES = 21
# Untrained residual networks amplify fp32 rounding from layer to layer: on v3 ResNet-101 at output stride 8
# the BatchNorm-folded model alone (no export) ends 2e-3 from the unfolded one with random weights. The
# export check's 1e-3 is for trained models; the benchmark measures speed, so it allows this much.
RANDOM_WEIGHTS_TOLERANCE = 1e-2
_EXPORTS = {"TorchScript fp32": ("torchscript", "fp32", "ts"), "ONNX Runtime fp32": ("onnx", "fp32", "onnx"),
            "ONNX Runtime int8": ("onnx", "int8", "int8.onnx")}
# Paths that run an export file: label -> (file suffix, runtime, precision). OpenVINO reads our ONNX exports as
# they are; its bf16 is its inference precision hint on the fp32 file (CPUs with AVX512-BF16/AMX only).
_FILE_PATHS = {"TorchScript fp32": ("ts", "torch", "fp32"), "ONNX Runtime fp32": ("onnx", "onnxruntime", "fp32"),
               "ONNX Runtime int8": ("int8.onnx", "onnxruntime", "int8"), "OpenVINO fp32": ("onnx", "openvino", "fp32"),
               "OpenVINO int8": ("int8.onnx", "openvino", "int8"), "OpenVINO bf16": ("onnx", "openvino", "bf16")}
AUTO = "auto (the default runtime)"
# A ratio is judged against a target only from at least this many rounds whose per-round ratios lie within
# this share of their median (max - min): outside either, one busy moment of a shared machine can decide it.
MIN_JUDGED_RUNS = 5
MAX_SPREAD = 0.25
RANDOM_WEIGHTS_NOTE = (
    "weights are random (seeded), so class scores lie close together: bf16/int8 rounding flips the class of pixels "
    "a trained model keeps (its export check measures val mIoU instead; --checkpoint measures a trained model "
    "here); fp32 paths should read 100%")

Run = Callable[[torch.Tensor], torch.Tensor]
# extra(model name, our model) -> {label: zero-argument builder of a runner}: paths another module adds
# (benchmarks/peers.py). The builder is called again in the memory child, given "module:function" of extra.
Extra = Callable[[str, torch.nn.Module], dict[str, Callable[[], Run]]]


@dataclass
class Timing:
    """One path of one model: latencies in seconds, peak memory in MB (``None`` when not measured)."""

    model: str
    path: str
    times: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    note: str = ""
    agreement: float | None = None  # share of pixels whose argmax class equals the eager fp32 path's

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def min(self) -> float:
        return min(self.times) if self.times else float("nan")


@dataclass(frozen=True)
class Ratio:
    """How many times faster a path ran than a baseline, from rounds that timed both: the median of the per-round
    ratios (baseline time / path time), their lowest and highest, and how many rounds there were."""

    median: float
    low: float
    high: float
    rounds: int

    @property
    def spread(self) -> float:
        """The per-round ratios' range as a share of their median (0.1: they lie within 10% of it)."""
        return (self.high - self.low) / self.median if self.median > 0 else float("inf")

    @property
    def judgeable(self) -> bool:
        """Enough rounds, close enough together, that a target can be judged on :attr:`median`."""
        return self.rounds >= MIN_JUDGED_RUNS and self.spread <= MAX_SPREAD

    def judge(self, goal: float) -> str:
        """``met`` / ``NOT met`` against ``goal``, or why it is not judged."""
        if self.rounds < MIN_JUDGED_RUNS:
            return f"not judged: {self.rounds} round(s), needs {MIN_JUDGED_RUNS}"
        if self.spread > MAX_SPREAD:
            return f"not judged: spread {100 * self.spread:.0f}% over {self.rounds} rounds, needs <= " \
                   f"{100 * MAX_SPREAD:.0f}%"
        return "met" if self.median >= goal else "NOT met"


def paired_ratio(baseline: list[float], times: list[float]) -> Ratio:
    """``baseline`` over ``times`` round by round (entry i of each timed in round i), summarised by the median.

    A ratio of two medians mixes rounds: on a shared machine one path's median can come from a quiet moment and
    the other's from a busy one. Interleaved runs put both paths in the same moments, so each round's ratio
    cancels the load that round had; their median resists the odd disturbed round.
    """
    if len(baseline) != len(times) or not times:
        raise ValueError(f"paired ratios need the same rounds on both sides, got {len(baseline)} and {len(times)}")
    ratios = [b / t for b, t in zip(baseline, times, strict=True)]
    return Ratio(statistics.median(ratios), min(ratios), max(ratios), len(ratios))


@dataclass
class BenchmarkResult:
    size: int
    batch: int
    runs: int
    threads: int
    timings: list[Timing]
    skipped: list[str]
    cpu: str = ""  # cpu_kind() of the machine that ran it
    trained: str | None = None  # the checkpoint whose trained weights ran on demo images (else random weights)
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. what the auto row ran
    channels: int = 3  # of the input (a checkpoint's model may take other than 3)


def model_options(name: str) -> dict:
    """The architecture benchmarked under ``name`` (torchvision's layout for ``deeplabv3_resnet101``)."""
    if name == "deeplabv3_resnet101":
        return dict(TORCHVISION_LAYOUT)  # OS 8 (rates 12/24/36), a 3x3 conv after ASPP
    return {"output_stride": 16} if name.startswith("deeplabv3") else {}


def calibrate_batchnorm(model: torch.nn.Module, size: int = 129) -> torch.nn.Module:
    """Gives a freshly initialised ``model`` BatchNorm statistics of its own activations (two random images).

    Untrained networks with default statistics have no trained model's scale: an untrained
    DeepLabV3-ResNet101 gives logits near 2e3, where fp32 rounding alone (about 1e-6 relative, from
    summation order) passes the export check's 1e-3. With measured statistics every layer's output is
    normalised, as in a trained model, and the timings are unchanged (the same operations run).
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the calibration pass
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return model.eval()


def benchmark_model(name: str) -> torch.nn.Module:
    """Our model ``name`` with seeded random weights and calibrated BatchNorm, in eval mode."""
    torch.manual_seed(0)
    return calibrate_batchnorm(build_model(name, num_classes=NUM_CLASSES, **model_options(name)))


def _calibration_folder(folder: Path, size: int, count: int = 4, channels: int = 3) -> Path:
    """A few demo-dataset scenes at the benchmark's size (speed does not depend on what they show): PNGs, or for a
    model of other than 3 input channels ``.npy`` files of :func:`demo_bands`."""
    from ..data.demo import DemoDataset
    from ..imageio import save_rgb_png

    folder.mkdir(parents=True, exist_ok=True)
    scenes = DemoDataset(split="train", image_size=size, num_images=count)
    for index in range(count):
        if channels == 3:
            save_rgb_png(scenes[index][0].permute(1, 2, 0), folder / f"scene_{index}.png")
        else:
            np.save(folder / f"scene_{index}.npy", demo_bands(scenes[index][0], channels).numpy())
    return folder


def demo_bands(image: torch.Tensor, channels: int) -> torch.Tensor:
    """A uint8 ``3 x H x W`` demo scene as ``channels`` bands: its grey level for one, else its R, G, B repeated in
    turn (the demo set has no other bands; a model's speed does not depend on what they show)."""
    if channels == 1:
        return image.float().mean(0, keepdim=True).round().to(torch.uint8)
    return image[[index % 3 for index in range(channels)]]


def _doing(bar: tqdm, what: str) -> None:
    """Shows what the next step is (drawn at once: exports and memory children take seconds to minutes)."""
    bar.set_postfix_str(what, refresh=True)


def build_paths(name: str, model: torch.nn.Module, workdir: Path, size: int, skipped: list[str],
                extra: Extra | None = None, bar: tqdm | None = None, notes: list[str] | None = None) -> dict[str, Run]:
    """Every benchmarked path of one model, each a function of a normalised batch; ``bar`` moves by one per
    export; ``notes`` receives what the auto row runs."""
    bar = bar if bar is not None else tqdm(disable=True)
    paths: dict[str, Run] = {"eager fp32": model}
    num_classes = model.spec.num_classes
    paths["fast fp32"] = Predictor(model, num_classes=num_classes).logits_for_batch
    calibration = _calibration_folder(workdir / "calibration", size, channels=model.spec.in_channels)
    for label, (fmt, precision, suffix) in _EXPORTS.items():
        if precision == "int8" and not cpu_has_int8():
            skipped.append(f"{name}: int8 not measured ({INT8_REFUSAL})")
            bar.update()
            continue
        _doing(bar, f"{name}: export {label}")
        out = workdir / f"{name}.{suffix}"
        export_model(model, out, format=fmt, precision=precision, calibration=calibration, calibration_images=4,
                     eval_images=0, tolerance=RANDOM_WEIGHTS_TOLERANCE, progress=False)
        bar.update()
    for label in _FILE_PATHS:
        try:
            paths[label] = _file_path(workdir, name, label)
        except (ImportError, ValueError) as err:
            skipped.append(f"{name}: {label} not measured ({err})")
    try:
        check_precision("bf16", "cpu")
        paths["fast bf16"] = Predictor(model, num_classes=num_classes, precision="bf16").logits_for_batch
    except ValueError as err:
        skipped.append(f"{name}: bf16 not measured ({err})")
    _doing(bar, f"{name}: choosing the default runtime")
    auto = _auto_predictor(model)
    paths[AUTO] = auto.logits_for_batch
    if notes is not None:
        notes.append(f"{name}: auto (the default runtime) ran {auto.runtime.describe().removeprefix('runtime: ')}")
    if extra is not None:
        paths.update({label: build() for label, build in extra(name, model).items()})
    return paths


def _file_path(workdir: Path, name: str, label: str) -> Run:
    """``label``'s runner on its export file, without the load-time check (random weights fail the bf16/int8
    agreement check that trained models pass; the benchmark measures speed)."""
    suffix, runtime, precision = _FILE_PATHS[label]
    path = workdir / f"{name}.{suffix}"
    if not path.exists():
        raise ValueError(f"{path.name} was not exported")
    model_file = read_model(path)
    card = model_file.card
    if precision == "bf16":  # OpenVINO's bf16 hint on the fp32 file
        card = dataclasses.replace(card, precision="bf16")
    problem = runtime_problem(runtime, card, card.precision, torch.device("cpu"))
    if problem:
        raise ValueError(problem)
    runner = runtime_runner(runtime, model_file.open(), card, card.precision, torch.device("cpu"))
    return Predictor(runner, num_classes=card.spec.num_classes, spec=card.spec).logits_for_batch


def _auto_predictor(model: torch.nn.Module) -> Predictor:
    """The predictor ``--runtime auto`` opens for ``model`` (verified, timed once at 513 px, as predict/eval/serve
    do); its ``runtime`` says what it picked."""
    count = model.spec.num_classes
    card = ModelCard(model.spec, [f"class_{i}" for i in range(count)], default_palette(count),
                     "checkpoint")
    return Predictor.from_runner(model, card, runtime="auto", tolerance=RANDOM_WEIGHTS_TOLERANCE)


def run_benchmark(models: list[str], *, size: int = 513, batch: int = 1, runs: int = 7, warmup: int = 2,
                  memory: bool = True, workdir: str | Path | None = None,
                  build: Callable[[str], torch.nn.Module] = benchmark_model, extra: Extra | None = None,
                  extra_name: str | None = None, progress: bool = False,
                  checkpoint: str | Path | None = None) -> BenchmarkResult:
    """Times every path of every model (interleaved runs) and, with ``memory``, measures its peak memory.

    ``build`` makes our model for a name; ``extra`` adds other paths (``extra_name``, its ``"module:function"``,
    lets the memory child rebuild them, as it rebuilds ours with ``build``'s default). ``progress`` writes the
    CPU line and a progress bar to stderr. ``checkpoint``: time that trained model instead of ``models`` (its
    architecture's name labels the rows), on demo images, so that the argmax column says how many pixels each
    path changes on a trained model; peak memory is then not measured.
    """
    if checkpoint is not None:
        model_file = read_model(checkpoint)
        models, memory = [model_file.card.spec.name], False
        build = lambda name: model_file.open()  # noqa: E731 - one model, already read
    cpu = cpu_kind()
    if progress:
        print(cpu, file=sys.stderr, flush=True)
    timings: list[Timing] = []
    skipped: list[str] = []
    notes: list[str] = []
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    skipped += ["peak memory not measured (--checkpoint)"] if checkpoint is not None else []
    # One memory child per path; the count is exact once a model's paths are built (``extra`` adds some).
    expected_paths = 3 + len(_FILE_PATHS) - int(not cpu_has_bf16()) + int(cpu_has_bf16())
    steps_per_model = 1 + len(_EXPORTS) + warmup + runs + (expected_paths if memory else 0)
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=steps_per_model * len(models), desc="benchmark",
                                                    unit="step", disable=not progress, file=sys.stderr) as bar:
        root = Path(workdir) if workdir is not None else Path(tmp)
        for name in models:
            _doing(bar, f"{name}: building")
            model = build(name)
            bar.update()
            paths = build_paths(name, model, root, size, skipped, extra, bar, notes=notes)
            if checkpoint is not None:
                x = demo_batch(model.spec, size, batch)
            del model
            rows = {label: Timing(name, label) for label in paths}
            with torch.inference_mode():
                for round_ in range(warmup):
                    _doing(bar, f"{name}: warm-up {round_ + 1}/{warmup}")
                    for run in paths.values():
                        run(x)
                    bar.update()
                reference = None
                for round_ in range(runs):
                    _doing(bar, f"{name}: round {round_ + 1}/{runs}")
                    for label, run in paths.items():
                        seconds, logits = timed_run(run, x)
                        rows[label].times.append(seconds)
                        if round_ == 0:
                            classes = class_map(logits.float(), 1)
                            if reference is None:  # eager fp32 runs first: it is the reference
                                reference = classes
                            rows[label].agreement = (classes == reference).float().mean().item()
                    bar.update()
            del paths
            if memory:
                bar.total += len(rows) - expected_paths
                for label, row in rows.items():
                    _doing(bar, f"{name}: memory of {label}")
                    row.peak_mb = peak_memory_mb(name, label, root, size, batch, extra_name)
                    bar.update()
            timings += rows.values()
    return BenchmarkResult(size, batch, runs, torch.get_num_threads(), timings, skipped, cpu,
                           None if checkpoint is None else str(checkpoint), notes, int(x.shape[1]))


def demo_batch(spec, size: int, batch: int) -> torch.Tensor:
    """``batch`` demo-dataset val scenes of ``size`` px, normalised as ``spec`` says: the input a model trained on
    the demo set classes with its real margins."""
    from ..data.demo import DemoDataset
    from ..imageio import normalize_image

    scenes = DemoDataset(split="val", image_size=size, num_images=batch)
    images = [demo_bands(scenes.load(i)[0], spec.in_channels) for i in range(batch)]
    return normalize_image(torch.stack(images), spec.mean, spec.std)


_MEMORY_CHILD = """
import json, sys
from deeplab.deploy.benchmark import _measure_in_child
print(json.dumps(_measure_in_child(*json.loads(sys.argv[1]))))
"""


def peak_memory_mb(name: str, label: str, root: Path, size: int, batch: int,
                   extra_name: str | None = None) -> float | None:
    """Peak resident memory of one inference on ``label``'s path, in a fresh process (``None`` if unavailable)."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    args = json.dumps([name, label, str(root), size, batch, torch.get_num_threads(), extra_name])
    result = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, args], capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def _rss_kb(field_name: str) -> int:
    return int(re.search(rf"{field_name}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _measure_in_child(name: str, label: str, root: str, size: int, batch: int, threads: int,
                      extra_name: str | None) -> float:
    """Runs in the child process: loads ``label``'s path, resets the peak, runs it twice, returns the peak."""
    import onnxruntime  # noqa: F401 - loaded before the baseline, like torch, so neither counts as "the model"
    import torchvision  # noqa: F401

    torch.set_num_threads(threads)
    x = torch.randn(batch, 3, size, size)
    baseline = _rss_kb("VmRSS")
    if label in _FILE_PATHS:
        run = _file_path(Path(root), name, label)
    else:
        model = benchmark_model(name)
        if label == "eager fp32":
            run = model
        elif label == AUTO:
            run = _auto_predictor(model).logits_for_batch
        elif label.startswith("fast"):
            run = Predictor(model, num_classes=NUM_CLASSES, precision=label.split()[-1]).logits_for_batch
        else:
            module, _, function = (extra_name or "").partition(":")
            run = getattr(importlib.import_module(module), function)(name, model)[label]()
        del model  # only what ``run`` holds stays resident
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark: loading does not count
    with torch.inference_mode():
        run(x), run(x)
    return round((_rss_kb("VmHWM") - baseline) / 1024, 1)


def format_report(result: BenchmarkResult, targets: Callable[[BenchmarkResult], list[str]] | None = None) -> str:
    """Markdown table (median/min latency, speed-up against the same model's plain eager fp32 with its per-round
    range, argmax agreement, peak memory), then warnings about the timings' reliability, the int8 target and
    whatever ``targets`` adds, and anything that was skipped."""
    lines = [*([result.cpu] if result.cpu else []),
             f"1x{result.channels}x{result.size}x{result.size} (batch {result.batch}), CPU, {result.threads} threads, "
             f"median/min of {result.runs} interleaved rounds (one run of every path per round)",
             "speed-up vs eager: median over the rounds of eager fp32's time / the path's time in the same round; "
             "per-round range: the lowest and highest of those ratios, spread = range / median",
             "argmax = eager: pixels of the first round whose class is eager fp32's; "
             + (RANDOM_WEIGHTS_NOTE if result.trained is None else
                f"weights trained ({result.trained}), inputs demo val images: the pixels each path changes"),
             "peak memory: above an idle interpreter",
             "",
             "| model | path | median (s) | min (s) | speed-up vs eager | per-round range (spread) | argmax = eager "
             "| peak memory (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    eager = {t.model: t.times for t in result.timings if t.path == "eager fp32"}
    ratios = {}
    for t in result.timings:
        ratio = ratios[t.model, t.path] = paired_ratio(eager[t.model], t.times)
        memory = "" if t.peak_mb is None else f"{t.peak_mb:.0f}"
        agreement = "" if t.agreement is None else f"{100 * t.agreement:.2f}%"
        lines.append(f"| {t.model} | {t.path} | {t.median:.3f} | {t.min:.3f} | {ratio.median:.2f}x "
                     f"| {ratio.low:.2f}-{ratio.high:.2f}x ({100 * ratio.spread:.0f}%) | {agreement} | {memory} |")
    lines += ["", *timing_warnings(result.runs, ratios), *int8_targets(result), *(targets(result) if targets else [])]
    lines += [f"note: {note}" for note in result.notes] + [f"skipped: {note}" for note in result.skipped]
    return "\n".join(lines)


def timing_warnings(runs: int, ratios: dict[tuple[str, str], Ratio]) -> list[str]:
    """Warnings when the rounds are too few, or the per-round ratios too far apart, for a speed-up to be trusted."""
    out = []
    if runs < MIN_JUDGED_RUNS:
        out.append(f"warning: {runs} round(s) are too few to trust a speed-up (targets are judged from "
                   f"{MIN_JUDGED_RUNS}); use --runs 7")
    wide = [f"{model} {path} ({100 * r.spread:.0f}%)" for (model, path), r in ratios.items() if r.spread > MAX_SPREAD]
    if wide and runs >= 2:
        out.append(f"warning: per-round speed-ups spread by more than {100 * MAX_SPREAD:.0f}% of their median for "
                   f"{', '.join(wide)}: the machine was busy or the path unsteady; run again on a quieter machine "
                   "or with more --runs")
    return out


def int8_targets(result: BenchmarkResult) -> list[str]:
    """int8 against plain eager fp32, per model where this run measured both (the target is 4x), judged only when
    the per-round ratios allow it (:meth:`Ratio.judge`)."""
    by_key = {(t.model, t.path): t.times for t in result.timings}
    out = []
    for model in dict.fromkeys(t.model for t in result.timings):
        eager, int8 = by_key.get((model, "eager fp32")), by_key.get((model, "ONNX Runtime int8"))
        if eager and int8:
            ratio = paired_ratio(eager, int8)
            out.append(f"target: int8 >= 4x plain eager fp32 ({model}): {ratio.median:.2f}x "
                       f"(rounds {ratio.low:.2f}-{ratio.high:.2f}x) [{ratio.judge(4.0)}]")
    return out
