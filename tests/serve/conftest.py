"""A small real model behind the server, demo images as files, and a real uvicorn server on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
import uvicorn  # noqa: E402

import deeplab  # noqa: E402
from deeplab.config import load_config  # noqa: E402
from deeplab.constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from deeplab.data.demo import DEMO_CLASSES, DEMO_PALETTE, DemoDataset  # noqa: E402
from deeplab.engine.checkpoint import save_checkpoint  # noqa: E402
from deeplab.serve import ModelInfo, load_predictor  # noqa: E402


def _calibrated_model() -> nn.Module:
    """An untrained DeepLab v3+ whose batch-norm statistics come from demo images.

    With the default statistics an untrained model predicts one class everywhere; with statistics of
    real inputs its masks hold several classes in shapes that follow the image, which is what the
    tests need to tell right masks from wrong ones.
    """
    torch.manual_seed(0)
    model = deeplab.create_model("deeplabv3plus_mobilenetv2", num_classes=len(DEMO_CLASSES))
    data = DemoDataset(split="train", image_size=65, num_images=8)
    batch = torch.stack([torch.from_numpy(data.render(i)[0]).permute(2, 0, 1) for i in range(len(data))])
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration pass
    model.train()
    with torch.no_grad():
        model((batch.float() / 255 - mean) / std)
    return model.eval()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve_model") / "model.pt"
    config = load_config(None, ["model.name=deeplabv3plus_mobilenetv2", "data.name=demo"])
    save_checkpoint(path, model=_calibrated_model(), optimizer=None, step=0, best_miou=0.0, config=config,
                    classes=list(DEMO_CLASSES), palette=DEMO_PALETTE)
    return path


@pytest.fixture(scope="session")
def loaded(checkpoint) -> tuple[deeplab.Predictor, ModelInfo]:
    return load_predictor(checkpoint, device="cpu")


@pytest.fixture(scope="session")
def predictor(loaded) -> deeplab.Predictor:
    return loaded[0]


def demo_image(index: int, size: int | tuple[int, int] = 97) -> np.ndarray:
    """A demo scene (uint8 ``H x W x 3``), cropped to ``(h, w)`` for non-square sizes."""
    height, width = (size, size) if isinstance(size, int) else size
    image = DemoDataset(split="val", image_size=max(height, width)).render(index)[0]
    return np.ascontiguousarray(image[:height, :width])


def write_demo_png(path: Path, index: int, size: int | tuple[int, int] = 97) -> Path:
    Image.fromarray(demo_image(index, size)).save(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(app) -> Iterator[str]:
    """Runs ``app`` under a real uvicorn server on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
