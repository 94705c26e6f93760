"""DenseCRF post-processing: it snaps boundaries to colour edges, keeps confident maps, checks its input."""

import sys

import numpy as np
import pytest
import torch

import deeplab
from deeplab.postprocess import CRF_PRESETS, CRFParams, CRFUnavailableError, dense_crf, refine_many

HEIGHT, WIDTH, EDGE = 65, 97, 40


def edge_image() -> torch.Tensor:
    """Red left of column EDGE, blue from it on: one sharp colour edge."""
    image = torch.zeros(3, HEIGHT, WIDTH, dtype=torch.uint8)
    image[0, :, :EDGE] = 200
    image[2, :, EDGE:] = 200
    return image


def blurred_probs(boundary: float, softness: float) -> torch.Tensor:
    """Two classes whose soft boundary lies at column ``boundary``, not at the image's edge."""
    right = torch.sigmoid((torch.arange(WIDTH).float() - boundary) / softness).expand(HEIGHT, WIDTH)
    return torch.stack([1 - right, right])


def iou_of_right_class(labels: torch.Tensor) -> float:
    truth = (torch.arange(WIDTH) >= EDGE).expand(HEIGHT, WIDTH)
    predicted = labels == 1
    return ((predicted & truth).sum() / (predicted | truth).sum()).item()


def test_crf_moves_a_blurred_boundary_onto_the_colour_edge():
    probs = blurred_probs(boundary=EDGE + 10, softness=5)
    before = probs.argmax(dim=0)
    refined = deeplab.dense_crf(edge_image(), probs)
    after = refined.argmax(dim=0)
    assert iou_of_right_class(before) < 0.85
    assert iou_of_right_class(after) > 0.99 > iou_of_right_class(before)
    first_right = (after == 1).int().argmax(dim=1)
    assert (first_right - EDGE).abs().max() <= 1  # every row now changes class at the edge
    assert refined.shape == probs.shape and refined.dtype == torch.float32
    assert torch.allclose(refined.sum(dim=0), torch.ones(HEIGHT, WIDTH), atol=1e-4)


def test_confident_probabilities_stay():
    labels = (torch.arange(WIDTH) >= EDGE).long().expand(HEIGHT, WIDTH)
    probs = torch.nn.functional.one_hot(labels, 2).permute(2, 0, 1).float() * 0.98 + 0.01
    refined = dense_crf(edge_image(), probs)
    assert torch.equal(refined.argmax(dim=0), labels)
    assert (refined.gather(0, labels[None]) > 0.95).all()


def test_numpy_in_numpy_out_with_the_same_result_as_tensors():
    probs = blurred_probs(EDGE + 6, 4)
    image = edge_image()
    from_numpy = dense_crf(image.permute(1, 2, 0).numpy(), probs.numpy(), iterations=3)
    from_torch = dense_crf(image, probs, iterations=3)
    assert isinstance(from_numpy, np.ndarray) and from_numpy.shape == (2, HEIGHT, WIDTH)
    np.testing.assert_allclose(from_numpy, from_torch.numpy(), atol=1e-6)


def test_settings_change_the_result_and_keywords_override_a_base():
    probs, image = blurred_probs(EDGE + 10, 5), edge_image()
    weak = dense_crf(image, probs, w1=0.0, w2=0.0)  # no pairwise terms: the unary alone
    np.testing.assert_allclose(weak.numpy(), probs.numpy(), atol=1e-4)
    base = CRF_PRESETS["deeplabv2_resnet101"]
    assert CRFParams.from_options(base, w1=6).sigma_alpha == base.sigma_alpha == 67
    assert CRFParams.from_options(base, w1=6).w1 == 6.0


def test_build_is_the_one_constructor_for_flags_text_config_keys_and_grids():
    assert CRFParams.build(False) is None and CRFParams.build(False, None, w1=5) is None
    assert CRFParams.build(True) == CRFParams() == CRFParams.build()
    text = " w1=5, sigma_alpha=50,,iterations=4 "  # text implies enabled; blanks and spaces are skipped
    assert CRFParams.build(False, text) == CRFParams(iterations=4, w1=5, sigma_alpha=50)
    assert isinstance(CRFParams.build(text=text).iterations, int)
    # config keys: None means unset; per-key overrides win over the text; a base supplies the rest
    assert CRFParams.build(True, w1=6.0, sigma_beta=None, iterations=3) == CRFParams(iterations=3, w1=6)
    assert CRFParams.build(True, "w1=5,w2=1", w1=7) == CRFParams(w1=7, w2=1)
    base = CRF_PRESETS["deeplabv2_resnet101"]
    assert CRFParams.build(base=base, w1=3) == CRFParams(w1=3, sigma_alpha=67, sigma_beta=3, w2=3, sigma_gamma=1)


