"""The public API: the names the README promises, and a light import."""

import subprocess
import sys

import pytest

import deeplab


def test_public_names_resolve_to_the_library_objects():
    from deeplab.deploy.export import export_model
    from deeplab.engine.evaluate import evaluate
    from deeplab.engine.train import train
    from deeplab.inference import Predictor
    from deeplab.modelfile import load_checkpoint

    assert (deeplab.train, deeplab.evaluate, deeplab.Predictor, deeplab.load_checkpoint, deeplab.export_model) == (
        train, evaluate, Predictor, load_checkpoint, export_model)
    assert "deeplabv3plus_resnet101" in deeplab.list_models() and deeplab.__version__
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        deeplab.nonsense  # noqa: B018


def test_importing_the_models_does_not_import_the_training_stack():
    code = "import sys, deeplab; print('deeplab.engine.train' in sys.modules, 'deeplab.data.demo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
