"""Small model fixtures shared by test modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` imported as the module ``name``, registered in ``sys.modules`` first (its
    dataclasses, and a memory child of peers.py, look it up by that name)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def with_random_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every BatchNorm non-trivial statistics and affine parameters, so folding or exporting them is a real
    test (fresh BatchNorms are the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return model


def three_class_checkpoint(folder: Path) -> tuple[Path, nn.Module]:
    """A DeepLab v3 MobileNetV2 with 3 classes and random BatchNorm statistics (seed 0), saved as a training
    checkpoint ``folder/ck.pt``: the runtime tests' model. Returns the path and the model (in eval mode)."""
    from deeplab import create_model
    from deeplab.config import Config
    from deeplab.engine.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = with_random_statistics(create_model("deeplabv3_mobilenetv2", num_classes=3)).eval()
    path = Path(folder) / "ck.pt"
    save_checkpoint(path, model=model, optimizer=None, step=1, best_miou=0.0, config=Config(),
                    classes=["a", "b", "c"], palette=[(0, 0, 0), (9, 9, 9), (99, 99, 99)])
    return path, model
