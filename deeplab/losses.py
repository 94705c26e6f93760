"""Training losses for the three tasks, over every training output, skipping ``ignore_index``.

:func:`build_loss` turns ``train.loss`` (one name or a weighted list) into the callable that training
uses: ``loss(outputs, target, normalizer=None) -> scalar``. Every term runs on each of a model's
training outputs (main ``"out"``, each scale of a multi-scale model: weight 1; ``"aux"``: ``aux_weight``).

Two kinds of terms:

* pixel terms (``ce``, ``bce``, ``focal``): a sum over the labelled pixels divided by ``normalizer``
  (by default this batch's labelled pixels). Data-parallel training passes the global batch's labelled
  pixels divided by the number of processes, which makes DDP's averaged gradients exactly those of the
  global batch. Class weights multiply each pixel's loss and the sum is still divided by the labelled
  pixels (as the TF reference does), not by the sum of the weights.
* ``dice`` and ``tversky`` are functions of per-class sums over the batch. Data-parallel training passes
  ``reduce``, which sums them over the processes (with gradients), so every process computes the global
  batch's loss, and DDP's averaged gradients are again those of the global batch.
* ``lovasz`` (a sort of the batch's errors) and hard-pixel mining (``top_k_percent_pixels``) are each
  process's, on its share of the batch; DDP averages them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from deeplab.constants import IGNORE_INDEX
from deeplab.models.segmenter import upsample_to
from deeplab.models.spec import TASKS

# name -> (tasks it is defined for, its options and their defaults)
LOSS_OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "ce": (TASKS, {"label_smoothing": 0.0, "top_k_percent_pixels": 1.0, "class_weights": None}),
    "bce": (("binary", "multilabel"), {"label_smoothing": 0.0, "top_k_percent_pixels": 1.0, "class_weights": None}),
    "focal": (TASKS, {"gamma": 2.0, "alpha": None}),
    "dice": (TASKS, {"smooth": 0.0}),
    "tversky": (TASKS, {"alpha": 0.5, "beta": 0.5, "gamma": 1.0, "smooth": 0.0}),
    "lovasz": (TASKS, {"per_image": False}),
}
_EPS = 1e-7

Reduce = Callable[[Tensor], Tensor]  # sums a tensor over the processes of data-parallel training
Term = Callable[[Tensor, Tensor, Tensor, Reduce], Tensor]  # (logits, target, normalizer, reduce) -> scalar


def labelled_pixels(target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """The number of entries of ``target`` that count in the loss (a float scalar on its device): pixels,
    or (pixel, label) pairs for a multilabel ``N x C x H x W`` target."""
    return (target != ignore_index).sum().float()


@dataclass(frozen=True)
class LossEntry:
    """One term of ``train.loss``: its name, weight and options (every option resolved)."""

    name: str
    weight: float
    options: Mapping[str, Any]

    def describe(self) -> str:
        set_options = ", ".join(f"{k}={v}" for k, v in self.options.items() if v != LOSS_OPTIONS[self.name][1][k])
        return f"{self.weight:g} x {self.name}" + (f" ({set_options})" if set_options else "")


def parse_loss_entries(entries: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]], task: str
                       ) -> list[LossEntry]:
    """Checks ``train.loss``: a name (``"ce"``, ``"ce+dice"``), one ``{name, weight, options...}`` mapping or a
    list of either. ``ce`` of a binary or multilabel model is ``bce`` (the sigmoid cross-entropy of its logits)."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")
    if isinstance(entries, str):
        entries = [name.strip() for name in entries.split("+")]
    elif isinstance(entries, Mapping):
        entries = [entries]
    if not entries:
        raise ValueError("train.loss is empty; give a name (e.g. ce) or a list like [{name: ce, weight: 1}]")
    parsed = [_parse_entry(entry, task) for entry in entries]
    return parsed


