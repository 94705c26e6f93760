"""Files to masks: expand files, folders and globs into images, predict each, write index / colour / overlay PNGs.

What is written per image depends on the model's task:
- multiclass: ``<stem>.png`` (palette PNG, pixel = class id), ``<stem>_color.png``, ``<stem>_overlay.png``;
- binary: ``<stem>.png`` (greyscale, 255 = foreground, 0 = background: sigmoid > threshold) and ``<stem>_overlay.png``;
- multilabel: ``<stem>/<class name>.png`` (one 0/255 mask per class, the layout the folder dataset reads) and
  ``<stem>_overlay.png``.
With ``save_probs`` also ``<stem>_probs.npy``: a float16 ``C x H x W`` NumPy array of probabilities (multiclass: the
softmax over the C classes; binary: C = 1, the foreground's sigmoid; multilabel: each class's sigmoid).

Under ``torchrun`` (``distributed=True``) the inputs are shared out between the processes; every output name is
decided on the whole ordered list first, so N processes write exactly the files one process writes.
"""

from __future__ import annotations

import csv
import functools
import glob
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .constants import default_workers
from .engine import dist
from .engine.stops import Stop, in_lockstep, stop_on_signals
from .engine.workers import worker_options
from .imageio import (
    IMAGE_EXTENSIONS,
    ChannelError,
    ImageReadError,
    atomic_write,
    colorize,
    read_bands,
    read_image,
    read_mask,
    save_index_png,
    save_rgb_png,
    to_uint8,
)
from .inference import Predictor


@dataclass
class PredictionReport:
    """What ``predict_paths`` did: the index masks written, the inputs skipped with the reason, the inputs whose
    outputs were there already (``resume``), how long it took on how many processes, and, when a SIGINT or
    SIGTERM stopped it, which (``stopped``) and how many of the ``inputs`` have their outputs."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    areas_csv: Path | None = None
    resumed: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    processes: int = 1
    stopped: Stop | None = None
    inputs: int = 0  # readable or not, after expanding folders and patterns

    @property
    def complete(self) -> int:
        """Inputs whose three outputs exist now (written by this run or before it)."""
        return len(self.written) + len(self.resumed)


@dataclass(frozen=True)
class _Job:
    """One input: its position in the ordered list of all inputs, its output stem, and whether its three
    outputs exist already (``resume``: only its areas row is still wanted)."""

    index: int
    path: Path
    stem: str
    done: bool = False


@dataclass
class _Part:
    """One process's share of the work, by job index (picklable, gathered on every process)."""

    written: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    rows: dict[int, list[str]] = field(default_factory=dict)
    stopped: Stop | None = None


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expands files, directories (their images, not recursive) and glob patterns into image paths.

    A file named explicitly is kept whatever its extension; directories and patterns contribute the
    files with a known image extension. Duplicates are dropped, order is kept.

    Returns:
        The paths, and ``(input, reason)`` for each input that yielded nothing.
    """
    found: list[Path] = []
    missing: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = sorted(child for child in path.iterdir() if _is_image_file(child))
        elif any(char in str(item) for char in "*?["):
            matches = sorted(Path(match) for match in glob.glob(str(item), recursive=True))
            matches = [match for match in matches if _is_image_file(match)]
        else:
            missing.append((path, "no such file or directory"))
            continue
        if not matches:
            missing.append((path, "no image files found"))
        found += matches
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values()), missing


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (*IMAGE_EXTENSIONS, ".npy")  # .npy: multi-band inputs


def _output_names(stem: str) -> tuple[str, str, str]:
    return f"{stem}.png", f"{stem}_color.png", f"{stem}_overlay.png"


def _expected_outputs(stem: str, task: str, classes: Sequence[str], save_probs: bool) -> list[str]:
    """The files (relative to the output folder) one image's prediction writes for a model of ``task``."""
    index, color, overlay_name = _output_names(stem)
    names = {"multiclass": [index, color, overlay_name], "binary": [index, overlay_name],
             "multilabel": [*(f"{stem}/{name}.png" for name in classes), overlay_name]}[task]
    return names + ([f"{stem}_probs.npy"] if save_probs else [])