@pytest.mark.parametrize(("text", "message"), [
    ("w1=five", "--crf-params: 'w1=five' must look like KEY=NUMBER, e.g. w1=5,sigma_alpha=50"),
    ("w1", "--crf-params: 'w1' must look like KEY=NUMBER, e.g. w1=5,sigma_alpha=50"),
    ("iterations=2.5", "--crf-params: 'iterations=2.5' must look like KEY=NUMBER, e.g. w1=5,sigma_alpha=50"),
    ("w1=5,sigma=3", "unknown CRF parameter(s) sigma; valid: iterations, w1, sigma_alpha, sigma_beta, w2, "
                     "sigma_gamma"),
    ("sigma_alpha=0", "CRF sigma_alpha must be a number > 0, got 0.0"),
])
def test_build_rejects_bad_text_with_the_cli_messages(text, message):
    with pytest.raises(ValueError) as info:
        CRFParams.build(True, text)
    assert str(info.value) == message


@pytest.mark.parametrize(("options", "message"), [
    ({"iterations": 0}, "iterations must be a positive int"),
    ({"iterations": 2.5}, "iterations must be a positive int"),
    ({"w1": -1}, "w1 must be a number >= 0"),
    ({"sigma_alpha": 0}, "sigma_alpha must be a number > 0"),
    ({"sigma_beta": float("nan")}, "sigma_beta must be a number > 0"),
    ({"sigma_gamma": True}, "sigma_gamma must be a number > 0"),
    ({"bilateral_weight": 3}, "unknown CRF parameter.*bilateral_weight; valid: iterations, w1, sigma_alpha"),
])
def test_bad_settings_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        dense_crf(edge_image(), blurred_probs(EDGE, 3), **options)


@pytest.mark.parametrize(("image", "probs", "message"), [
    (edge_image().float(), blurred_probs(EDGE, 3), "image must be a uint8 3 x H x W RGB tensor"),
    (edge_image()[:2], blurred_probs(EDGE, 3), "image must be a uint8 3 x H x W"),
    (np.zeros((HEIGHT, WIDTH), np.uint8), blurred_probs(EDGE, 3), "image must be a uint8 H x W x 3 RGB array"),
    (edge_image(), blurred_probs(EDGE, 3)[:, :-1], r"probs must be C x H x W with the image's H x W \(65, 97\)"),
    (edge_image(), blurred_probs(EDGE, 3)[0], "probs must be C x H x W"),
    (edge_image(), -blurred_probs(EDGE, 3), "probs must be finite, non-negative floats"),
    (edge_image(), blurred_probs(EDGE, 3).long(), "probs must be finite, non-negative floats"),
])
def test_bad_inputs_are_clear_errors(image, probs, message):
    with pytest.raises(ValueError, match=message):
        dense_crf(image, probs)


def test_a_missing_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(CRFUnavailableError, match=r"pip install 'deeplab\[crf\]'"):
        dense_crf(edge_image(), blurred_probs(EDGE, 3))


@pytest.mark.parametrize("workers", [0, 2])
def test_refine_many_keeps_order_in_and_out_of_processes(workers):
    shifts = [3, 8, 12, 5, 0]
    pairs = [(edge_image(), blurred_probs(EDGE + shift, 4)) for shift in shifts]
    params = CRFParams(iterations=5)
    refined = list(refine_many(iter(pairs), params, workers=workers, total=len(pairs), progress=False))
    assert len(refined) == len(pairs)
    for (image, probs), result in zip(pairs, refined, strict=True):
        np.testing.assert_allclose(result, dense_crf(image, probs, params).numpy(), atol=1e-6)


def test_describe_gives_the_command_line_form():
    text = CRFParams(w1=5, sigma_alpha=50).describe()
    assert text == "iterations=10 w1=5 sigma_alpha=50 sigma_beta=5 w2=3 sigma_gamma=3"
