"""A binary model behind the server: 0/1 maps at the threshold, the task in /info; what it refuses to serve."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import deeplab
from deeplab.imageio import read_image
from deeplab.serve import create_app
from tests.fixtures import with_random_statistics

from .conftest import demo_image


def _model(**options):
    torch.manual_seed(0)
    return with_random_statistics(deeplab.create_model("deeplabv3_mobilenetv2", **options)).eval()


def test_binary_model_serves_foreground_maps():
    data = io.BytesIO()
    Image.fromarray(demo_image(0, 65)).save(data, format="PNG")
    model = _model(task="binary")
    image = read_image(io.BytesIO(data.getvalue()))
    probe = deeplab.Predictor(model, num_classes=1, fast=False)
    threshold = float(probe.logits_for_batch(probe.preprocess(image)).sigmoid().median())
    predictor = deeplab.Predictor(model, num_classes=1, classes=["cell"], fast=False, threshold=threshold)
    with TestClient(create_app(predictor)) as client:
        info = client.get("/info").json()
        assert info["task"] == "binary" and [c["name"] for c in info["classes"]] == ["background", "cell"]
        answer = client.post("/predict", files={"file": ("a.png", data.getvalue(), "image/png")}).json()
        expected = predictor.predict(image)
        assert set(expected.unique().tolist()) == {0, 1}
        fractions = {c["name"]: c["fraction"] for c in answer["classes"]}
        assert fractions["cell"] == pytest.approx(expected.float().mean().item(), abs=1e-6)
        mask = np.asarray(Image.open(io.BytesIO(client.get(answer["links"]["mask"]).content)))
        assert np.array_equal(mask, expected.numpy())


@pytest.mark.parametrize(("options", "message"), [
    ({"task": "multilabel", "num_classes": 2}, "a multilabel model's pixels may hold several"),
    ({"in_channels": 4, "num_classes": 2}, "this model reads 4 channels"),
])
def test_what_serve_cannot_show_is_refused_clearly(options, message):
    model = _model(**options)
    with pytest.raises(ValueError, match=message):
        create_app(deeplab.Predictor(model, num_classes=2, fast=False))
