import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deeplab.metrics import confusion_matrix, format_metrics_table, metrics_to_json, segmentation_metrics

# 2 x 3 example with one ignored pixel. Kept (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,0).
TARGET = torch.tensor([[0, 0, 1], [1, 255, 2]])
PRED = torch.tensor([[0, 1, 1], [1, 0, 0]])
EXPECTED_CM = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 0]])


def test_confusion_matrix_hand_example_skips_ignored_pixels():
    cm = confusion_matrix(PRED, TARGET, num_classes=3)
    assert cm.dtype == torch.int64
    assert torch.equal(cm, EXPECTED_CM)


def test_confusion_matrix_custom_ignore_index():
    target = torch.tensor([0, 1, 2, 2])
    pred = torch.tensor([0, 1, 0, 1])
    cm = confusion_matrix(pred, target, num_classes=3, ignore_index=2)
    assert torch.equal(cm, torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0]]))


def test_confusion_matrix_accepts_uint8_and_batched_shapes():
    cm = confusion_matrix(PRED.unsqueeze(0).to(torch.uint8), TARGET.unsqueeze(0).to(torch.uint8), 3)
    assert torch.equal(cm, EXPECTED_CM)


def test_confusion_matrix_rejects_out_of_range_target_naming_values():
    target = torch.tensor([0, 7, 3, 255])
    with pytest.raises(ValueError, match=r"target.*\[3, 7\]"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), target, num_classes=3)


def test_confusion_matrix_rejects_out_of_range_pred():
    with pytest.raises(ValueError, match=r"pred.*\[-1\]"):
        confusion_matrix(torch.tensor([0, -1]), torch.tensor([0, 1]), num_classes=3)


def test_confusion_matrix_ignores_pred_values_at_ignored_pixels():
    cm = confusion_matrix(torch.tensor([0, 99]), torch.tensor([0, 255]), num_classes=2)
    assert torch.equal(cm, torch.tensor([[1, 0], [0, 0]]))


def test_confusion_matrix_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), num_classes=2)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 2, 3, 255])), min_size=1, max_size=40))
def test_confusion_matrix_matches_pixel_loop(pairs):
    pred = torch.tensor([p for p, _ in pairs])
    target = torch.tensor([t for _, t in pairs])
    expected = torch.zeros(4, 4, dtype=torch.long)
    for p, t in pairs:
        if t != 255:
            expected[t, p] += 1
    assert torch.equal(confusion_matrix(pred, target, num_classes=4), expected)


def test_confusion_matrices_add_up_over_batches():
    first = confusion_matrix(PRED[:1], TARGET[:1], 3)
    second = confusion_matrix(PRED[1:], TARGET[1:], 3)
    assert torch.equal(first + second, EXPECTED_CM)


