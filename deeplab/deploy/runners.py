"""What runs an exported model: ONNX Runtime sessions and TorchScript modules, as tensor -> tensor functions.

:mod:`deeplab.modelfile` opens export files through these; the optional dependencies are imported here,
with an error that names the extra to install.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

DEPLOY_EXTRA_HINT = 'pip install "deeplab[deploy]"'


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
