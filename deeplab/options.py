"""How a prediction is made, whatever runs the network: one options type for the Predictor, evaluation, serving,
the CLI and the config's ``eval`` section."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from .config import DEFAULT_THRESHOLD, EvalConfig
from .deploy.precision import AUTO, precision_entry
from .postprocess import CRFParams


def _pair(value: int | Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    sides = (value, value) if isinstance(value, int) else tuple(value)
    if len(sides) != 2 or not all(isinstance(side, int) and not isinstance(side, bool) and side >= 1
                                  for side in sides):
        raise ValueError(f"{name} must be a positive int or (h, w), got {value}")
    return sides[0], sides[1]


@dataclass(frozen=True)
class InferenceOptions:
    """Inference settings (validated on creation; sequences become tuples).

    Attributes:
        scales: input scales; the softmax probabilities of every scale are averaged.
        flip: also run the horizontally flipped input of every scale and average it in.
        window: sliding-window tile size ``(h, w)`` (an int for a square). An input larger than the
            window in some dimension is tiled; tiles are never padded, so an input that fits in one
            window gets exactly the plain forward pass.
        overlap: fraction of the window shared by neighbouring tiles, in ``[0, 1)``.
        precision: ``fp32``; ``bf16`` (autocast) on a GPU or a CPU with AVX512-BF16/AMX; ``fp16`` on a GPU;
            an export runs at the precision baked into it (see ``deeplab.deploy.precision``); ``auto`` (what
            ``Predictor.from_file`` runs by default) becomes one of them when the model is opened.
        crf: DenseCRF settings (v1/v2's post-processing), or ``None`` for no CRF.
        pad_to: pad each input at its bottom and right to at least ``(h, w)`` (an int for a square)
            with the mean pixel (zero once normalised) before any scaling, and crop the scores back:
            the TF reference's evaluation, which feeds VOC images padded to 513 x 513.
        threshold: binary and multilabel models: a pixel holds a class where its sigmoid probability exceeds this.
    """

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: tuple[int, int] | None = None
    overlap: float = 1 / 3
    precision: str = "fp32"
    crf: CRFParams | None = None
    pad_to: tuple[int, int] | None = None
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        scales = tuple(float(scale) for scale in self.scales)
        if not scales or any(scale <= 0 for scale in scales):
            raise ValueError(f"scales must be a non-empty list of positive numbers, got {list(self.scales)}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.precision != AUTO:  # auto: resolved when a model is opened (Predictor.from_file)
            precision_entry(self.precision)
        if not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"threshold must be between 0 and 1 (exclusive), got {self.threshold}")
        if self.crf is not None and not isinstance(self.crf, CRFParams):
            raise TypeError(f"crf must be CRFParams or None, got {type(self.crf).__name__}")
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "flip", bool(self.flip))
        object.__setattr__(self, "window", _pair(self.window, "window"))
        object.__setattr__(self, "pad_to", _pair(self.pad_to, "pad_to"))

    @property
    def passes(self) -> int:
        """Forward passes per input (scales x flips), before any tiling."""
        return len(self.scales) * (2 if self.flip else 1)

    def replace(self, **changes: Any) -> InferenceOptions:
        """A copy with some fields changed; an unknown name is a ``TypeError`` listing the valid ones."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"unknown inference option(s) {', '.join(unknown)}; valid: "
                            f"{', '.join(f.name for f in fields(self))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_eval_config(cls, config: EvalConfig, **changes: Any) -> InferenceOptions:
        """The options a config's ``eval`` section sets (scales, flip, window, pad_to, the DenseCRF)."""
        return cls(scales=tuple(config.scales), flip=config.flip, window=config.window, pad_to=config.pad_to,
                   crf=crf_from_eval_config(config)).replace(**changes)


def crf_from_eval_config(config: EvalConfig) -> CRFParams | None:
    """The CRF settings ``eval.crf_*`` ask for (unset keys keep :class:`CRFParams`' defaults), or ``None`` when
    ``eval.crf`` is false."""
    return CRFParams.build(config.crf, **{f.name: getattr(config, f"crf_{f.name}") for f in fields(CRFParams)})