def _parse_entry(entry: str | Mapping[str, Any], task: str) -> LossEntry:
    raw = {"name": entry} if isinstance(entry, str) else dict(entry)
    name = raw.pop("name", None)
    if name not in LOSS_OPTIONS:
        raise ValueError(f"train.loss: unknown loss {name!r} in {entry!r}; valid names: {', '.join(LOSS_OPTIONS)}")
    tasks, defaults = LOSS_OPTIONS[name]
    if task not in tasks:
        hint = "; use ce (the softmax cross-entropy)" if name == "bce" else ""
        raise ValueError(f"train.loss: {name} is for {' and '.join(tasks)} models, not {task}{hint}")
    weight = raw.pop("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
        raise ValueError(f"train.loss: {name}'s weight must be a number >= 0, got {weight!r}")
    unknown = set(raw) - set(defaults)
    if unknown:
        raise ValueError(f"train.loss: {name} has no option {', '.join(sorted(unknown))}; its options: "
                         f"weight, {', '.join(defaults)}")
    options = {**defaults, **raw}
    _check_options(name, task, options)
    return LossEntry(name, float(weight), options)


def _check_options(name: str, task: str, options: dict[str, Any]) -> None:
    top_k = options.get("top_k_percent_pixels", 1.0)
    if not 0.0 < top_k <= 1.0:
        raise ValueError(f"train.loss: {name}'s top_k_percent_pixels must be in (0, 1], got {top_k}")
    if not 0.0 <= options.get("label_smoothing", 0.0) < 1.0:
        raise ValueError(f"train.loss: {name}'s label_smoothing must be in [0, 1), got {options['label_smoothing']}")
    if name == "focal" and options["alpha"] is not None and task == "multiclass":
        raise ValueError("train.loss: focal's alpha (the positive class's weight) is for binary and multilabel "
                         "models; weight the classes of a multiclass model with train.class_weights")
    if name == "tversky" and (options["alpha"] < 0 or options["beta"] < 0):
        raise ValueError(f"train.loss: tversky's alpha and beta must be >= 0, got {options['alpha']}, "
                         f"{options['beta']}")


def weight_count(task: str, num_classes: int) -> int:
    """How many class weights a model takes: one per class, one per label, or 2 (background, foreground)."""
    return 2 if task == "binary" else num_classes


class SegmentationLoss:
    """The weighted sum of loss terms over a model's training outputs (see the module's docstring)."""

    def __init__(self, entries: list[LossEntry], *, task: str, num_classes: int | None, ignore_index: int,
                 aux_weight: float, class_weights: Sequence[float] | None = None) -> None:
        self.entries, self.task, self.num_classes = entries, task, num_classes
        self.ignore_index, self.aux_weight = ignore_index, aux_weight
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.terms = [(entry.weight, _make_term(entry, task, ignore_index, class_weights)) for entry in entries]

    def describe(self) -> str:
        """One line, e.g. ``1 x ce + 1 x dice (binary, ignore_index 255, aux weight 0.4)``."""
        weights = "" if self.class_weights is None else ", class weights " + ", ".join(
            f"{w:.3g}" for w in self.class_weights)
        return (" + ".join(entry.describe() for entry in self.entries)
                + f" ({self.task}, ignore_index {self.ignore_index}, aux weight {self.aux_weight:g}{weights})")

    def __call__(self, outputs: Tensor | Mapping[str, Tensor], target: Tensor, *,
                 normalizer: Tensor | float | None = None, reduce: Reduce | None = None) -> Tensor:
        """The loss of ``outputs`` (logits, or ``Segmenter.forward_train``'s dict) against ``target``.

        ``normalizer``: what pixel terms' sums are divided by (default: this batch's labelled pixels);
        ``reduce``: sums dice's and tversky's per-class counts over processes, with gradients (default:
        none, this batch alone). If every pixel is ignored the loss is 0 and still backpropagates.
        """
        reduce = reduce or _alone
        if isinstance(outputs, Tensor):
            outputs = {"out": outputs}
        target = target.long()
        if normalizer is None:
            normalizer = labelled_pixels(target, self.ignore_index)
        # Sum / count, not torch's "mean": with every pixel ignored it is 0 (with a graph), not NaN.
        normalizer = torch.as_tensor(normalizer, dtype=torch.float32, device=target.device).clamp(min=1e-6)
        total = None
        for index, (name, logits) in enumerate(outputs.items()):
            logits = self._check_logits(name, logits, target).float()
            if index == 0:
                self._check_target(target, logits.shape[1])
            term = sum(weight * compute(logits, target, normalizer, reduce) for weight, compute in self.terms)
            term = self.aux_weight * term if name == "aux" else term
            total = term if total is None else total + term
        if total is None:
            raise ValueError("no outputs to compute a loss from")
        return total

    def _check_logits(self, name: str, logits: Tensor, target: Tensor) -> Tensor:
        label_dims = 2 if self.task == "multilabel" else 1
        channels = 1 if self.task == "binary" else self.num_classes
        good = (logits.ndim == 4 and target.ndim == 3 + label_dims - 1 and logits.shape[0] == target.shape[0]
                and (channels is None or logits.shape[1] == channels)
                and (self.task != "multilabel" or target.shape[1] == logits.shape[1])
                and (name != "out" or logits.shape[-2:] == target.shape[-2:]))
        if not good:
            expected = {"multiclass": "N x C x H x W and target N x H x W",
                        "binary": "N x 1 x H x W and target N x H x W",
                        "multilabel": "N x C x H x W and target N x C x H x W"}[self.task]
            raise ValueError(f"{self.task} loss: expected logits {expected} of the same N (and H, W for 'out')"
                             f"{'' if channels is None else f', C = {channels}'}; got {name!r} "
                             f"{tuple(logits.shape)} and target {tuple(target.shape)}")
        return upsample_to(logits, target.shape[-2:]) if logits.shape[-2:] != target.shape[-2:] else logits

    def _check_target(self, target: Tensor, channels: int) -> None:
        """A clear error for labels outside the task's range (torch's is a device-side assert on GPUs)."""
        top = channels - 1 if self.task == "multiclass" else 1
        labelled = target[target != self.ignore_index]
        bad = labelled[(labelled < 0) | (labelled > top)]
        if bad.numel():
            values = bad.unique()[:10].tolist()
            hint = (" (0/255 masks: set data.label_map={255: 1} or let the dataset read them as binary)"
                    if self.task != "multiclass" else "")
            raise ValueError(f"{self.task} target holds {values}: expected 0..{top} or ignore_index "
                             f"{self.ignore_index}{hint}")


def build_loss(entries: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]] = "ce", *,
               task: str = "multiclass", num_classes: int | None = None, ignore_index: int = IGNORE_INDEX,
               aux_weight: float = 0.4, class_weights: Sequence[float] | None = None) -> SegmentationLoss:
    """The training loss as ``train.loss`` says (``"ce"``, ``"ce+dice"``, ``[{name: ce, weight: 1}, ...]``).

    Args:
        entries: loss names or ``{name, weight, option: value}`` mappings; see ``LOSS_OPTIONS``.
        task: the model's task: ``multiclass`` (softmax), ``binary`` (one sigmoid) or ``multilabel``.
        num_classes: the model's logits (1 for binary); checked against every output when given.
        ignore_index: target value that contributes nothing.
        aux_weight: weight of the auxiliary head's terms.
        class_weights: ``ce``/``bce`` pixel weights (an entry's own ``class_weights`` wins): one per class
            (multiclass), per label (multilabel), or ``[background, foreground]`` (binary).

    Returns:
        A callable ``(outputs, target, normalizer=None) -> scalar``.
    """
    parsed = parse_loss_entries(entries, task)
    if num_classes is not None and task == "binary" and num_classes != 1:
        raise ValueError(f"a binary model has 1 logit, got num_classes={num_classes}")
    for entry in parsed:
        weights = entry.options.get("class_weights") or class_weights
        if weights is not None and num_classes is not None and len(weights) != weight_count(task, num_classes):
            raise ValueError(f"class_weights has {len(weights)} values; a {task} model with {num_classes} "
                             f"logit(s) takes {weight_count(task, num_classes)}"
                             + (" (background, foreground)" if task == "binary" else ""))
    return SegmentationLoss(parsed, task=task, num_classes=num_classes, ignore_index=ignore_index,
                            aux_weight=aux_weight, class_weights=class_weights)


