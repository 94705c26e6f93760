"""The conformance cases, shared by the TF side (tf_reference.py) and ours (compare.py); plain data only."""

from __future__ import annotations

# The reference's model options per variant: the zoo's settings for each (research/deeplab/g3doc/model_zoo.md).
VARIANTS: dict[str, dict] = {
    "xception_65": {"atrous_rates": [6, 12, 18], "output_stride": 16, "decoder_output_stride": [4]},
    "resnet_v1_101_beta": {"atrous_rates": [6, 12, 18], "output_stride": 16, "decoder_output_stride": [4]},
    "mobilenet_v2": {"atrous_rates": None, "output_stride": 16, "decoder_output_stride": None},
}
SIZES: list[tuple[int, int]] = [(129, 129), (96, 128)]  # H x W: odd square, even non-square
NUM_CLASSES = 21
SEED = 17

# The whole prediction (issue 28): the reference's predict_labels_multi_scale with the zoo's VOC protocol (eval
# output stride 8, the ASPP rates doubled, scales 0.5:0.25:1.75, flipped images added) against our Predictor.
MULTI_SCALE_VARIANTS = ["xception_65", "mobilenet_v2"]
EVAL_OUTPUT_STRIDE = 8
EVAL_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
# (image size, padded to): an odd and an even size as they are, and one image padded at its bottom and right with
# the mean pixel to the eval crop (the reference's eval.py), image pooling over the padded image.
MULTI_SCALE_CASES: list[tuple[tuple[int, int], tuple[int, int] | None]] = [
    ((129, 129), None), ((96, 128), None), ((97, 120), (129, 129))]
MAX_PROBABILITY_DIFFERENCE = 1e-4  # max |ours - ref| of the averaged class probabilities

# Pass criteria (issue 17): max|ours - ref| / max|ref|, and the share of pixels whose class agrees.
MAX_RELATIVE_DIFFERENCE = 1e-4
MIN_ARGMAX_AGREEMENT = 0.999


def size_name(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def eval_atrous_rates(variant: str) -> list[int] | None:
    """The ASPP rates at ``EVAL_OUTPUT_STRIDE``: the zoo's, scaled as the output stride is (6/12/18 -> 12/24/36)."""
    rates = VARIANTS[variant]["atrous_rates"]
    factor = VARIANTS[variant]["output_stride"] // EVAL_OUTPUT_STRIDE
    return None if rates is None else [rate * factor for rate in rates]


def multi_scale_name(size: tuple[int, int], padded: tuple[int, int] | None) -> str:
    return f"ms_flip_{size_name(size)}" + (f"_pad{size_name(padded)}" if padded else "")
