"""The DeepLab papers' cross-validation of the DenseCRF: a grid over w1, sigma_alpha, sigma_beta on
a held-out subset of the validation split (v1 Sec. 5 and v2 Sec. 4.1 use 100 val images; ``w2`` and
``sigma_gamma`` stay fixed at 3).

The network runs once per image; its probabilities are kept on disk (float16, a temporary folder)
and every grid setting refines them in worker processes, one image per task.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import Config
from ..data import eval_transforms
from ..inference import Predictor
from ..metrics import class_map, confusion_matrix, segmentation_metrics
from ..options import InferenceOptions
from ..postprocess import CRF_SEARCH_GRID, CRFParams, dense_crf, map_in_processes
from .data import build_dataset

SUBSET_SEED = 0


@dataclass
class CRFTuneResult:
    """mIoU without the CRF and for every setting, best first."""

    dataset: str
    images: int
    baseline_miou: float
    rows: list[tuple[CRFParams, float]]

    @property
    def best(self) -> tuple[CRFParams, float]:
        return self.rows[0]


def crf_grid(w1: Sequence[float] = CRF_SEARCH_GRID["w1"], sigma_alpha: Sequence[float] = CRF_SEARCH_GRID["sigma_alpha"],
             sigma_beta: Sequence[float] = CRF_SEARCH_GRID["sigma_beta"],
             base: CRFParams | None = None) -> list[CRFParams]:
    """Every combination of the given values; the other settings come from ``base``."""
    if not (w1 and sigma_alpha and sigma_beta):
        raise ValueError("every CRF grid axis (w1, sigma_alpha, sigma_beta) needs at least one value")
    return [CRFParams.build(base=base, w1=a, sigma_alpha=b, sigma_beta=c)
            for a, b, c in itertools.product(w1, sigma_alpha, sigma_beta)]


def held_out_indices(size: int, images: int, seed: int = SUBSET_SEED) -> list[int]:
    """A seeded random subset of ``images`` of ``size`` samples (all of them if there are fewer), sorted."""
    if images < 1:
        raise ValueError(f"--images must be at least 1, got {images}")
    if images >= size:
        return list(range(size))
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:images].tolist())


def _labels_for_grid(task: tuple[np.ndarray, str, list[CRFParams]]) -> np.ndarray:
    """Worker: the CRF-refined class map of one image for every setting, ``G x H x W`` int16."""
    image, probs_file, grid = task
    probs = np.load(probs_file).astype(np.float32)
    return np.stack([dense_crf(image, probs, params).argmax(axis=0) for params in grid]).astype(np.int16)


def tune_crf(checkpoint: str | Path, config: Config, *, images: int = 100, grid: Sequence[CRFParams] | None = None,
             device: str | torch.device = "cpu", workers: int | None = None, progress: bool = True) -> CRFTuneResult:
    """Scores every CRF setting of ``grid`` on ``images`` held-out images of ``config.data``'s val split.

    The network runs as ``config.eval`` says (output stride, scales, flip, window), as in ``deeplab eval``.
    """
    grid = list(grid) if grid is not None else crf_grid()
    e = config.eval
    predictor = Predictor.from_file(checkpoint, output_stride=e.output_stride or config.model.output_stride,
                                    device=device, options=InferenceOptions.from_eval_config(e, crf=None))
    spec, num_classes = predictor.spec, predictor.num_classes
    dataset = build_dataset(config.data, config.data.val_split, eval_transforms(mean=spec.mean, std=spec.std))
    if dataset.num_classes != num_classes:
        raise ValueError(f"dataset {config.data.name!r} has {dataset.num_classes} classes but the checkpoint "
                         f"was trained for {num_classes}")
    subset = held_out_indices(len(dataset), images)
    baseline = torch.zeros(num_classes, num_classes, dtype=torch.long)
    cms = torch.zeros(len(grid), num_classes, num_classes, dtype=torch.long)
    with tempfile.TemporaryDirectory(prefix="deeplab-crf-tune-") as folder:
        tasks, targets = [], []
        for k, index in enumerate(tqdm(subset, desc="network", unit="image", leave=False, disable=not progress)):
            image, mask = dataset.load(index)
            x, target = dataset.transforms(image, mask)
            probs = predictor.logits_for_batch(x.unsqueeze(0)).softmax(dim=1)[0].cpu()
            baseline += confusion_matrix(class_map(probs, 0), target, num_classes, dataset.ignore_index)
            path = Path(folder) / f"{k}.npy"
            np.save(path, probs.numpy().astype(np.float16))
            tasks.append((image.permute(1, 2, 0).numpy(), str(path), grid))
            targets.append(target)
        results = map_in_processes(_labels_for_grid, tasks, workers=workers, total=len(tasks),
                                   desc=f"crf x {len(grid)}", progress=progress)
        for labels, target in zip(results, targets, strict=True):
            for g in range(len(grid)):
                cms[g] += confusion_matrix(torch.from_numpy(labels[g]), target, num_classes, dataset.ignore_index)
    rows = sorted(((params, segmentation_metrics(cm)["miou"]) for params, cm in zip(grid, cms, strict=True)),
                  key=lambda row: -_finite(row[1]))
    return CRFTuneResult(f"{config.data.name}/{config.data.val_split}", len(subset),
                         segmentation_metrics(baseline)["miou"], rows)


def _finite(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def crf_settings(params: CRFParams, *, prefix: str = "") -> list[str]:
    """``w1=5`` ... for the tuned settings and every other one that differs from the defaults."""
    default = CRFParams()
    tuned = ("w1", "sigma_alpha", "sigma_beta")
    return [f"{prefix}{f.name}={getattr(params, f.name):g}" for f in fields(CRFParams)
            if f.name in tuned or getattr(params, f.name) != getattr(default, f.name)]


def _edge_notes(best: CRFParams, grid: Sequence[CRFParams]) -> list[str]:
    """A hint for every axis whose best value is the grid's largest or smallest: the optimum may lie beyond."""
    notes = []
    for name in ("w1", "sigma_alpha", "sigma_beta"):
        values = sorted({getattr(params, name) for params in grid})
        value = getattr(best, name)
        if len(values) > 1 and value in (values[0], values[-1]):
            side = "largest" if value == values[-1] else "smallest"
            notes.append(f"  note: {name}={value:g} is the {side} value tried; the optimum may lie beyond it")
    return notes


