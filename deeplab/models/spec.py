"""ModelSpec: everything that shapes a network, resolved once, saved beside its weights.

A spec is the model's name plus every builder argument that decides the architecture (number of
classes, output stride, atrous rates, multi-grid, separable convs, extra head conv, dropout, aux
head, ...) and the input normalisation its weights expect. :func:`deeplab.create_model` resolves
one from its keyword arguments (defaults, the paper's rates for the output stride, what the given
weights imply), builds the model from it and attaches it as ``model.spec``. Checkpoints and exports
store ``spec.to_dict()`` and rebuild from it alone, so changing a default later never changes an
old file's model. Only the output stride (and the atrous rates that follow it) may be changed when
rebuilding: see :meth:`ModelSpec.at_output_stride`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

SPEC_VERSION = 2
# Versions this deeplab reads: 1 had no task or input channels (multiclass, 3 channels).
READABLE_SPEC_VERSIONS = (1, 2)
# What the logits mean: one softmax over classes, one sigmoid (foreground), or one sigmoid per class.
TASKS = ("multiclass", "binary", "multilabel")

# Options whose values scale with the output stride (the papers double the rates when they halve it).
RATE_OPTIONS = ("atrous_rates", "atrous_rate")


def scaled_rates(rates: Sequence[int], from_stride: int, to_stride: int) -> tuple[int, ...]:
    """Rates for ``to_stride`` given rates chosen at ``from_stride``: halve the stride, double the rates."""
    return tuple(max(1, int(rate) * from_stride // to_stride) for rate in rates)


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively: what YAML, JSON and ``torch.load(weights_only=True)`` can hold."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _frozen(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class ModelSpec:
    """A fully resolved model description.

    Attributes:
        name: registry name, e.g. ``"deeplabv3plus_resnet101"``.
        num_classes: output classes.
        output_stride: the backbone's output stride the rates in ``options`` belong to.
        options: every other builder argument that shapes the network, resolved (no ``None`` meaning
            "default", except where ``None`` itself is the choice, e.g. ``multi_grid=None``).
        mean: per-channel input mean on the 0..1 scale, as the weights expect.
        std: per-channel input standard deviation.
        task: ``"multiclass"`` (softmax over ``num_classes`` logits), ``"binary"`` (one logit, sigmoid;
            ``num_classes`` is 1) or ``"multilabel"`` (one sigmoid per class).
        in_channels: input image channels (3 for RGB; ``mean`` and ``std`` have this length).
    """

    name: str
    num_classes: int
    output_stride: int
    options: Mapping[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    task: str = "multiclass"
    in_channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", {k: _frozen(v) for k, v in dict(self.options).items()})
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "in_channels", int(self.in_channels))
        if self.task not in TASKS:
            raise ValueError(f"model task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {self.in_channels}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"mean and std need one value per input channel ({self.in_channels}); got "
                             f"{len(self.mean)} and {len(self.std)}")
        if self.task == "binary" and self.num_classes != 1:
            raise ValueError(f"a binary model has one output (num_classes=1), got num_classes={self.num_classes}")

    def builder_arguments(self) -> dict[str, Any]:
        """The keyword arguments of the model's constructor."""
        return {"num_classes": self.num_classes, "output_stride": self.output_stride, **self.options}

    def at_output_stride(self, output_stride: int | None) -> ModelSpec:
        """The same network at another output stride; atrous rates scale with it, weights still fit."""
        if output_stride is None or output_stride == self.output_stride:
            return self
        options = dict(self.options)
        for key in RATE_OPTIONS:
            value = options.get(key)
            if isinstance(value, tuple):
                options[key] = scaled_rates(value, self.output_stride, output_stride)
            elif isinstance(value, int):
                options[key] = scaled_rates((value,), self.output_stride, output_stride)[0]
        return replace(self, output_stride=output_stride, options=options)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (lists, numbers, strings), safe for ``weights_only`` loading, JSON and YAML."""
        return {
            "spec_version": SPEC_VERSION,
            "name": self.name,
            "num_classes": self.num_classes,
            "output_stride": self.output_stride,
            "options": {k: _plain(v) for k, v in self.options.items()},
            "mean": list(self.mean),
            "std": list(self.std),
            "task": self.task,
            "in_channels": self.in_channels,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` naming what is missing or malformed."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a model spec must be a mapping, got {type(data).__name__}")
        version = data.get("spec_version")
        if version not in READABLE_SPEC_VERSIONS:
            raise ValueError(f"model spec version {version!r} is not supported (this deeplab reads "
                             f"{', '.join(map(str, READABLE_SPEC_VERSIONS))})")
        missing = [k for k in ("name", "num_classes", "output_stride", "options", "mean", "std") if k not in data]
        if missing:
            raise ValueError(f"model spec lacks {', '.join(missing)}")
        return cls(str(data["name"]), int(data["num_classes"]), int(data["output_stride"]), dict(data["options"]),
                   tuple(data["mean"]), tuple(data["std"]), str(data.get("task", "multiclass")),
                   int(data.get("in_channels", 3)))
