import pytest
import torch
import torch.nn.functional as F

from deeplab.losses import segmentation_loss


def _batch(seed: int = 0, classes: int = 4, size: tuple[int, int] = (6, 5)):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, *size, generator=gen, requires_grad=True)
    target = torch.randint(0, classes, (2, *size), generator=gen)
    target[0, :2] = 255
    return logits, target


def test_equals_cross_entropy_with_ignore_index():
    logits, target = _batch()
    expected = F.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(segmentation_loss(logits, target), expected)


def test_gradient_equals_cross_entropy_gradient():
    logits, target = _batch(seed=1)
    segmentation_loss(logits, target).backward()
    ours = logits.grad.clone()
    logits.grad = None
    F.cross_entropy(logits, target, ignore_index=255).backward()
    torch.testing.assert_close(ours, logits.grad)


def test_custom_ignore_index():
    logits, target = _batch(seed=2)
    target[target == 255] = 0
    target[1, -1] = 3
    expected = F.cross_entropy(logits, target, ignore_index=3)
    torch.testing.assert_close(segmentation_loss(logits, target, ignore_index=3), expected)


def test_low_resolution_aux_logits_are_upsampled_and_weighted():
    logits, target = _batch(seed=3, size=(8, 8))
    aux = torch.randn(2, 4, 4, 4, requires_grad=True)
    upsampled = F.interpolate(aux, size=(8, 8), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(logits, target, ignore_index=255) + 0.25 * F.cross_entropy(
        upsampled, target, ignore_index=255
    )
    loss = segmentation_loss({"out": logits, "aux": aux}, target, aux_weight=0.25)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert aux.grad is not None and aux.grad.abs().sum() > 0


def test_default_aux_weight_is_0_4():
    logits, target = _batch(seed=4)
    aux = torch.randn_like(logits)
    main = F.cross_entropy(logits, target, ignore_index=255)
    extra = F.cross_entropy(aux, target, ignore_index=255)
    torch.testing.assert_close(segmentation_loss({"out": logits, "aux": aux}, target), main + 0.4 * extra)


def test_all_ignored_batch_gives_zero_loss_that_backpropagates():
    logits, target = _batch(seed=5)
    target.fill_(255)
    aux = torch.randn(2, 4, 3, 3, requires_grad=True)
    loss = segmentation_loss({"out": logits, "aux": aux}, target)
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert torch.equal(aux.grad, torch.zeros_like(aux))


def test_uint8_target_is_accepted():
    logits, target = _batch(seed=6)
    expected = F.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(segmentation_loss(logits, target.to(torch.uint8)), expected)


def test_shape_mismatch_is_a_clear_error():
    logits, target = _batch()
    with pytest.raises(ValueError, match="N x H x W"):
        segmentation_loss(logits, target[:, :3])


def test_every_output_but_aux_has_weight_one():
    logits, target = _batch(seed=7)
    half = torch.randn(2, 4, 3, 3, requires_grad=True)
    upsampled = F.interpolate(half, size=target.shape[-2:], mode="bilinear", align_corners=False)
    expected = F.cross_entropy(logits, target, ignore_index=255) + F.cross_entropy(upsampled, target, ignore_index=255)
    loss = segmentation_loss({"out": logits, "scale_0.5": half}, target, aux_weight=0.1)
    torch.testing.assert_close(loss, expected)


def test_halves_normalised_by_the_global_count_add_up_to_the_whole_batch():
    """What each of two data-parallel processes computes (DDP then averages their gradients)."""
    from deeplab.losses import labelled_pixels

    logits, target = _batch(seed=7)
    target[1, 3:] = 255  # the halves have different numbers of labelled pixels
    whole = segmentation_loss(logits, target)
    count = labelled_pixels(target)
    halves = [segmentation_loss(logits[i:i + 1], target[i:i + 1], normalizer=count / 2) for i in (0, 1)]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole)
    mean_of_means = (segmentation_loss(logits[:1], target[:1]) + segmentation_loss(logits[1:], target[1:])) / 2
    assert not torch.allclose(mean_of_means, whole)  # normalising per process would be wrong here


