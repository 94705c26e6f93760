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

# Pass criteria (issue 17): max|ours - ref| / max|ref|, and the share of pixels whose class agrees.
MAX_RELATIVE_DIFFERENCE = 1e-4
MIN_ARGMAX_AGREEMENT = 0.999


def size_name(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
