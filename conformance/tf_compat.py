"""Runs the authors' TF1 DeepLab code (tensorflow/models ``research``) under TensorFlow 2.15 in graph mode.

The reference imports ``tensorflow.contrib`` (gone since TF 2.0) and calls TF1 names (``tf.variable_scope``,
``tf.to_float``) on ``import tensorflow as tf``. ``install(research)`` makes that code importable unchanged on disk:

- ``tensorflow.contrib.{slim,framework,layers,training,quantize}`` become synthetic modules that resolve names
  against ``tf_slim`` (the maintained continuation of contrib.slim);
- the reference's ``deeplab.*`` sources are compiled with ``import tensorflow as tf`` read as
  ``import tensorflow.compat.v1 as tf`` (in memory; the ``research/slim/nets`` modules already do this themselves);
- three incompatibilities of today's libraries with that old code are patched, each noted where it is done;
  and one slow path (``Variable.__hash__`` in graph mode), for speed only.

Run this with the TF venv only; it never imports the project's own ``deeplab`` package (same top-level name).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import types
import warnings
from pathlib import Path

NOTES: list[str] = []  # what was mapped, printed by tf_reference.py


class ReferenceNotFound(SystemExit):
    """The folder given as the reference is not a tensorflow/models ``research`` folder."""


def check_research(research: str | Path | None) -> Path:
    """The ``research`` folder as an absolute path, or a clear error saying what is missing."""
    if not research:
        raise ReferenceNotFound(
            "DEEPLAB_TF_REFERENCE is not set: point it at the 'research' folder of a tensorflow/models clone "
            "(the one holding deeplab/model.py and slim/nets/), e.g. ../shared/reference/tf-deeplab/research")
    root = Path(research).expanduser().resolve()
    needed = ["deeplab/model.py", "deeplab/common.py", "deeplab/core/feature_extractor.py",
              "slim/nets/resnet_utils.py", "slim/nets/mobilenet/mobilenet_v2.py"]
    missing = [name for name in needed if not (root / name).is_file()]
    if missing:
        raise ReferenceNotFound(
            f"DEEPLAB_TF_REFERENCE={research}: not a tensorflow/models 'research' folder; "
            f"missing {', '.join(missing)}")
    return root


class _Delegate(types.ModuleType):
    """A package whose attributes come from other modules, looked up in order on first use."""

    def __init__(self, name: str, sources: list[types.ModuleType], **extra: object) -> None:
        super().__init__(name)
        self.__path__: list[str] = []  # a package, so that submodules can be registered under it
        self._sources = sources
        self.__dict__.update(extra)

    def __getattr__(self, attr: str) -> object:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for source in self._sources:
            if hasattr(source, attr):
                return getattr(source, attr)
        raise AttributeError(f"{self.__name__}.{attr}: no equivalent in {[s.__name__ for s in self._sources]}")


class _HParams:
    """What deeplab's NAS code uses of ``tf.contrib.training.HParams``: a bag of attributes."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)

    def values(self) -> dict[str, object]:
        return dict(self.__dict__)

    def set_hparam(self, name: str, value: object) -> None:
        setattr(self, name, value)

    add_hparam = set_hparam


def _unavailable(*_args: object, **_kwargs: object) -> None:
    raise NotImplementedError("tf.contrib.quantize does not exist in TensorFlow 2 (not needed for inference)")


def _register(name: str, module: types.ModuleType) -> types.ModuleType:
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return module


def _install_contrib() -> None:
    import tensorflow as tf
    import tf_slim

    slim_layers = importlib.import_module("tf_slim.layers.layers")
    slim_utils = importlib.import_module("tf_slim.layers.utils")
    slim_variables = importlib.import_module("tf_slim.ops.variables")
    slim_arg_scope = importlib.import_module("tf_slim.ops.arg_scope")
    slim_initializers = importlib.import_module("tf_slim.layers.initializers")
    slim_regularizers = importlib.import_module("tf_slim.layers.regularizers")

    contrib = _register("tensorflow.contrib", _Delegate("tensorflow.contrib", []))
    _register("tensorflow.contrib.slim", tf_slim)
    _register("tensorflow.contrib.slim.nets", importlib.import_module("tf_slim.nets"))
    _register("tensorflow.contrib.slim.nets.resnet_utils", importlib.import_module("tf_slim.nets.resnet_utils"))
    _register("tensorflow.contrib.framework",
              _Delegate("tensorflow.contrib.framework", [slim_arg_scope, slim_variables, tf_slim]))
    _register("tensorflow.contrib.layers",
              _Delegate("tensorflow.contrib.layers",
                        [slim_layers, slim_initializers, slim_regularizers, tf_slim.layers, tf_slim]))
    _register("tensorflow.contrib.layers.python", _Delegate("tensorflow.contrib.layers.python", []))
    _register("tensorflow.contrib.layers.python.layers",
              _Delegate("tensorflow.contrib.layers.python.layers", [slim_layers]))
    _register("tensorflow.contrib.layers.python.layers.layers", slim_layers)
    _register("tensorflow.contrib.layers.python.layers.utils", slim_utils)
    _register("tensorflow.contrib.training", _Delegate("tensorflow.contrib.training", [], HParams=_HParams))
    _register("tensorflow.contrib.quantize",
              _Delegate("tensorflow.contrib.quantize", [], create_training_graph=_unavailable,
                        create_eval_graph=_unavailable, experimental_create_training_graph=_unavailable,
                        experimental_create_eval_graph=_unavailable))
    tf.contrib = contrib
    tf.compat.v1.contrib = contrib
    NOTES.append("tensorflow.contrib.{slim,framework,layers,training,quantize} -> tf_slim (+ HParams bag, "
                 "quantize stubs)")