# ---------------------------------------------------------------- build_loss: every loss, every task

import segmentation_models_pytorch.losses as smp_losses  # noqa: E402  (test-only reference implementation)

from deeplab.losses import build_loss  # noqa: E402

TASKS = ("multiclass", "binary", "multilabel")


def _task_batch(task: str, seed: int = 0, classes: int = 4, size: int = 9):
    """Random logits and a target of the task's shape with about a fifth of it ignored."""
    gen = torch.Generator().manual_seed(seed)
    channels = 1 if task == "binary" else classes
    logits = (2 * torch.randn(2, channels, size, size, generator=gen)).requires_grad_()
    shape = (2, classes, size, size) if task == "multilabel" else (2, size, size)
    target = torch.randint(0, classes if task == "multiclass" else 2, shape, generator=gen)
    target[torch.rand(shape, generator=gen) < 0.2] = 255
    return logits, target


def _loss(name, task, **options):
    channels = 1 if task == "binary" else 4
    return build_loss([{"name": name, **options}], task=task, num_classes=channels)


@pytest.mark.parametrize("task", TASKS)
def test_dice_equals_smp(task):
    logits, target = _task_batch(task, seed=10)
    expected = smp_losses.DiceLoss(task, from_logits=True, ignore_index=255)(logits, target)
    torch.testing.assert_close(_loss("dice", task)(logits, target), expected)


@pytest.mark.parametrize("task", TASKS)
def test_tversky_equals_smp(task):
    logits, target = _task_batch(task, seed=11)
    expected = smp_losses.TverskyLoss(task, from_logits=True, ignore_index=255, alpha=0.3, beta=0.7, gamma=1.5)(
        logits, target)
    torch.testing.assert_close(_loss("tversky", task, alpha=0.3, beta=0.7, gamma=1.5)(logits, target), expected)


@pytest.mark.parametrize("task", ("binary", "multilabel"))
def test_sigmoid_focal_equals_smp(task):
    logits, target = _task_batch(task, seed=12)
    # smp's binary mode flattens every (pixel, label) entry and averages over the labelled ones, as we do.
    expected = smp_losses.FocalLoss("binary", alpha=0.25, gamma=2.0, ignore_index=255)(logits, target)
    torch.testing.assert_close(_loss("focal", task, alpha=0.25)(logits, target), expected)


def test_softmax_focal_equals_modulated_nll_and_is_ce_at_gamma_0():
    logits, target = _task_batch("multiclass", seed=13)
    log_p = logits.log_softmax(1)
    expected = F.nll_loss((1 - log_p.exp()).pow(2.0) * log_p, target, ignore_index=255)
    torch.testing.assert_close(_loss("focal", "multiclass")(logits, target), expected)
    torch.testing.assert_close(_loss("focal", "multiclass", gamma=0.0)(logits, target),
                               F.cross_entropy(logits, target, ignore_index=255))


def test_lovasz_equals_smp():
    logits, target = _task_batch("multiclass", seed=14)
    torch.testing.assert_close(_loss("lovasz", "multiclass")(logits, target),
                               smp_losses.LovaszLoss("multiclass", ignore_index=255)(logits, target))
    logits, target = _task_batch("binary", seed=15)
    for per_image in (False, True):
        expected = smp_losses.LovaszLoss("binary", per_image=per_image, ignore_index=255)(logits[:, 0], target)
        torch.testing.assert_close(_loss("lovasz", "binary", per_image=per_image)(logits, target), expected)
    logits, target = _task_batch("multilabel", seed=16)
    hinge = smp_losses.LovaszLoss("binary", per_image=False, ignore_index=255)
    expected = torch.stack([hinge(logits[:, c], target[:, c]) for c in range(4)]).mean()  # the mean over labels
    torch.testing.assert_close(_loss("lovasz", "multilabel")(logits, target), expected)