def segmentation_loss(outputs: Tensor | Mapping[str, Tensor], target: Tensor, *, ignore_index: int = IGNORE_INDEX,
                      aux_weight: float = 0.4, normalizer: Tensor | float | None = None) -> Tensor:
    """Plain cross-entropy over the non-ignored pixels, summed over a model's training outputs.

    The same as ``build_loss("ce", ignore_index=..., aux_weight=...)(outputs, target, normalizer=...)``:
    ``normalizer`` is what each term's summed cross-entropy is divided by (default: the labelled pixels).
    """
    return build_loss("ce", ignore_index=ignore_index, aux_weight=aux_weight)(outputs, target, normalizer=normalizer)


# ---------------------------------------------------------------- terms


def _alone(tensor: Tensor) -> Tensor:
    return tensor


def _make_term(entry: LossEntry, task: str, ignore_index: int, class_weights: Sequence[float] | None) -> Term:
    o = entry.options
    if entry.name in ("ce", "bce"):
        weights = o["class_weights"] or class_weights
        return lambda x, t, n, r: _cross_entropy(x, t, n, task, ignore_index, weights, o["label_smoothing"],
                                                 o["top_k_percent_pixels"])
    if entry.name == "focal":
        return lambda x, t, n, r: _focal(x, t, n, task, ignore_index, o["gamma"], o["alpha"])
    if entry.name == "dice":
        return lambda x, t, n, r: _tversky(x, t, task, ignore_index, 0.5, 0.5, 1.0, o["smooth"], r)
    if entry.name == "tversky":
        return lambda x, t, n, r: _tversky(x, t, task, ignore_index, o["alpha"], o["beta"], o["gamma"], o["smooth"],
                                           r)
    return lambda x, t, n, r: _lovasz(x, t, task, ignore_index, o["per_image"])