class _CompatV1Loader(importlib.machinery.SourceFileLoader):
    """Compiles a reference module with ``import tensorflow as tf`` meaning the TF1 API."""

    def source_to_code(self, data, path, *, _optimize=-1):  # type: ignore[override]
        text = importlib.util.decode_source(data)
        text = text.replace("\nimport tensorflow as tf\n", "\nimport tensorflow.compat.v1 as tf\n")
        return compile(text, path, "exec", dont_inherit=True, optimize=_optimize)

    def get_code(self, fullname):  # type: ignore[override]
        # Bypass the bytecode cache: a cached .pyc of the unmodified source must never be used.
        return self.source_to_code(self.get_data(self.get_filename(fullname)), self.get_filename(fullname))

    def exec_module(self, module: types.ModuleType) -> None:
        super().exec_module(module)
        if module.__name__ == "deeplab.core.conv2d_ws":
            _patch_conv2d_ws(module)


def _patch_conv2d_ws(module: types.ModuleType) -> None:
    # Its Keras Conv2D subclass calls the private `_convolution_op` of tf.keras <= 2.5; Keras 2.15 names
    # the same method `convolution_op`.
    cls = module.Conv2D
    if not hasattr(cls, "_convolution_op"):
        cls._convolution_op = lambda self, inputs, kernel: self.convolution_op(inputs, kernel)
        NOTES.append("deeplab.core.conv2d_ws.Conv2D._convolution_op -> Keras 2.15 convolution_op")


class _ReferenceFinder(importlib.abc.MetaPathFinder):
    """Finds ``deeplab`` and ``deeplab.*`` in the reference folder only, with the TF1 loader."""

    def __init__(self, research: Path) -> None:
        self.research = research

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[override]
        if fullname != "deeplab" and not fullname.startswith("deeplab."):
            return None
        base = self.research.joinpath(*fullname.split("."))
        if (base / "__init__.py").is_file():
            return importlib.util.spec_from_file_location(
                fullname, base / "__init__.py", loader=_CompatV1Loader(fullname, str(base / "__init__.py")),
                submodule_search_locations=[str(base)])
        if base.with_suffix(".py").is_file():
            file = str(base.with_suffix(".py"))
            return importlib.util.spec_from_file_location(fullname, file, loader=_CompatV1Loader(fullname, file))
        return None


def _patch_libraries() -> None:
    import numpy as np

    # research/slim/nets/mobilenet/mobilenet_v3.py (imported by feature_extractor) calls np.int, removed in
    # NumPy 1.24; only its v3 models reach that call, but the name must exist.
    if "int" not in np.__dict__:
        np.int = int  # type: ignore[attr-defined]
        NOTES.append("numpy.int -> int (removed in NumPy 1.24)")
    # tf_slim.batch_norm goes through tensorflow/python/layers/normalization.py, which in TF 2.15 lazily imports
    # 'tf_keras.legacy_tf_layers.normalization'; without the tf_keras package that import fails. Keras 2.15
    # ships the same legacy layer under keras.src.
    try:
        importlib.import_module("tf_keras.legacy_tf_layers.normalization")
    except ImportError:
        legacy = importlib.import_module("keras.src.legacy_tf_layers.normalization")
        sys.modules["tf_keras.legacy_tf_layers.normalization"] = legacy
        NOTES.append("tf_keras.legacy_tf_layers.normalization -> keras.src.legacy_tf_layers.normalization")


def _patch_variable_hash() -> None:
    """A reused layer (predict_labels_multi_scale builds the network once per scale and flip) hashes every global
    variable for each weight it adds, and each hash asks TensorFlow whether it runs eagerly: building 12 copies of
    Xception-65 took 15 minutes. With eager execution off (``install``), ``Variable.__hash__`` is ``id(self)``
    anyway; this answers that directly."""
    from tensorflow.python.ops import variables

    original = variables.Variable.__dict__["__hash__"]
    classes, stack = [], [variables.Variable]
    while stack:
        cls = stack.pop()
        classes.append(cls)
        stack.extend(cls.__subclasses__())
    for cls in classes:
        if cls.__dict__.get("__hash__") is original:
            cls.__hash__ = object.__hash__
    NOTES.append("tf.Variable.__hash__ -> id (what it returns in graph mode, without asking for eager mode each time)")


def install(research: str | Path | None) -> Path:
    """Makes ``import deeplab.model`` load the reference under ``research``, in TF1 graph mode."""
    root = check_research(research)
    if "deeplab" in sys.modules and not str(getattr(sys.modules["deeplab"], "__file__", "")).startswith(str(root)):
        raise RuntimeError("another 'deeplab' package is already imported; run this with the TF venv's python")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ info/warnings (oneDNN, CPU features)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # the TF1 API's deprecation notices, one per old call
    warnings.filterwarnings("ignore", module=r"(tensorflow|keras|tf_slim)\.")
    tf.compat.v1.disable_eager_execution()
    _patch_libraries()
    _patch_variable_hash()
    _install_contrib()
    slim_dir = str(root / "slim")  # research/slim holds the `nets` package the reference imports
    if slim_dir not in sys.path:
        sys.path.insert(0, slim_dir)
    sys.meta_path.insert(0, _ReferenceFinder(root))
    NOTES.append(f"deeplab.* from {root} with 'import tensorflow as tf' read as tensorflow.compat.v1")
    return root
