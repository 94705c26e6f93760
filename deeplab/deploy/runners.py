"""What runs an exported model: ONNX Runtime sessions, OpenVINO compiled models and TorchScript modules, as
tensor -> tensor functions.

:mod:`deeplab.modelfile` opens export files through these; the optional dependencies are imported here,
with an error that names the extra to install.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

DEPLOY_EXTRA_HINT = 'pip install "deeplab[deploy]"'
OPENVINO_EXTRA_HINT = 'pip install "deeplab[openvino]"'
# Pause before each timed run where runtimes are compared in one process: ONNX Runtime's worker threads spin-wait
# for a while after a run, and on a 2-core machine they took the cores of the run that followed (OpenVINO bf16 on
# the demo model: 0.151 s right after an ONNX Runtime run, 0.130 s after 50 ms; 10 ms were not enough).
SETTLE_SECONDS = 0.05


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


def require_openvino():
    """Imports openvino, or raises an ImportError that names the extra to install."""
    try:
        import openvino
    except ImportError as err:
        raise ImportError(f"the OpenVINO runtime needs openvino: {OPENVINO_EXTRA_HINT}") from err
    return openvino


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
    """Loads a TorchScript export onto ``device`` (its metadata is read by :mod:`deeplab.modelfile`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        try:
            return torch.jit.load(str(path), map_location=torch.device(device)).eval()
        except RuntimeError as err:
            raise ValueError(f"{path} is not a loadable TorchScript file ({err})") from err


@functools.cache
def openvino_core():
    """The process's one OpenVINO ``Core``, kept for the life of the process.

    OpenVINO's CPU plugin points the main thread's alternate signal stack at memory of its own when a ``Core``
    creates it, and when it is destroyed puts back the stack it found. With two ``Core``s alive and released in
    the order they were made, the stack left in place is the freed one, and the next signal delivered on it (a
    SIGTERM to a training run, whose handler Python installs with SA_ONSTACK) kills the process with SIGSEGV.
    One ``Core`` that is never released creates the plugin once and never tears it down.
    """
    return require_openvino().Core()


class OpenVinoRunner:
    """Runs an ONNX model with OpenVINO on the CPU as a tensor -> tensor function.

    ``precision``: ``fp32``, or ``bf16`` (OpenVINO's inference precision hint, on CPUs with AVX512-BF16 or AMX;
    the caller checks the CPU). Any batch and image size: the model keeps the ONNX file's dynamic axes.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None,
                 precision: str = "fp32") -> None:
        core = openvino_core()
        if torch.device(device).type != "cpu":
            raise ValueError(f"{path}: the OpenVINO runtime here runs on the CPU only (got device {device})")
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
        try:
            self.compiled = core.compile_model(str(path), "CPU", config)
        except Exception as err:  # OpenVINO raises its own exception types
            raise ValueError(f"OpenVINO cannot load {path} ({type(err).__name__}: {err})") from err
        self.path = Path(path)
        self.precision = precision

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.compiled(array)[0].copy())


def timed_run(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(seconds, output) of ``run(x)``, started once other runtimes' threads have gone idle
    (:data:`SETTLE_SECONDS`), so that a comparison in one process times each runtime as it runs alone."""
    time.sleep(SETTLE_SECONDS)
    start = time.perf_counter()
    output = run(x)
    return time.perf_counter() - start, output
