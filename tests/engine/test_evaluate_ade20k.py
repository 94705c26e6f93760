"""The zoo's ADE20K protocol in deeplab eval's path: the reference's resize to range, and its 151 outputs against
the dataset's 150 classes + ignore (issue 28)."""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from deeplab.classes import ADE20K_CLASSES_WITH_OTHER
from deeplab.config import load_config
from deeplab.engine.evaluate import evaluate_on_config
from deeplab.inference import Predictor
from deeplab.models.spec import ModelSpec
from tests.data.layouts import ADE_VALUES, H, W, make_ade20k

REPO = Path(__file__).resolve().parents[2]


class Wall(nn.Module):
    """Predicts output 1 (the zoo's "wall", the dataset's class 0) everywhere; records the input sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        logits = torch.zeros(x.shape[0], 151, *x.shape[-2:])
        logits[:, 1] = 1.0
        return logits


def test_ade20k_config_resizes_to_range_and_maps_the_151_outputs(tmp_path):
    make_ade20k(tmp_path / "ade", n_train=1, n_val=1)
    # the zoo config with a small range: 20 x 30 -> longer side 33, both sides 16k + 1 -> 33 x 33
    config = load_config(REPO / "configs" / "eval" / "tf_zoo_ade20k_os8_ms_flip.yaml", [
        f"data.root={tmp_path / 'ade'}", "data.num_workers=0", "eval.min_resize_value=33",
        "eval.max_resize_value=33"])
    assert (config.eval.resize_factor, config.eval.pad_to, config.eval.output_stride) == (16, [513, 513], 8)
    model = Wall()
    predictor = Predictor(model, num_classes=151, classes=ADE20K_CLASSES_WITH_OTHER, fast=False,
                          spec=ModelSpec("wall", 151, 8, {}), pad_to=(40, 40))
    metrics, classes = evaluate_on_config(predictor, config, "wall", progress=False)
    assert classes[:2] == ["other", "wall"] and model.sizes == [(40, 40)]
    # the label as the reference resizes it (nearest, align_corners): rows round(i * 19 / 32), cols round(j * 29 / 32)
    label = np.resize(ADE_VALUES, (H, W))
    rows = np.floor(np.arange(33) * (H - 1) / 32 + 0.5).astype(int)
    cols = np.floor(np.arange(33) * (W - 1) / 32 + 0.5).astype(int)
    resized = label[rows][:, cols]
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (151, 151) and cm.sum() == (resized != 0).sum()  # label 0 ("other") is not scored
    expected = np.bincount(resized[resized != 0], minlength=151)[:151]  # PNG label k is output k
    np.testing.assert_array_equal(cm[:, 1], expected)
    assert cm[:, [0, *range(2, 151)]].sum() == 0
