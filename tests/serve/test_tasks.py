"""Binary and multilabel models behind the server; a model of other input channels is refused."""

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


def test_multilabel_model_serves_per_class_areas_and_a_bit_packed_mask():
    data = io.BytesIO()
    Image.fromarray(demo_image(1, 65)).save(data, format="PNG")
    image = read_image(io.BytesIO(data.getvalue()))
    model = _model(task="multilabel", num_classes=3)
    probe = deeplab.Predictor(model, num_classes=3, fast=False)
    threshold = float(probe.logits_for_batch(probe.preprocess(image)).sigmoid().median())
    predictor = deeplab.Predictor(model, num_classes=3, classes=["a", "b", "c"], fast=False, threshold=threshold)
    expected = predictor.predict(image)  # 3 x H x W, 0/1
    with TestClient(create_app(predictor)) as client:
        answer = client.post("/predict", files={"file": ("m.png", data.getvalue(), "image/png")}).json()
        assert (answer["width"], answer["height"]) == (65, 65)
        fractions = {c["name"]: c["fraction"] for c in answer["classes"]}
        for index, name in enumerate("abc"):
            assert fractions.get(name, 0.0) == pytest.approx(expected[index].float().mean().item(), abs=1e-6)
        packed = np.asarray(Image.open(io.BytesIO(client.get(answer["links"]["mask"]).content)))
        assert np.array_equal(packed, (expected * torch.tensor([1, 2, 4]).view(3, 1, 1)).sum(0).numpy())
        overlay = client.post("/predict?format=overlay", files={"file": ("m.png", data.getvalue(), "image/png")})
        assert overlay.status_code == 200 and np.asarray(Image.open(io.BytesIO(overlay.content))).shape == (65, 65, 3)


def test_a_model_of_other_channels_is_refused_clearly():
    model = _model(in_channels=4, num_classes=2)
    with pytest.raises(ValueError, match="this model reads 4 channels"):
        create_app(deeplab.Predictor(model, num_classes=2, fast=False))
