"""A model in memory as an ONNX file: BatchNorm folded, fp32, any batch, height and width.

The exporter (:mod:`deeplab.deploy.export`) writes exports with it, and the runtime chooser
(:mod:`deeplab.deploy.runtimes`) the files ONNX Runtime and OpenVINO run a checkpoint from.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .fastpath import fast_copy
from .runners import require_onnx

ONNX_OPSET = 17
METADATA_KEY = "deeplab"  # ONNX metadata_props key; the TorchScript extra file is METADATA_KEY + ".json"


@contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silences the exporters' deprecation and tracer notices (the files are verified by their users)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*feature will be removed.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def trace_input(channels: int = 3) -> torch.Tensor:
    """The example input the exporters trace with (any size works: the exports' sizes are free; the channels are
    the model's ``in_channels``)."""
    return torch.randn(1, channels, 97, 97, generator=torch.Generator().manual_seed(0))


def write_onnx(model: nn.Module, path: str | Path, metadata: str | None = None) -> None:
    """The folded fp32 model as ONNX with dynamic batch, height and width (and the metadata JSON, if given)."""
    folded = fast_copy(model, "cpu", channels_last=False)
    # The TorchScript-based exporter: with dynamic_axes it handles free height and width in seconds,
    # where the torch.export-based one takes minutes per model on a small CPU for the same graph.
    example = trace_input(getattr(model, "in_channels", 3))
    with quiet_exporters(), torch.no_grad():
        torch.onnx.export(folded, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                        "logits": {0: "batch", 2: "height", 3: "width"}})
    if metadata is not None:
        set_onnx_metadata(path, metadata)


def set_onnx_metadata(path: str | Path, metadata: str) -> None:
    """Stores ``metadata`` (the card's JSON) in the ONNX file's ``metadata_props`` under :data:`METADATA_KEY`."""
    onnx = require_onnx()
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata
    proto.producer_name = "deeplab"
    onnx.save(proto, str(path))
