"""DeepLab models built from one set of parts."""

from .segmenter import Segmenter
from .weights import load_weights
from .zoo import create_model, list_models, model_entry

__all__ = ["Segmenter", "create_model", "list_models", "load_weights", "model_entry"]