def format_crf_table(result: CRFTuneResult, *, top: int = 15, checkpoint: str = "CK") -> str:
    """The grid as a table (best first, ``top`` rows; 0 for all), the best setting and how to use it."""
    rows = result.rows if top <= 0 else result.rows[:top]
    fixed = result.rows[0][0]
    lines = [
        f"CRF cross-validation on {result.images} held-out images of {result.dataset} "
        f"({fixed.iterations} mean-field iterations, w2={fixed.w2:g}, sigma_gamma={fixed.sigma_gamma:g})",
        "",
        "| w1 | sigma_alpha | sigma_beta | mIoU % | vs no CRF |",
        "|---|---|---|---|---|",
        f"| — | — | — | {100 * result.baseline_miou:.2f} | (no CRF) |",
    ]
    for params, miou in rows:
        gain = 100 * (miou - result.baseline_miou)
        lines.append(f"| {params.w1:g} | {params.sigma_alpha:g} | {params.sigma_beta:g} | {100 * miou:.2f} "
                     f"| {gain:+.2f} |")
    if len(rows) < len(result.rows):
        lines.append(f"({len(result.rows) - len(rows)} more settings not shown; --top 0 shows all)")
    best, miou = result.best
    lines += [
        "",
        f"best: {' '.join(crf_settings(best))}: mIoU {100 * miou:.2f}% "
        f"({100 * (miou - result.baseline_miou):+.2f} over no CRF)",
        *_edge_notes(best, [params for params, _ in result.rows]),
        f"  deeplab eval --checkpoint {checkpoint} --set eval.crf=true "
        + " ".join(crf_settings(best, prefix="eval.crf_")),
        f"  deeplab predict --checkpoint {checkpoint} --crf-params {','.join(crf_settings(best))} IMAGES --out DIR",
    ]
    return "\n".join(lines)
