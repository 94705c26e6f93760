"""The public API: the names the README promises (tests/test_imports.py checks that `import deeplab` stays light)."""

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