def _binary_view(logits: Tensor, target: Tensor, task: str, ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """Binary/multilabel: logits and 0/1 float targets of the same shape, and the labelled mask."""
    x = logits[:, 0] if task == "binary" else logits
    keep = target != ignore_index
    return x, (target * keep).float(), keep


def _cross_entropy(logits: Tensor, target: Tensor, normalizer: Tensor, task: str, ignore_index: int,
                   class_weights: Sequence[float] | None, label_smoothing: float, top_k: float) -> Tensor:
    weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32,
                                                                 device=logits.device)
    if task == "multiclass":
        losses = F.cross_entropy(logits, target, weight=weights, ignore_index=ignore_index, reduction="none",
                                 label_smoothing=label_smoothing)
    else:
        x, t, keep = _binary_view(logits, target, task, ignore_index)
        smoothed = t * (1 - label_smoothing) + 0.5 * label_smoothing
        losses = F.binary_cross_entropy_with_logits(x, smoothed, reduction="none") * keep
        if weights is not None:
            losses = losses * (weights[t.long()] if task == "binary" else weights.view(1, -1, 1, 1))
    if top_k < 1.0:
        return _hardest_pixels(losses, top_k)
    return losses.sum() / normalizer


def _hardest_pixels(losses: Tensor, fraction: float) -> Tensor:
    """The TF reference's hard-pixel mining: the mean of the batch's ``fraction`` largest pixel losses.

    As there, ``k`` counts every pixel (ignored ones too) and the mean is over the non-zero losses among the
    ``k`` kept (ignored pixels have loss 0); 0 if there are none.
    """
    flat = losses.reshape(-1)
    k = int(fraction * flat.numel())
    top = flat.topk(k).values if k > 0 else flat[:0]
    return top.sum() / (top != 0).sum().clamp(min=1)


def _focal(logits: Tensor, target: Tensor, normalizer: Tensor, task: str, ignore_index: int, gamma: float,
           alpha: float | None) -> Tensor:
    """Focal loss (Lin et al. 2017): ``-(1 - p_t)^gamma log p_t`` per pixel; softmax for multiclass, the sigmoid
    of each logit otherwise (with ``alpha`` weighting positives, ``1 - alpha`` negatives)."""
    if task == "multiclass":
        keep = target != ignore_index
        log_pt = logits.log_softmax(dim=1).gather(1, (target * keep).unsqueeze(1)).squeeze(1)
        losses = -(1 - log_pt.exp()).pow(gamma) * log_pt * keep
    else:
        x, t, keep = _binary_view(logits, target, task, ignore_index)
        log_pt = -F.binary_cross_entropy_with_logits(x, t, reduction="none")
        losses = -(1 - log_pt.exp()).pow(gamma) * log_pt * keep
        if alpha is not None:
            losses = losses * (alpha * t + (1 - alpha) * (1 - t))
    return losses.sum() / normalizer


