"""Training and evaluation take the task from the model's spec and the loss from the config."""

import dataclasses
import json

import pytest
import torch
from torch.utils.data import TensorDataset
from torchmetrics import classification as tm

import deeplab.engine.train as train_module
from deeplab import create_model
from deeplab.config import load_config
from deeplab.data import eval_transforms
from deeplab.data.demo import BinaryDemoDataset
from deeplab.data.stats import median_frequency_weights
from deeplab.engine import dist
from deeplab.engine.class_weights import resolve_class_weights
from deeplab.engine.evaluate import evaluate_predictor
from deeplab.inference import Predictor
from deeplab.modelfile import load_checkpoint

from .conftest import TINY


def _with_task(model, task):
    model.spec = dataclasses.replace(model.spec, task=task)
    return model


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    """A 4-step binary run (disks as foreground) with ce + dice and automatic class weights."""
    run = tmp_path_factory.mktemp("binary") / "run"
    cfg = load_config(None, [*TINY, f"train.run_dir={run}", "train.loss=ce+dice", "train.class_weights=auto"])
    patch = pytest.MonkeyPatch()
    patch.setattr(train_module, "model_from_config",
                  lambda config, num_classes: _with_task(create_model(config.model.name, num_classes=1), "binary"))
    patch.setattr(train_module, "build_train_val", lambda data, **_: tuple(
        BinaryDemoDataset(split=split, num_images=4, image_size=65) for split in ("train", "val")))
    try:
        result = train_module.train(cfg)
    finally:
        patch.undo()
    return result, run


def test_binary_training_uses_the_configured_loss_and_weights(binary_run):
    result, run = binary_run
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    masks = [BinaryDemoDataset(split="train", num_images=4, image_size=65).load(i)[1] for i in range(4)]
    counts = torch.bincount(torch.cat([m.flatten() for m in masks]).long(), minlength=2).tolist()
    weights = median_frequency_weights(counts)
    assert records[0]["class_weights"] == pytest.approx(weights)
    assert records[0]["loss_terms"] == ("1 x ce + 1 x dice (binary, ignore_index 255, aux weight 0.4, class weights "
                                        + ", ".join(f"{w:.3g}" for w in weights) + ")")
    evaluations = [r for r in records if "metrics" in r]
    assert [r["step"] for r in evaluations] == [2, 4]
    assert evaluations[-1]["metrics"]["task"] == "binary"
    assert list(evaluations[-1]["metrics"]["per_class_iou"]) == ["disk"]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r and isinstance(r["loss"], float))


def test_binary_validation_is_the_foreground_iou_of_the_thresholded_sigmoid(binary_run):
    result, run = binary_run
    model, checkpoint = load_checkpoint(run / "last.pt")
    assert model.spec.task == "binary" and result.last_metrics["task"] == "binary"
    val = BinaryDemoDataset(split="val", num_images=4, image_size=65,
                            transforms=eval_transforms(mean=model.spec.mean, std=model.spec.std))
    images, masks = zip(*(val[i] for i in range(len(val))), strict=True)
    with torch.no_grad():
        probs = torch.sigmoid(model(torch.stack(images)))[:, 0]
    masks = torch.stack(masks)
    # After 4 steps every sigmoid is near 0.49: a threshold at their median makes both labels common.
    threshold = probs.median().item()
    cfg = load_config(None, [*TINY, f"eval.threshold={threshold}"])
    metrics = train_module.validate(model, val, cfg, dist.DistEnv(), torch.device("cpu"))
    assert len(metrics["per_class_iou"]) == 1 and metrics["miou"] > 0 and 0.2 < metrics["pixel_accuracy"] < 0.8

    def ref(metric):  # the loop evaluates through the fast (BN-folded) path: a pixel at the threshold may flip
        return pytest.approx(metric(threshold=threshold)(probs, masks).item(), abs=5e-3)

    assert metrics["miou"] == ref(tm.BinaryJaccardIndex)
    assert metrics["mdice"] == ref(tm.BinaryF1Score)
    assert metrics["mprecision"] == ref(tm.BinaryPrecision)
    assert metrics["pixel_accuracy"] == ref(tm.BinaryAccuracy)


def test_multilabel_evaluation_is_per_label_and_equals_torchmetrics():
    torch.manual_seed(0)
    model = _with_task(create_model("deeplabv3plus_mobilenetv2", num_classes=3), "multilabel").eval()
    images = torch.randn(4, 3, 33, 33)
    masks = torch.randint(0, 2, (4, 3, 33, 33))
    masks[:, :, :5] = 255
    predictor = Predictor(model, num_classes=3)
    metrics = evaluate_predictor(predictor, TensorDataset(images, masks), batch_size=2, progress=False,
                                 threshold=0.4)
    probs = torch.sigmoid(predictor.logits_for_batch(images))
    reference = tm.MultilabelJaccardIndex(num_labels=3, threshold=0.4, average="none", ignore_index=255)
    assert metrics["task"] == "multilabel"
    assert metrics["per_class_iou"] == pytest.approx(reference(probs, masks).tolist(), abs=1e-6)
    recall = tm.MultilabelRecall(num_labels=3, threshold=0.4, average="none", ignore_index=255)(probs, masks)
    assert metrics["per_class_recall"] == pytest.approx(recall.tolist(), abs=1e-6)
    assert torch.tensor(metrics["confusion_matrix"]).shape == (3, 2, 2)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        evaluate_predictor(predictor, TensorDataset(images, masks), progress=False, threshold=1.0)


def test_class_weights_given_or_none_and_bad_settings():
    dataset = BinaryDemoDataset(split="train", num_images=1, image_size=33)
    assert resolve_class_weights([1, 2], dataset, task="binary") == [1.0, 2.0]
    assert resolve_class_weights(None, dataset, task="binary") is None
    with pytest.raises(ValueError, match="train.class_weights='median': expected a list of numbers .* or 'auto'"):
        resolve_class_weights("median", dataset, task="binary")
