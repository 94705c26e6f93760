"""Evaluation of a model on a dataset (multi-scale, flip, sliding windows, DenseCRF: the Predictor's options).

The model's task (its spec's) says how logits become a prediction: argmax (multiclass), sigmoid > threshold
of the one logit (binary) or of each (multilabel); :mod:`deeplab.metrics` says what is measured.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ..config import Config, EvalConfig
from ..data import SegmentationDataset, eval_transforms
from ..inference import Predictor
from ..metrics import check_threshold, empty_confusion, labels_from_logits, task_confusion, task_metrics
from ..options import InferenceOptions
from ..postprocess import CRFParams, refine_many
from . import dist
from .data import build_dataset
from .eval_progress import EvalProgress, load_progress, save_progress
from .stops import in_lockstep
from .workers import worker_options


def evaluate(
    model: torch.nn.Module, dataset: SegmentationDataset, *, num_classes: int, ignore_index: int = 255,
    device: str | torch.device = "cpu", batch_size: int = 1, num_workers: int = 0, progress: bool = True,
    fast: bool = True, crf_workers: int | None = None, distributed: bool = False,
    options: InferenceOptions | None = None, threshold: float = 0.5, **option_values: Any,
) -> dict[str, Any]:
    """Accumulates one confusion matrix over ``dataset`` and returns :func:`~deeplab.metrics.task_metrics` of it.

    The dataset must return normalised images (``eval_transforms``); batches larger than 1 need
    images of one size. The model runs through :class:`Predictor`'s fast path (a folded copy) unless
    ``fast=False``; either way every module's train/eval mode is as it was afterwards. ``options`` (or the
    same by name: ``scales``, ``flip``, ``window``, ``precision``, ``crf``, ``pad_to``) say how each image is
    predicted; with a DenseCRF the softmax of every prediction is refined on the raw image
    (``deeplab.postprocess``), in ``crf_workers`` processes (default: one per core). ``distributed``: see
    :func:`evaluate_predictor`; ``threshold``: see there.
    """
    modes = [module.training for module in model.modules()]
    try:
        predictor = Predictor(model, num_classes=num_classes, device=device, fast=fast, options=options,
                              **option_values)
        return evaluate_predictor(predictor, dataset, ignore_index=ignore_index, batch_size=batch_size,
                                  num_workers=num_workers, progress=progress, crf_workers=crf_workers,
                                  distributed=distributed, threshold=threshold)
    finally:
        for module, training in zip(model.modules(), modes, strict=True):
            module.training = training


def evaluate_predictor(
    predictor: Predictor, dataset: SegmentationDataset, *, ignore_index: int = 255, batch_size: int = 1,
    num_workers: int = 0, progress: bool = True, crf_workers: int | None = None, distributed: bool = False,
    threshold: float = 0.5, stop: dict[str, str | None] | None = None, label_offset: int = 0,
    resume: EvalProgress | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` for a ready :class:`Predictor` (any runner: eager, ONNX Runtime, TorchScript); its options
    (the DenseCRF included) say how each image is predicted.

    With ``distributed`` every process of the current process group (torchrun) must call it: each evaluates
    its shard of ``dataset`` (:func:`deeplab.engine.dist.shard`) and the confusion matrices are summed, which
    gives exactly the single-process metrics, on every process. ``images`` in the result counts the images
    evaluated by all processes. ``label_offset`` (multiclass): the model's class ``k + label_offset`` is the
    dataset's class ``k`` (the zoo's ADE20K models: 1, their output 0 is "other", which the dataset ignores); the
    confusion matrix is the model's, so a prediction of a class the dataset lacks counts against the true class, as
    in the reference's ``mean_iou`` over all the model's classes.

    The task of the predictor's spec (multiclass when it has none) says how logits become labels; binary and
    multilabel models count a pixel (a label) as foreground where its sigmoid exceeds ``threshold``.

    ``stop``: the flag of :func:`~deeplab.engine.stops.stop_on_signals`; after each batch the processes agree
    whether any got SIGINT / SIGTERM, and if so all stop there and return only ``stopped`` (the
    :class:`~deeplab.engine.stops.Stop`), ``images`` (how many were evaluated) and ``images_total``: no metrics of
    a partial split; and ``progress``, the :class:`EvalProgress` that ``resume`` takes to evaluate only the rest.
    """
    task = predictor_task(predictor)
    if task != "multiclass" and predictor.crf is not None:
        raise ValueError(f"the DenseCRF refines the softmax of a multiclass model; this model is {task}: "
                         "evaluate it without eval.crf")
    check_threshold(threshold)
    done = set(resume.indices) if resume is not None else set()
    remaining = [index for index in range(len(dataset)) if index not in done]
    mine = [remaining[j] for j in dist.shard(len(remaining))] if distributed else remaining

    def confusion() -> tuple[torch.Tensor, int, Any, list[int]]:
        cm = empty_confusion(task, predictor.num_classes)
        seen = 0

        def add(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
            nonlocal cm, seen
            pred, mask = batch
            if label_offset:
                mask = torch.where(mask == ignore_index, mask, mask + label_offset)
            cm += task_confusion(pred, mask, task=task, num_classes=predictor.num_classes, ignore_index=ignore_index)
            seen += 1 if predictor.crf is not None else len(mask)  # the CRF yields one image at a time

        batches = _predictions(predictor, dataset, mine, batch_size=batch_size, num_workers=num_workers,
                               crf_workers=crf_workers, progress=progress, task=task, threshold=threshold)
        if stop is None:
            for batch in batches:
                add(batch)
            return cm, seen, None, mine
        share = math.ceil(len(remaining) / dist.rank_and_size()[1]) if distributed else len(remaining)
        rounds = share if predictor.crf is not None else math.ceil(share / batch_size)  # the same on every process
        stopped = in_lockstep(batches, add, rounds=rounds, requested=stop, device=predictor.device)
        return cm, seen, stopped, mine[:seen]  # the loader keeps the order: the first ``seen`` are done

    parts = dist.gather_results(confusion) if distributed else [confusion()]
    cm = sum(part[0] for part in parts) + (resume.confusion if resume is not None else 0)
    if parts[0][2] is not None:
        indices = sorted(done.union(*(part[3] for part in parts)))
        return {"stopped": parts[0][2], "images": len(indices), "images_total": len(dataset),
                "progress": EvalProgress(indices, cm)}
    metrics = task_metrics(cm, task)
    metrics["confusion_matrix"] = cm.tolist()
    metrics["images"] = len(dataset)
    return metrics


def predictor_task(predictor: Predictor) -> str:
    """The task of the predictor's model (its spec's; multiclass for a model without one)."""
    return getattr(predictor.spec, "task", "multiclass")


def _predictions(predictor: Predictor, dataset: SegmentationDataset, indices: list[int], *, batch_size: int,
                 num_workers: int, crf_workers: int | None, progress: bool, task: str = "multiclass",
                 threshold: float = 0.5) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(label map, mask) batches of the items ``indices`` of ``dataset`` (this process's share), in that order."""
    def share(samples: Dataset) -> Dataset:
        return samples if len(indices) == len(dataset) else Subset(samples, indices)

    if predictor.crf is not None:
        yield from _crf_predictions(predictor, share(WithRawImages(dataset)), predictor.crf, batch_size=batch_size,
                                    num_workers=num_workers, crf_workers=crf_workers, progress=progress)
        return
    loader = DataLoader(share(dataset), batch_size=batch_size, num_workers=num_workers, **worker_options(num_workers))
    for images, masks in tqdm(loader, desc="eval", leave=False, disable=not progress, unit="batch"):
        yield labels_from_logits(predictor.logits_for_batch(images), task, threshold).cpu(), masks


# ---------------------------------------------------------------- DenseCRF hook (v1/v2 post-processing)


class WithRawImages(Dataset):
    """``(normalised image, mask, raw uint8 image)``: the DenseCRF needs the image's real colours.

    Each sample is loaded once; the dataset's transforms (which must keep the geometry, as the
    evaluation transforms do) make the first two items.
    """

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, mask = self.dataset.load(index)
        x, target = self.dataset.transforms(image, mask) if self.dataset.transforms else (image, mask)
        return x, target, image.as_subclass(torch.Tensor)


def _crf_predictions(predictor: Predictor, samples: Dataset, crf: CRFParams, *, batch_size: int, num_workers: int,
                     crf_workers: int | None, progress: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(CRF-refined class map, mask) per image of ``samples`` (:class:`WithRawImages` items); the network runs
    here while worker processes refine."""
    masks: deque[torch.Tensor] = deque()

    def pairs():
        loader = DataLoader(samples, batch_size=batch_size, num_workers=num_workers, **worker_options(num_workers))
        for images, batch_masks, raw in loader:
            probs = predictor.logits_for_batch(images).softmax(dim=1).cpu()
            for index in range(len(raw)):
                masks.append(batch_masks[index])
                yield raw[index], probs[index]

    for refined in refine_many(pairs(), crf, workers=crf_workers, total=len(samples), progress=progress):
        yield torch.from_numpy(refined.argmax(axis=0)), masks.popleft()


def evaluate_on_config(predictor: Predictor, config: Config, source: str, *, progress: bool = True,
                       distributed: bool = False, threshold: float | None = None,
                       stop: dict[str, str | None] | None = None, progress_file: Path | None = None,
                       resume: bool = False) -> tuple[dict[str, Any], list[str]]:
    """``predictor`` on ``config.data``'s validation split, normalised as its spec says; ``source`` names it.

    The predictor carries the inference options (``InferenceOptions.from_eval_config(config.eval)`` gives
    the config's); batch size, loader workers, CRF processes and the binary/multilabel ``threshold`` (unless
    given) come from ``config``. ``distributed``: each process of the group evaluates its shard (see
    :func:`evaluate_predictor`, also for ``stop``).

    ``progress_file`` (:func:`~deeplab.engine.eval_progress.progress_file`): where a stopped evaluation keeps what
    it did (process 0 writes it) and a finished one removes it; with ``resume`` the evaluation goes on from what it
    holds, if anything (``metrics["resumed"]``: how many images were evaluated before).
    """
    spec = predictor.spec
    resize = resize_to_range(config.eval)
    if resize is not None and predictor.crf is not None:
        raise ValueError("eval.min_resize_value/max_resize_value and eval.crf cannot be combined: the DenseCRF "
                         "reads the image at its stored size")
    dataset = build_dataset(config.data, config.data.val_split,
                            eval_transforms(mean=spec.mean, std=spec.std, resize_to_range=resize),
                            task=spec.task, in_channels=spec.in_channels)
    binary_pair = predictor_task(predictor) == "binary" and dataset.num_classes == 2  # background + foreground
    offset = label_offset(dataset, predictor.classes)
    if offset is None and not binary_pair:
        raise ValueError(f"dataset {config.data.name!r} has {dataset.num_classes} classes but {source} "
                         f"predicts {predictor.num_classes}")
    before = None
    if progress_file is not None and resume:
        shape = tuple(empty_confusion(predictor_task(predictor), predictor.num_classes).shape)
        main = dist.rank_and_size()[0] == 0

        def read() -> EvalProgress | None:  # process 0's file: other nodes' caches may not have it
            return load_progress(progress_file, len(dataset), shape) if main else None

        before = dist.gather_results(read)[0] if distributed else read()
    metrics = evaluate_predictor(predictor, dataset, ignore_index=dataset.ignore_index,
                                 batch_size=config.eval.batch_size, num_workers=config.data.num_workers,
                                 progress=progress, crf_workers=config.eval.crf_workers, distributed=distributed,
                                 threshold=config.eval.threshold if threshold is None else threshold, stop=stop,
                                 label_offset=offset or 0, resume=before)
    metrics["resumed"] = len(before.indices) if before is not None else 0
    if progress_file is not None and dist.rank_and_size()[0] == 0:
        if "stopped" in metrics:
            save_progress(progress_file, metrics["progress"], len(dataset))
        else:
            progress_file.unlink(missing_ok=True)
    return metrics, list(predictor.classes)


def resize_to_range(config: EvalConfig) -> tuple[int, int, int | None] | None:
    """``(min, max, factor)`` of ``eval.min_resize_value``, ``eval.max_resize_value``, ``eval.resize_factor``, or
    ``None`` where none is set; the first two go together."""
    low, high, factor = config.min_resize_value, config.max_resize_value, config.resize_factor
    if low is None and high is None and factor is None:
        return None
    if low is None or high is None or low < 1 or high < low or (factor is not None and factor < 1):
        raise ValueError(f"eval.min_resize_value={low}, eval.max_resize_value={high}, eval.resize_factor={factor}: "
                         "expected two positive sides, min <= max (and a positive factor, or none)")
    return low, high, factor


def label_offset(dataset: SegmentationDataset, model_classes: list[str]) -> int | None:
    """0 where the model predicts the dataset's classes; 1 where it predicts one more, first, that the dataset
    ignores (``dataset.unlabeled_class``: ADE20K's "other", as the zoo's models and the annotation PNGs number
    it); ``None`` where they do not match."""
    if len(model_classes) == dataset.num_classes:
        return 0
    unlabeled = getattr(dataset, "unlabeled_class", None)
    if unlabeled is not None and len(model_classes) == dataset.num_classes + 1 and model_classes[0] == unlabeled:
        return 1
    return None


# ---------------------------------------------------------------- what an evaluation ran


def eval_protocol(predictor: Predictor, trained_output_stride: int | None = None) -> dict[str, Any]:
    """The protocol ``predictor`` runs (:meth:`Predictor.protocol`) and the output stride the model was trained at
    (``None``: unknown), as ``deeplab eval`` prints it and records it in its JSON."""
    return {**predictor.protocol(), "trained_output_stride": trained_output_stride}


_NUMERICS = {"tf-reference": "TF reference (predict_labels_multi_scale's resizes, align_corners=True)",
             "tf-align-corners": "TF resizes (align_corners=True) of each pass's input-size logits",
             "pytorch": "PyTorch (align_corners=False)"}


def describe_protocol(protocol: dict[str, Any]) -> str:
    """One line for :func:`eval_protocol`'s dict, e.g. ``protocol: output stride 8 (trained at 16), scales 0.5,
    0.75, 1.0, flip, padded to 513 x 513, ...``."""
    stride, trained = protocol["output_stride"], protocol.get("trained_output_stride")
    parts = [f"output stride {stride or 'unknown'}"
             + (f" (trained at {trained})" if trained and stride and trained != stride else "")]
    parts.append("scales " + ", ".join(f"{scale:g}" for scale in protocol["scales"]))
    parts.append("flip" if protocol["flip"] else "no flip")
    pad, window = protocol.get("pad_to"), protocol.get("window")
    parts.append(f"padded to {pad[0]} x {pad[1]}" if pad else "no padding")
    if window:
        parts.append(f"sliding window {window[0]} x {window[1]}")
    parts.append(f"{protocol['runtime']} {protocol['precision']}")
    parts.append("numerics: " + _NUMERICS.get(protocol["numerics"], protocol["numerics"]))
    return "protocol: " + ", ".join(parts)
