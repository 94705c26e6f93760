"""DeepLab models built from one set of parts."""

from .pretrained import build_model
from .published import PUBLISHED_WEIGHTS, PublishedWeights, published_weights
from .segmenter import Segmenter
from .spec import ModelSpec
from .weights import load_weights
from .zoo import build_from_spec, build_with_weights, list_models, model_entry, resolve_spec

__all__ = ["PUBLISHED_WEIGHTS", "ModelSpec", "PublishedWeights", "Segmenter", "build_from_spec", "build_model",
           "build_with_weights", "list_models", "load_weights", "model_entry", "published_weights", "resolve_spec"]