def _soft_counts(logits: Tensor, target: Tensor, task: str, ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per class (or label): soft true positives, predicted mass and true pixels over the batch's labelled
    pixels, from probabilities (softmax or sigmoid)."""
    if task == "multiclass":
        keep = (target != ignore_index).unsqueeze(1)
        probs = logits.softmax(dim=1) * keep
        truth = F.one_hot(target * keep.squeeze(1), logits.shape[1]).permute(0, 3, 1, 2) * keep
    else:
        x, t, keep = _binary_view(logits, target, task, ignore_index)
        probs, truth = (torch.sigmoid(x) * keep, t)
        if task == "binary":
            probs, truth = probs.unsqueeze(1), truth.unsqueeze(1)
    truth = truth.float()
    dims = (0, 2, 3)
    return (probs * truth).sum(dims), probs.sum(dims), truth.sum(dims)


def _tversky(logits: Tensor, target: Tensor, task: str, ignore_index: int, alpha: float, beta: float,
             gamma: float, smooth: float, reduce: Reduce = _alone) -> Tensor:
    """Soft Tversky loss (dice: alpha = beta = 0.5, gamma = 1) per class over the batch, as smp computes it:
    ``1 - TP / (TP + alpha FP + beta FN)``; classes absent from the target add 0; the mean over all classes,
    to the power ``gamma``. ``reduce`` sums the per-class counts over the processes of data-parallel training."""
    true_pos, predicted, actual = reduce(torch.stack(_soft_counts(logits, target, task, ignore_index)))
    score = (true_pos + smooth) / (true_pos + alpha * (predicted - true_pos) + beta * (actual - true_pos)
                                   + smooth).clamp(min=_EPS)
    loss = (1 - score) * (actual > 0)
    return loss.mean().pow(gamma)


def _lovasz_gradient(sorted_truth: Tensor) -> Tensor:
    """The gradient of the Lovasz extension of the Jaccard loss at errors sorted in decreasing order
    (Berman et al. 2018, Algorithm 1)."""
    positives = sorted_truth.sum()
    intersection = positives - sorted_truth.cumsum(0)
    union = positives + (1 - sorted_truth).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def _lovasz_flat(errors: Tensor, truth: Tensor) -> Tensor:
    if errors.numel() == 0:
        return errors.sum() * 0.0
    ordered, order = errors.sort(descending=True)
    return torch.dot(F.relu(ordered), _lovasz_gradient(truth[order].float()))


def _lovasz(logits: Tensor, target: Tensor, task: str, ignore_index: int, per_image: bool) -> Tensor:
    """Lovasz-Softmax (multiclass: mean over the classes present in the target) or the Lovasz hinge of each
    logit (binary; multilabel: mean over labels), over the batch's labelled pixels or per image."""
    if per_image:
        losses = [_lovasz(logits[i:i + 1], target[i:i + 1], task, ignore_index, False) for i in range(len(logits))]
        return torch.stack(losses).mean()
    if task == "multiclass":
        keep = target != ignore_index
        probs = logits.softmax(dim=1).permute(0, 2, 3, 1)[keep]  # P x C
        labels = target[keep]
        present = [c for c in range(logits.shape[1]) if (labels == c).any()]
        if not present:
            return logits.sum() * 0.0
        return torch.stack([_lovasz_flat(((labels == c).float() - probs[:, c]).abs(), labels == c)
                            for c in present]).mean()
    x, t, keep = _binary_view(logits, target, task, ignore_index)
    if task == "binary":
        return _lovasz_flat((1 - x * (2 * t - 1))[keep], t[keep])
    return torch.stack([_lovasz_flat((1 - x[:, c] * (2 * t[:, c] - 1))[keep[:, c]], t[:, c][keep[:, c]])
                        for c in range(x.shape[1])]).mean()
