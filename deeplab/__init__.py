"""DeepLab v1, v2, v3 and v3+ semantic segmentation in PyTorch.

The model API imports only torch, torchvision (and timm for Xception); the training stack is
imported on first use of :func:`train` or :func:`evaluate`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .models import Segmenter, list_models

__version__ = "0.1.0"
__all__ = ["CRFParams", "InferenceOptions", "Predictor", "Segmenter", "__version__", "create_model", "dense_crf",
           "evaluate", "export_model", "from_pretrained", "list_models", "load_checkpoint", "open_model",
           "save_model", "train"]

if TYPE_CHECKING:
    from .deploy.export import export_model
    from .engine.checkpoint import save_model
    from .engine.evaluate import evaluate
    from .engine.train import train
    from .inference import Predictor
    from .modelfile import create_model, from_pretrained, load_checkpoint, open_model
    from .options import InferenceOptions
    from .postprocess import CRFParams, dense_crf

_LAZY = {
    "Predictor": "deeplab.inference",
    "InferenceOptions": "deeplab.options",
    "create_model": "deeplab.modelfile",
    "load_checkpoint": "deeplab.modelfile",
    "from_pretrained": "deeplab.modelfile",
    "save_model": "deeplab.engine.checkpoint",
    "open_model": "deeplab.modelfile",
    "train": "deeplab.engine.train",
    "evaluate": "deeplab.engine.evaluate",
    "export_model": "deeplab.deploy.export",
    "dense_crf": "deeplab.postprocess",
    "CRFParams": "deeplab.postprocess",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deeplab' has no attribute {name!r}")