def _claim_stem(stem: str, taken: set[str]) -> str:
    """First of ``stem``, ``stem_1``, ... whose output names are still free (case-insensitively)."""
    candidate, counter = stem, 0
    while any(name.lower() in taken for name in _output_names(candidate)):
        counter += 1
        candidate = f"{stem}_{counter}"
    taken.update(name.lower() for name in _output_names(candidate))
    return candidate


def default_loader_workers() -> int:
    """Decoding processes per predicting process: 2, or fewer on a smaller machine."""
    return min(2, default_workers())


def predict_paths(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    area_table: bool = False,
    progress: bool = True,
    workers: int | None = None,
    resume: bool = False,
    distributed: bool = False,
    save_probs: bool = False,
) -> PredictionReport:
    """Predicts every image named by ``inputs`` (files, directories, glob patterns) into ``out_dir``.

    For each image it writes ``<stem>.png`` (palette PNG, pixel = class id), ``<stem>_color.png`` and
    ``<stem>_overlay.png``; inputs sharing a stem get ``<stem>_1`` and so on, in input order (an input that
    turns out unreadable keeps its name reserved, so names never depend on which files decode). Inputs that
    cannot be read are skipped and listed, with the reason, in the report's ``failed``. With ``area_table``,
    ``areas.csv`` gets one row per image, in input order, with the fraction of its pixels predicted as each class.

    Args:
        workers: DataLoader processes that decode the images (default :func:`default_loader_workers`; 0: the
            calling thread).
        resume: skip an input whose three outputs exist already (listed in ``resumed``); its areas row, if
            wanted, is read from its index mask.
        distributed: every process of the current process group (torchrun) calls this with the same
            arguments: rank 0 decides the names, each process predicts its share of the images, and every
            process returns the report of the whole run. Rank 0 writes ``areas.csv`` and alone shows the
            progress bar, over its own share.
        save_probs: also write ``<stem>_probs.npy`` (see the module's docstring for the format).

    The outputs of binary and multilabel models differ (0/255 masks; see the module's docstring).
    A SIGINT or SIGTERM (to any process) stops every process after its current image: the outputs written so
    far stay (``resume`` continues), ``areas.csv`` is not written, and the report says which signal in ``stopped``.
    """
    loader_workers = default_loader_workers() if workers is None else workers
    if loader_workers < 0:
        raise ValueError(f"workers must be 0 or more, got {loader_workers}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    expected = functools.partial(_expected_outputs, task=predictor.task, classes=predictor.classes,
                                 save_probs=save_probs)
    jobs, missing = dist.from_main(lambda: _plan(inputs, out_dir, resume, expected)) if distributed else _plan(
        inputs, out_dir, resume, expected)
    todo = [job for job in jobs if area_table or not job.done]
    rank, size = dist.rank_and_size() if distributed else (0, 1)
    share = [todo[i] for i in dist.shard(len(todo))] if distributed else todo
    desc = "predict" if size == 1 else f"predict (rank 0's share, {size} processes)"

    def work() -> _Part:
        return _predict_share(predictor, share, out_dir, loader_workers, save_probs,
                              tqdm(total=len(share), desc=desc, unit="image", disable=not (progress and rank == 0)),
                              rounds=math.ceil(len(todo) / size))

    parts = dist.gather_results(work) if distributed else [work()]
    report = _merge(jobs, missing, parts, out_dir, predictor.task)
    report.stopped, report.inputs = parts[0].stopped, len(jobs)
    if area_table and not report.stopped:
        report.areas_csv = out_dir / "areas.csv"
    if report.areas_csv and rank == 0:
        rows = {index: row for part in parts for index, row in part.rows.items()}
        with atomic_write(report.areas_csv, "w") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "mask", *predictor.classes])
            writer.writerows(rows[index] for index in sorted(rows))
    report.seconds, report.processes = time.perf_counter() - started, size
    return report


