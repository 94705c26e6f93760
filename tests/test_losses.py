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