@pytest.mark.parametrize("task", ("binary", "multilabel"))
def test_bce_and_ce_of_sigmoid_models_equal_smp_soft_bce(task):
    logits, target = _task_batch(task, seed=17)
    x = logits[:, 0] if task == "binary" else logits
    summed = smp_losses.SoftBCEWithLogitsLoss(ignore_index=255, reduction="sum")(x, target.float())
    expected = summed / (target != 255).sum()
    torch.testing.assert_close(_loss("bce", task)(logits, target), expected)
    torch.testing.assert_close(_loss("ce", task)(logits, target), expected)


def test_binary_ce_is_two_class_softmax_ce_with_smoothing_or_class_weights():
    """A logit x is the 2-class softmax of (0, x): bce's smoothing and weights follow torch's cross-entropy."""
    logits, target = _task_batch("binary", seed=18)
    two = torch.cat([torch.zeros_like(logits), logits], dim=1)
    count = (target != 255).sum()
    smoothed = F.cross_entropy(two, target, ignore_index=255, label_smoothing=0.2, reduction="sum") / count
    loss = build_loss({"name": "ce", "label_smoothing": 0.2}, task="binary", num_classes=1)
    torch.testing.assert_close(loss(logits, target), smoothed)
    weights = [0.3, 2.0]
    weighted = F.cross_entropy(two, target, weight=torch.tensor(weights), ignore_index=255, reduction="sum") / count
    loss = build_loss("ce", task="binary", num_classes=1, class_weights=weights)
    torch.testing.assert_close(loss(logits, target), weighted)


def test_class_weights_divide_by_labelled_pixels_as_the_tf_reference():
    logits, target = _task_batch("multiclass", seed=19)
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0])
    summed = F.cross_entropy(logits, target, weight=weights, ignore_index=255, reduction="sum")
    loss = build_loss("ce", num_classes=4, class_weights=weights.tolist())
    torch.testing.assert_close(loss(logits, target), summed / (target != 255).sum())
    multilabel_logits, multilabel_target = _task_batch("multilabel", seed=19)
    pixel = F.binary_cross_entropy_with_logits(multilabel_logits, (multilabel_target == 1).float(), reduction="none")
    expected = (pixel * weights.view(1, 4, 1, 1) * (multilabel_target != 255)).sum() / (multilabel_target != 255).sum()
    loss = build_loss("bce", task="multilabel", num_classes=4, class_weights=weights.tolist())
    torch.testing.assert_close(loss(multilabel_logits, multilabel_target), expected)


def test_top_k_percent_pixels_averages_the_hardest_pixels_like_the_tf_reference():
    logits, target = _task_batch("multiclass", seed=20)
    pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none").flatten()
    k = int(0.25 * pixel.numel())  # k counts every pixel, the ignored ones too
    loss = _loss("ce", "multiclass", top_k_percent_pixels=0.25)(logits, target)
    torch.testing.assert_close(loss, pixel.sort(descending=True).values[:k].mean())
    loss.backward()
    touched = (logits.grad.abs().sum(1) > 0).flatten()
    assert int(touched.sum()) == k  # only the mined pixels get gradients
    everything_ignored = torch.full_like(target, 255)
    assert _loss("ce", "multiclass", top_k_percent_pixels=0.25)(logits, everything_ignored).item() == 0.0


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", ["ce", "focal", "dice", "tversky", "lovasz"])
def test_ignored_pixels_change_nothing(task, name):
    logits, target = _task_batch(task, seed=21)
    loss = _loss(name, task)
    ignored = (target == 255) if task == "multilabel" else (target == 255).unsqueeze(1).expand_as(logits)
    other = logits.detach() + 5 * torch.randn_like(logits) * ignored
    torch.testing.assert_close(loss(other, target), loss(logits, target))
    loss(logits, target).backward()
    assert not logits.grad[ignored].any()