def _plan(inputs: Sequence[str | Path], out_dir: Path, resume: bool, expected: Callable[[str], list[str]]
          ) -> tuple[list[_Job], list[tuple[Path, str]]]:
    """Every input's output stem, decided on the whole ordered list, and whether its outputs exist already."""
    paths, missing = expand_inputs(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    jobs = []
    for index, path in enumerate(paths):
        stem = _claim_stem(path.stem, taken)
        done = resume and all((out_dir / name).is_file() for name in expected(stem))
        jobs.append(_Job(index, path, stem, done))
    return jobs, missing


class _Decoded(Dataset):
    """``(job position, image, existing mask, failure reason)`` for each job, decoded in loader workers: the
    image to predict, or for a job whose outputs exist (``resume``) its index mask; an image that cannot be
    read gives the reason instead."""

    def __init__(self, jobs: list[_Job], out_dir: Path, num_classes: int, task: str = "multiclass",
                 classes: Sequence[str] = (), in_channels: int = 3, max_value: float | None = None) -> None:
        self.jobs, self.out_dir, self.num_classes = jobs, out_dir, num_classes
        self.task, self.classes, self.in_channels = task, list(classes), in_channels
        self.max_value = max_value

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | None, torch.Tensor | None, str | None]:
        job = self.jobs[position]
        if job.done:
            mask = self._existing_mask(job)
            if mask is not None:
                return position, None, mask, None
        try:
            return position, read_input(job.path, self.in_channels, self.max_value), None, None
        except ImageReadError as err:
            return position, None, None, str(err.__cause__ or err)

    def _existing_mask(self, job: _Job) -> torch.Tensor | None:
        """The index mask a previous run wrote, or None when it is unreadable or not this model's (then the
        image is predicted again)."""
        try:
            if self.task == "multilabel":
                return torch.stack([torch.from_numpy(read_mask(self.out_dir / job.stem / f"{name}.png")).long() // 255
                                    for name in self.classes])
            mask = torch.from_numpy(read_mask(self.out_dir / _output_names(job.stem)[0])).long()
        except (ImageReadError, ValueError, RuntimeError):
            return None
        if self.task == "binary":
            return mask // 255 if mask.numel() and set(mask.unique().tolist()) <= {0, 255} else None
        return mask if mask.numel() and int(mask.max()) < self.num_classes else None


def _as_is(item):
    return item


def _predict_share(predictor: Predictor, share: list[_Job], out_dir: Path, workers: int, save_probs: bool,
                   bar: tqdm, rounds: int) -> _Part:
    """Predicts (or, for jobs done before, reads the areas of) this process's jobs; returns what it did.

    After each job the processes agree whether any got SIGINT / SIGTERM (or failed); if so all stop there, the
    jobs done so far kept. ``rounds``: the largest share's length, the same on every process.
    """
    part = _Part()
    decoded = _Decoded(share, out_dir, predictor.num_classes, predictor.task, predictor.classes,
                       predictor.in_channels, predictor.max_value)
    loader = DataLoader(decoded, batch_size=None, collate_fn=_as_is, num_workers=workers, **worker_options(workers))
    with bar, stop_on_signals() as requested:
        def one(item: tuple) -> None:
            position, image, mask, reason = item
            _predict_job(predictor, share[position], image, mask, reason, out_dir, part, save_probs)
            bar.update(1)

        part.stopped = in_lockstep(loader, one, rounds=rounds, requested=requested, device=predictor.device)
    return part


