"""Files to masks: expand files, folders and globs into images, predict each, write index / colour / overlay PNGs."""

from __future__ import annotations

import csv
import glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .constants import Palette
from .imageio import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    atomic_write,
    colorize,
    overlay,
    read_image,
    save_index_png,
    save_rgb_png,
)
from .inference import Predictor


@dataclass
class PredictionReport:
    """What ``predict_paths`` did: the index masks written and the inputs skipped, with the reason."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    areas_csv: Path | None = None


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
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _output_names(stem: str) -> tuple[str, str, str]:
    return f"{stem}.png", f"{stem}_color.png", f"{stem}_overlay.png"


def _claim_stem(stem: str, taken: set[str]) -> str:
    """First of ``stem``, ``stem_1``, ... whose output names are still free (case-insensitively)."""
    candidate, counter = stem, 0
    while any(name.lower() in taken for name in _output_names(candidate)):
        counter += 1
        candidate = f"{stem}_{counter}"
    taken.update(name.lower() for name in _output_names(candidate))
    return candidate


def predict_paths(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    area_table: bool = False,
    progress: bool = True,
) -> PredictionReport:
    """Predicts every image named by ``inputs`` (files, directories, glob patterns) into ``out_dir``.

    For each image it writes ``<stem>.png`` (palette PNG, pixel = class id), ``<stem>_color.png`` and
    ``<stem>_overlay.png``; inputs sharing a stem get ``<stem>_1`` and so on. Inputs that cannot be
    read are skipped and listed, with the reason, in the report's ``failed``. With ``area_table``, ``areas.csv``
    gets one row per image with the fraction of its pixels predicted as each class.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, failed = expand_inputs(inputs)
    report = PredictionReport()
    for path, reason in failed:
        _skip(report, path, reason)
    taken: set[str] = set()
    rows: list[list[str]] = []
    for path in tqdm(paths, desc="predict", unit="image", disable=not progress):
        try:
            image = read_image(path)
        except ImageReadError as err:
            _skip(report, path, str(err.__cause__ or err))
            continue
        mask = predictor.predict(image)
        stem = _claim_stem(path.stem, taken)
        _write_outputs(predictor.palette, image, mask, out_dir, stem)
        report.written.append(out_dir / f"{stem}.png")
        fractions = torch.bincount(mask.flatten(), minlength=predictor.num_classes) / mask.numel()
        rows.append([str(path), f"{stem}.png", *(f"{value:.6f}" for value in fractions.tolist())])
    if area_table:
        report.areas_csv = out_dir / "areas.csv"
        with atomic_write(report.areas_csv, "w") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "mask", *predictor.classes])
            writer.writerows(rows)
    return report


def _skip(report: PredictionReport, path: Path, reason: str) -> None:
    report.failed.append((path, reason))


def _write_outputs(
    palette: Palette, image: torch.Tensor, mask: torch.Tensor, out_dir: Path, stem: str
) -> None:
    index_name, color_name, overlay_name = _output_names(stem)
    save_index_png(mask, out_dir / index_name, palette)
    save_rgb_png(colorize(mask, palette), out_dir / color_name)
    save_rgb_png(overlay(image, mask, palette), out_dir / overlay_name)