def test_weighted_list_over_main_aux_and_scales():
    logits, target = _task_batch("binary", seed=22, size=8)
    aux = torch.randn(2, 1, 4, 4, requires_grad=True)
    half = torch.randn(2, 1, 4, 4)
    up = F.interpolate(aux, size=(8, 8), mode="bilinear", align_corners=False)
    half_up = F.interpolate(half, size=(8, 8), mode="bilinear", align_corners=False)
    ce, dice = _loss("ce", "binary"), _loss("dice", "binary")
    combined = build_loss([{"name": "ce", "weight": 1}, {"name": "dice", "weight": 0.5}], task="binary",
                          num_classes=1, aux_weight=0.25)
    expected = sum(ce(x, target) + 0.5 * dice(x, target) for x in (logits, half_up)) + 0.25 * (
        ce(up, target) + 0.5 * dice(up, target))
    torch.testing.assert_close(combined({"out": logits, "aux": aux, "scale_0.5": half}, target), expected)
    shorthand = build_loss("ce+dice", task="binary", num_classes=1)
    torch.testing.assert_close(shorthand(logits, target), ce(logits, target) + dice(logits, target))
    assert combined.describe() == "1 x ce + 0.5 x dice (binary, ignore_index 255, aux weight 0.25)"


def test_pixel_terms_normalised_by_the_global_count_add_up_over_processes():
    logits, target = _task_batch("multilabel", seed=23)
    loss = build_loss(["ce", {"name": "focal", "alpha": 0.3}], task="multilabel", num_classes=4)
    count = (target != 255).sum().float()
    halves = [loss(logits[i:i + 1], target[i:i + 1], normalizer=count / 2) for i in (0, 1)]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, loss(logits, target))


@pytest.mark.parametrize("entries, task, message", [
    ("bce", "multiclass", "bce is for binary and multilabel models, not multiclass; use ce"),
    ("hinge", "multiclass", "unknown loss 'hinge'.*valid names: ce, bce, focal, dice, tversky, lovasz"),
    ([{"name": "dice", "gamma": 2}], "binary", "dice has no option gamma; its options: weight, smooth"),
    ([{"name": "ce", "weight": -1}], "binary", "weight must be a number >= 0"),
    ([{"name": "ce", "top_k_percent_pixels": 0}], "binary", r"top_k_percent_pixels must be in \(0, 1\]"),
    ([{"name": "focal", "alpha": 0.25}], "multiclass", "alpha .* is for binary and multilabel"),
    ([], "binary", "train.loss is empty"),
])
def test_bad_loss_settings_are_clear_errors(entries, task, message):
    with pytest.raises(ValueError, match=message):
        build_loss(entries, task=task, num_classes=1 if task == "binary" else 4)


def test_bad_targets_and_shapes_are_clear_errors():
    logits, target = _task_batch("binary", seed=24)
    with pytest.raises(ValueError, match=r"binary target holds \[2\]: expected 0..1 .*label_map"):
        _loss("ce", "binary")(logits, torch.where(target == 1, 2, target))
    with pytest.raises(ValueError, match="class_weights has 3 values; a binary model with 1 logit"):
        build_loss("ce", task="binary", num_classes=1, class_weights=[1, 2, 3])
    with pytest.raises(ValueError, match=r"N x C x H x W and target N x C x H x W.*C = 4"):
        _loss("dice", "multilabel")(torch.randn(2, 4, 9, 9), target)
    with pytest.raises(ValueError, match=r"multiclass target holds \[7\]: expected 0..3"):
        _loss("dice", "multiclass")(torch.randn(2, 4, 9, 9), torch.full((2, 9, 9), 7))


@pytest.mark.parametrize("name", ["dice", "tversky"])
def test_dice_with_counts_summed_over_processes_is_the_global_batch_dice(name):
    """What each of two data-parallel processes computes when ``reduce`` all-reduces the per-class counts."""
    logits, target = _task_batch("multilabel", seed=25)
    loss = _loss(name, "multilabel", smooth=1.0)
    counts = []
    for i in (0, 1):  # what each process contributes to the all-reduce
        loss(logits[i:i + 1].detach(), target[i:i + 1], reduce=lambda c: counts.append(c) or c)
    halves = [loss(logits[i:i + 1], target[i:i + 1], reduce=lambda c, i=i: c + counts[1 - i]) for i in (0, 1)]
    torch.testing.assert_close(halves[0], loss(logits, target))
    torch.testing.assert_close(halves[1], loss(logits, target))
    assert not torch.allclose(loss(logits[:1], target[:1]), loss(logits, target))  # one process alone differs