def test_metrics_hand_computed():
    # tp = [1, 2, 0], gt = [2, 2, 1], pred = [2, 3, 0], union = [3, 3, 1]
    m = segmentation_metrics(EXPECTED_CM)
    assert m["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert m["miou"] == pytest.approx(1 / 3)
    assert m["pixel_accuracy"] == pytest.approx(3 / 5)
    assert m["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["fw_iou"] == pytest.approx(2 / 5 * 1 / 3 + 2 / 5 * 2 / 3 + 1 / 5 * 0)
    assert m["num_valid_classes"] == 3
    assert m["absent_classes"] == []


def _with_absent_class() -> torch.Tensor:
    cm = torch.zeros(4, 4, dtype=torch.long)
    cm[:3, :3] = EXPECTED_CM
    return cm


def test_class_absent_from_gt_and_prediction_is_left_out_and_reported():
    m = segmentation_metrics(_with_absent_class())
    assert math.isnan(m["per_class_iou"][3])
    assert m["absent_classes"] == [3]
    assert m["num_valid_classes"] == 3
    assert m["miou"] == pytest.approx(1 / 3)
    assert m["mean_class_accuracy"] == pytest.approx(0.5)
    assert m["fw_iou"] == pytest.approx(0.4)


def test_class_only_in_prediction_counts_zero_iou_but_not_in_class_accuracy():
    cm = torch.tensor([[3, 1], [0, 0]])  # class 1 predicted once, never in ground truth
    m = segmentation_metrics(cm)
    assert m["per_class_iou"] == pytest.approx([3 / 4, 0.0])
    assert m["miou"] == pytest.approx(3 / 8)
    assert m["mean_class_accuracy"] == pytest.approx(3 / 4)
    assert m["absent_classes"] == []


def test_empty_confusion_matrix_gives_nan_not_errors():
    m = segmentation_metrics(torch.zeros(2, 2, dtype=torch.long))
    assert math.isnan(m["miou"]) and math.isnan(m["pixel_accuracy"]) and math.isnan(m["fw_iou"])
    assert m["absent_classes"] == [0, 1]
    assert all(value is None for value in metrics_to_json(m, ["a", "b"])["per_class_iou"].values())


def test_metrics_reject_non_square_matrix():
    with pytest.raises(ValueError, match="square"):
        segmentation_metrics(torch.zeros(2, 3))


def test_format_metrics_table():
    names = ["background", "cat", "dog", "zebra"]
    table = format_metrics_table(segmentation_metrics(_with_absent_class()), names)
    lines = table.splitlines()
    assert lines[0].split() == ["class", "IoU", "%", "Dice", "%", "Prec", "%", "Recall", "%"]
    # tp = [1, 2, 0], gt = [2, 2, 1], pred = [2, 3, 0]
    assert lines[2].split() == ["background", "33.33", "50.00", "50.00", "50.00"]
    assert lines[3].split() == ["cat", "66.67", "80.00", "66.67", "100.00"]
    assert lines[4].split() == ["dog", "0.00", "0.00", "—", "0.00"]
    assert lines[5].split() == ["zebra", "absent", "absent", "—", "—"]
    assert "mIoU                 33.33 (over 3 of 4 classes)" in table
    assert "mean Dice/F1         43.33" in table
    assert "mean precision       58.33" in table
    assert "mean recall          50.00" in table
    assert "pixel accuracy       60.00" in table
    assert "mean class accuracy  50.00" in table
    assert "frequency-weighted   40.00" in table
    assert "absent from both ground truth and prediction: zebra." in table


def test_format_metrics_table_without_absent_classes_says_so():
    table = format_metrics_table(segmentation_metrics(EXPECTED_CM), ["a", "b", "c"])
    assert "none was left out" in table


def test_format_metrics_table_checks_name_count():
    with pytest.raises(ValueError, match="class names"):
        format_metrics_table(segmentation_metrics(EXPECTED_CM), ["a", "b"])


def test_metrics_to_json_is_nan_free_and_keyed_by_name():
    names = ["background", "cat", "dog", "zebra"]
    out = metrics_to_json(segmentation_metrics(_with_absent_class()), names)
    json.dumps(out, allow_nan=False)  # raises on NaN / inf
    assert set(out) == {"task", "miou", "mdice", "mprecision", "mrecall", "pixel_accuracy", "mean_class_accuracy",
                        "fw_iou", "per_class_iou", "per_class_dice", "per_class_precision", "per_class_recall",
                        "absent_classes"}
    assert out["task"] == "multiclass"
    assert out["miou"] == pytest.approx(1 / 3)
    assert out["per_class_iou"]["cat"] == pytest.approx(2 / 3)
    assert out["per_class_dice"]["cat"] == pytest.approx(0.8)
    assert out["per_class_precision"]["dog"] is None  # never predicted
    assert out["per_class_iou"]["zebra"] is None
    assert out["absent_classes"] == ["zebra"]


def test_boundary_band_is_the_trimap_around_label_changes():
    from deeplab.metrics import boundary_band

    target = torch.zeros(9, 12, dtype=torch.long)
    target[:, 6:] = 1  # one vertical boundary between columns 5 and 6
    assert boundary_band(target, 0).nonzero()[:, 1].unique().tolist() == [5, 6]
    band = boundary_band(target, 2)
    assert band.shape == target.shape and band[:, 3:9].all() and not band[:, :3].any() and not band[:, 9:].any()
    assert boundary_band(target.unsqueeze(0).repeat(2, 1, 1), 2).shape == (2, 9, 12)
    assert not boundary_band(torch.zeros(5, 5, dtype=torch.long), 3).any()
    assert boundary_band(target, 100).all()
    with pytest.raises(ValueError, match="band width must be >= 0"):
        boundary_band(target, -1)


# ---------------------------------------------------------------- every task, against torchmetrics

from torchmetrics import classification as tm  # noqa: E402  (test-only reference implementation)

from deeplab.metrics import labels_from_logits, task_confusion, task_metrics  # noqa: E402


def _logits_and_target(task: str, seed: int, classes: int = 4):
    gen = torch.Generator().manual_seed(seed)
    channels = 1 if task == "binary" else classes
    logits = torch.randn(3, channels, 17, 19, generator=gen)
    shape = (3, classes, 17, 19) if task == "multilabel" else (3, 17, 19)
    target = torch.randint(0, classes if task == "multiclass" else 2, shape, generator=gen)
    target[torch.rand(shape, generator=gen) < 0.15] = 255
    return logits, target


def _ours(task, logits, target, classes=4):
    pred = labels_from_logits(logits, task)
    # accumulated over two batches, as evaluation does
    cm = sum(task_confusion(pred[i:i + 2], target[i:i + 2], task=task, num_classes=classes) for i in (0, 2))
    return task_metrics(cm, task)


def _check(ours, reference, **kwargs):
    value = reference(**kwargs)
    assert ours == pytest.approx(value.tolist() if value.ndim else value.item(), abs=1e-6)


def test_multiclass_metrics_equal_torchmetrics():
    logits, target = _logits_and_target("multiclass", seed=0)
    m = _ours("multiclass", logits, target)
    pred = logits.argmax(1)

    def ref(metric, **kwargs):
        return metric(num_classes=4, ignore_index=255, **kwargs)(pred, target)

    assert m["per_class_iou"] == pytest.approx(ref(tm.MulticlassJaccardIndex, average="none").tolist())
    assert m["per_class_dice"] == pytest.approx(ref(tm.MulticlassF1Score, average="none").tolist())
    assert m["per_class_precision"] == pytest.approx(ref(tm.MulticlassPrecision, average="none").tolist())
    assert m["per_class_recall"] == pytest.approx(ref(tm.MulticlassRecall, average="none").tolist())
    assert m["miou"] == pytest.approx(ref(tm.MulticlassJaccardIndex, average="macro").item())
    assert m["mdice"] == pytest.approx(ref(tm.MulticlassF1Score, average="macro").item())
    assert m["mprecision"] == pytest.approx(ref(tm.MulticlassPrecision, average="macro").item())
    assert m["mrecall"] == pytest.approx(ref(tm.MulticlassRecall, average="macro").item())
    assert m["fw_iou"] == pytest.approx(ref(tm.MulticlassJaccardIndex, average="weighted").item())
    assert m["pixel_accuracy"] == pytest.approx(ref(tm.MulticlassAccuracy, average="micro").item())
    assert m["mean_class_accuracy"] == pytest.approx(ref(tm.MulticlassAccuracy, average="macro").item())


def test_binary_metrics_are_the_foregrounds_and_equal_torchmetrics():
    logits, target = _logits_and_target("binary", seed=1)
    m = _ours("binary", logits, target)
    probs = torch.sigmoid(logits[:, 0])
    for ours, metric in (("miou", tm.BinaryJaccardIndex), ("mdice", tm.BinaryF1Score),
                         ("mprecision", tm.BinaryPrecision), ("mrecall", tm.BinaryRecall),
                         ("pixel_accuracy", tm.BinaryAccuracy)):
        assert m[ours] == pytest.approx(metric(ignore_index=255)(probs, target).item()), ours
    assert m["per_class_iou"] == [m["miou"]] and m["task"] == "binary"
    two_class = tm.MulticlassJaccardIndex(num_classes=2, average="weighted", ignore_index=255)
    assert m["fw_iou"] == pytest.approx(two_class((probs > 0.5).long(), target).item())
    assert metrics_to_json(m, ["background", "crack"])["per_class_iou"] == {"crack": pytest.approx(m["miou"])}
    assert "foreground IoU" in format_metrics_table(m, ["crack"]).splitlines()[4]


def test_multilabel_metrics_are_per_label_and_equal_torchmetrics():
    logits, target = _logits_and_target("multilabel", seed=2)
    m = _ours("multilabel", logits, target)
    probs = torch.sigmoid(logits)

    def ref(metric, **kwargs):
        return metric(num_labels=4, ignore_index=255, **kwargs)(probs, target)

    assert m["per_class_iou"] == pytest.approx(ref(tm.MultilabelJaccardIndex, average="none").tolist())
    assert m["per_class_dice"] == pytest.approx(ref(tm.MultilabelF1Score, average="none").tolist())
    assert m["per_class_precision"] == pytest.approx(ref(tm.MultilabelPrecision, average="none").tolist())
    assert m["per_class_recall"] == pytest.approx(ref(tm.MultilabelRecall, average="none").tolist())
    assert m["miou"] == pytest.approx(ref(tm.MultilabelJaccardIndex, average="macro").item())
    assert m["fw_iou"] == pytest.approx(ref(tm.MultilabelJaccardIndex, average="weighted").item())
    assert m["pixel_accuracy"] == pytest.approx(ref(tm.MultilabelAccuracy, average="micro").item())


def test_labels_from_logits_and_task_errors():
    logits = torch.tensor([[[[-1.0, 0.2]]]])  # sigmoid: 0.27, 0.55
    assert labels_from_logits(logits, "binary").tolist() == [[[0, 1]]]
    assert labels_from_logits(logits, "binary", threshold=0.6).tolist() == [[[0, 0]]]
    assert labels_from_logits(logits, "multilabel").shape == (1, 1, 1, 2)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        labels_from_logits(logits, "binary", threshold=1.5)
    with pytest.raises(ValueError, match="multilabel pred and target must both be N x 3 x H x W"):
        task_confusion(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), task="multilabel", num_classes=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_class_map_is_argmax_with_ties_and_nan(dtype):
    from deeplab.metrics import class_map

    scores = torch.randint(0, 3, (2, 6, 9, 11), generator=torch.Generator().manual_seed(0)).to(dtype)  # many ties
    scores[0, 4, 2, 3] = scores[1, 1, 5, 5] = float("nan")
    assert torch.equal(class_map(scores, 1), scores.argmax(1))
    assert torch.equal(class_map(scores[0]), scores[0].argmax(0))
    assert class_map(scores, 1)[0, 2, 3] == 4  # NaN wins, as in argmax
    assert torch.equal(labels_from_logits(scores), scores.argmax(1))