def _predict_job(predictor: Predictor, job: _Job, image: torch.Tensor | None, mask: torch.Tensor | None,
                 reason: str | None, out_dir: Path, part: _Part, save_probs: bool = False) -> None:
    """One decoded job: predicted and written (or its mask read back), its areas row kept; a failure noted."""
    if reason is not None:
        part.failed.append((job.index, reason))
        return
    if mask is None:
        if save_probs or predictor.task != "multiclass":
            scores = predictor.logits_for_batch(predictor.preprocess(image))[0]
            mask = predictor.decide(scores).cpu() if predictor.crf is None else predictor.predict(image)
            if save_probs:
                _save_probs(predictor.probabilities(scores).cpu(), out_dir / f"{job.stem}_probs.npy")
        else:
            mask = predictor.predict(image)
        _write_outputs(predictor, _displayable(image), mask, out_dir, job.stem)
        part.written.append(job.index)
    if predictor.task == "multilabel":
        fractions = mask.flatten(1).float().mean(dim=1)
    else:
        fractions = torch.bincount(mask.flatten(), minlength=len(predictor.classes)) / mask.numel()
    part.rows[job.index] = [str(job.path), f"{job.stem}.png", *(f"{value:.6f}" for value in fractions.tolist())]


def _merge(jobs: list[_Job], missing: list[tuple[Path, str]], parts: list[_Part], out_dir: Path,
           task: str = "multiclass") -> PredictionReport:
    """The report of the whole run, in input order, from every process's part (a multilabel image's masks: its
    folder)."""
    written = sorted(index for part in parts for index in part.written)
    failed = sorted((index, reason) for part in parts for index, reason in part.failed)
    fresh = set(written)
    suffix = "" if task == "multilabel" else ".png"
    return PredictionReport(
        written=[out_dir / f"{jobs[index].stem}{suffix}" for index in written],
        failed=[*missing, *((jobs[index].path, reason) for index, reason in failed)],
        resumed=[out_dir / f"{job.stem}{suffix}" for job in jobs if job.done and job.index not in fresh],
    )


def _write_outputs(predictor: Predictor, image: torch.Tensor, mask: torch.Tensor, out_dir: Path, stem: str) -> None:
    index_name, color_name, overlay_name = _output_names(stem)
    palette = predictor.palette
    if predictor.task == "multiclass":
        save_index_png(mask, out_dir / index_name, palette)
        save_rgb_png(colorize(mask, palette), out_dir / color_name)
    elif predictor.task == "binary":
        save_grey_png(mask * 255, out_dir / index_name)
    else:
        (out_dir / stem).mkdir(exist_ok=True)
        for index, name in enumerate(predictor.classes):
            save_grey_png(mask[index] * 255, out_dir / stem / f"{name}.png")
    save_rgb_png(predictor.overlay(image, mask), out_dir / overlay_name)


def save_grey_png(mask: torch.Tensor, path: Path) -> None:
    """An ``H x W`` 0..255 map as an 8-bit greyscale PNG, written atomically."""
    buffer = io.BytesIO()
    Image.fromarray(mask.to(torch.uint8).numpy(), mode="L").save(buffer, format="PNG")
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())


def _save_probs(probs: torch.Tensor, path: Path) -> None:
    with atomic_write(path) as handle:
        np.save(handle, probs.to(torch.float16).numpy())


def _displayable(image: torch.Tensor) -> torch.Tensor:
    """A 3-channel uint8 picture of an input for the overlay: its first three bands, or its first band in grey."""
    image = to_uint8(image)  # float data (16-bit) is on the 0..1 scale
    if image.shape[0] >= 3:
        return image[:3]
    return image[:1].expand(3, *image.shape[1:])


def read_input(path: Path, channels: int, max_value: float | None = None) -> torch.Tensor:
    """An input image with the model's ``channels``: RGB through :func:`read_image`; other band counts, or any
    image when the training set a ``max_value``, through :func:`read_bands` (multi-band TIFF, ``.npy``; 16-bit data
    as float32 on 0..1, divided by ``max_value`` where given: as training read it)."""
    if channels == 3 and max_value is None:
        return read_image(path)
    try:
        return read_bands(path, channels, max_value)
    except ChannelError as err:
        raise ImageReadError(str(err)) from err
