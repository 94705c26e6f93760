"""One check for the files of a dataset: decode each one completely, in parallel, and remember the verdict.

Reading only headers lets a truncated JPEG through to the middle of training. :func:`inspect_files`
decodes every image and mask in full, in a thread pool sized to the CPUs (Pillow and zlib release
the GIL while decoding; ``benchmarks/verify_decode.py`` compares threads with processes), and keeps
what the checks need (:class:`FileFacts`: size, mode, EXIF orientation, label histogram, or why it
cannot be decoded). Verdicts are cached on disk keyed by resolved path + size + mtime_ns, so a
second start over unchanged files decodes nothing. :func:`pair_problems` and
:func:`label_problems` judge an image/mask pair from its facts; :func:`verify_dataset` runs it all
over one split. ``FolderDataset``, ``deeplab data check`` and the trainer's start-up check
(:func:`ensure_valid`) share this code.

Cache: one small JSON file per dataset root in ``$DEEPLAB_CACHE``, else ``$XDG_CACHE_HOME/deeplab``,
else ``~/.cache/deeplab``; written atomically; a corrupt or unreadable cache is ignored (and
rewritten), an unwritable one only means nothing is remembered.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError
from tqdm import tqdm

from ..constants import IGNORE_INDEX, cache_dir, default_workers
from ..imageio import (
    BAND_EXTENSIONS,
    COLOUR_MASK_MODES,
    MASK_MODES,
    ImageReadError,
    atomic_write,
    decode_bands,
    mask_mode_problem,
)
from .base import SegmentationDataset
from .labels import colours_to_ids, pixel_keys, unknown_colours_problem

CACHE_VERSION = 2  # 2: channels, colour-mask histograms
# EXIF orientations 5-8 are the transposed ones: the displayed image swaps width and height.
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class SkippedSampleWarning(UserWarning):
    """A bad sample left out because ``skip_bad`` was set (``deeplab data check`` lists them in its table instead)."""


class DatasetError(ValueError):
    """A dataset with problems; ``problems`` lists every one, the message shows them all."""

    def __init__(self, where: str, problems: Iterable[str]) -> None:
        self.problems = [str(problem) for problem in problems]
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{where}: {len(self.problems)} problem(s):\n{lines}")


# ---------------------------------------------------------------------------------------------- one file


@dataclass(frozen=True)
class FileFacts:
    """What decoding one file taught us. ``error`` set: it cannot be used, and says why."""

    error: str | None = None
    width: int = 0
    height: int = 0
    mode: str = ""
    orientation: int = 1  # EXIF orientation tag; 1 = stored upright
    channels: int = 0  # bands of a TIFF or .npy image (read by deeplab.imageio.read_bands); 0: a Pillow image
    values: tuple[int, ...] = ()  # single-channel files: the distinct pixel values (colour masks: R<<16|G<<8|B) ...
    counts: tuple[int, ...] = ()  # ... and how many pixels hold each
    lasting: bool = field(default=True, compare=False)  # False: an access error worth retrying (not cached)

    def size(self, upright: bool = False) -> tuple[int, int]:
        """(width, height), as stored or, with ``upright``, as displayed after the EXIF orientation."""
        if upright and self.orientation in _TRANSPOSED_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height

    def to_json(self) -> dict[str, Any]:
        """The fields that differ from their defaults (keeps the cache small)."""
        default = _NO_FACTS.__dict__
        return {k: v for k, v in asdict(self).items() if k != "lasting" and v != default[k]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileFacts:
        facts = cls(**data)
        facts = replace(facts, values=tuple(int(v) for v in facts.values), counts=tuple(int(c) for c in facts.counts))
        if len(facts.values) != len(facts.counts) or not isinstance(facts.mode, str):
            raise ValueError("malformed facts")
        return facts


_NO_FACTS = FileFacts()


def inspect_file(path: str | Path, mask: bool = False) -> FileFacts:
    """Decodes ``path`` completely (every pixel, not just the header) and returns what was learnt.

    TIFF and ``.npy`` images are decoded band by band (:func:`deeplab.imageio.decode_bands`); a ``mask``
    in RGB also gets the histogram of its colours.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return FileFacts(error="empty file")
        if not mask and path.suffix.lower() in BAND_EXTENSIONS:
            try:
                bands = decode_bands(path)
            except ImageReadError as err:
                return FileFacts(error=str(err.__cause__ or err).replace(str(path), path.name))
            return FileFacts(width=bands.shape[-1], height=bands.shape[-2], mode=str(bands.dtype),
                             channels=bands.shape[0])
        with Image.open(path) as image:
            image.load()
            facts = FileFacts(width=image.width, height=image.height, mode=image.mode,
                              orientation=_orientation(image))
            if image.mode in MASK_MODES:
                histogram = np.bincount(np.asarray(image, dtype=np.uint8).ravel(), minlength=256)
                values = np.flatnonzero(histogram)
                facts = replace(facts, values=tuple(values.tolist()), counts=tuple(histogram[values].tolist()))
            elif mask and image.mode in COLOUR_MASK_MODES:
                keys, counts = np.unique(pixel_keys(np.asarray(image)), return_counts=True)
                facts = replace(facts, values=tuple(keys.tolist()), counts=tuple(counts.tolist()))
            return facts
    except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
        return FileFacts(error=_describe(err, path), lasting=False)
    except UnidentifiedImageError:
        return FileFacts(error="not an image (Pillow cannot identify its format)")
    except Image.DecompressionBombError as err:
        return FileFacts(error=f"too large to decode safely ({err})")
    except _DECODE_ERRORS as err:
        return FileFacts(error=_describe(err, path))


def _orientation(image: Image.Image) -> int:
    try:
        value = int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except (TypeError, ValueError, SyntaxError, OSError):
        return 1
    return value if 1 <= value <= 8 else 1


def _describe(err: BaseException, path: Path) -> str:
    """Pillow's message without the absolute path it often repeats (messages name the file already)."""
    if isinstance(err, FileNotFoundError):
        return "file not found"
    text = str(err).replace(str(path), path.name) or type(err).__name__
    if "truncated" in text.lower() or isinstance(err, EOFError):
        unread = re.search(r"\d+ bytes not processed", text)
        return f"truncated file ({unread.group()})" if unread else "truncated file"
    return text


# --------------------------------------------------------------------------------------------- the cache


class VerdictCache:
    """File verdicts by resolved path, valid while the file's size and mtime_ns are unchanged.

    Args:
        path: the JSON file; ``None`` remembers nothing.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._known = self._read()
        self._new: dict[str, dict[str, Any]] = {}

    @classmethod
    def for_root(cls, root: str | Path) -> VerdictCache:
        """The cache shard of one dataset root (named after it, plus a hash of its resolved path)."""
        resolved = Path(root).resolve()
        digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", resolved.name)[:40] or "root"
        return cls(cache_dir() / "verified" / f"{name}-{digest}.json")

    def _read(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent, unreadable or corrupt: start afresh
            return {}
        files = data.get("files") if isinstance(data, dict) and data.get("version") == CACHE_VERSION else None
        return files if isinstance(files, dict) else {}

    def lookup(self, key: str, stat: os.stat_result) -> FileFacts | None:
        entry = self._known.get(key)
        try:
            if entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
                return FileFacts.from_json(entry["facts"])
        except (KeyError, TypeError, ValueError):  # no entry, or a malformed one: decode again
            pass
        return None

    def store(self, key: str, stat: os.stat_result, facts: FileFacts) -> None:
        if facts.lasting:
            self._new[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "facts": facts.to_json()}

    def save(self) -> None:
        """Merges the new verdicts into the file on disk (another process may have added some) atomically."""
        if self.path is None or not self._new:
            return
        merged = {**self._read(), **self._new}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.path, "w") as handle:
                json.dump({"version": CACHE_VERSION, "files": merged}, handle, separators=(",", ":"))
        except OSError:  # a read-only or full disk costs a re-check next time, never the run
            return
        self._known, self._new = merged, {}


def inspect_files(
    paths: Iterable[Path],
    *,
    cache: VerdictCache | None = None,
    progress: bool = True,
    desc: str = "verify",
    workers: int | None = None,
    masks: Collection[Path] = (),
) -> dict[Path, FileFacts]:
    """Facts for every path: from ``cache`` where size and mtime match, else decoded in a thread pool.

    Paths in ``masks`` are inspected as masks (colour histograms of RGB ones). New verdicts are saved to the
    cache at the end, also when interrupted.
    """
    masks = {Path(p) for p in masks}
    facts: dict[Path, FileFacts] = {}
    todo: list[tuple[Path, str, os.stat_result]] = []
    folders: dict[Path, Path] = {}  # resolving each folder once keeps a cached start fast
    for path in dict.fromkeys(Path(p) for p in paths):
        try:
            if path.parent not in folders:
                folders[path.parent] = path.parent.resolve()
            resolved = folders[path.parent] / path.name
            stat = resolved.stat()
        except OSError as err:
            facts[path] = FileFacts(error=_describe(err, path), lasting=False)
            continue
        known = cache.lookup(str(resolved), stat) if cache is not None else None
        if known is not None:
            facts[path] = known
        else:
            todo.append((path, str(resolved), stat))
    if not todo:
        return facts
    workers = min(workers or default_workers(), len(todo))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="deeplab-verify")
    bar = tqdm(total=len(todo), desc=desc, unit="file", disable=not progress, delay=0.5, dynamic_ncols=True)
    try:
        jobs = pool.map(inspect_file, [key for _, key, _ in todo], [path in masks for path, _, _ in todo])
        for (path, key, stat), result in zip(todo, jobs, strict=True):
            facts[path] = result
            if cache is not None:
                cache.store(key, stat, result)
            bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        if cache is not None:
            cache.save()
    return facts


# ---------------------------------------------------------------------------------------------- one pair


@dataclass(frozen=True, eq=False)
class SampleRules:
    """How a loader reads a pair, so that verification judges exactly what training will see."""

    mask_modes: tuple[str, ...] = SegmentationDataset.mask_modes
    upright: bool = False  # images are turned upright by their EXIF orientation before use
    num_classes: int | None = None  # None: no label range check (yet)
    ignore_index: int = IGNORE_INDEX
    label_map: np.ndarray | None = None  # 256 entries: stored value -> class id
    colours: np.ndarray | None = None  # colour masks: the key (R<<16|G<<8|B) of each class id, in id order
    in_channels: int = 3  # the channels the model takes (deeplab.imageio.read_bands)

    @classmethod
    def of(cls, dataset: SegmentationDataset) -> SampleRules:
        return cls(mask_modes=tuple(dataset.mask_modes), upright=dataset.upright_images,
                   num_classes=dataset.num_classes, ignore_index=dataset.ignore_index,
                   label_map=getattr(dataset, "label_map", None))


def channel_problem(name: str, facts: FileFacts, in_channels: int) -> str | None:
    """Why image ``name`` cannot give ``in_channels`` channels (``deeplab.imageio.read_bands``' rules), or None."""
    if facts.channels:  # TIFF or .npy: the stored bands, a single band may serve an RGB model
        if facts.channels == in_channels or (facts.channels == 1 and in_channels == 3):
            return None
        found = f"{facts.channels} band(s)"
    elif in_channels in (1, 3) or (in_channels == 4 and facts.mode == "RGBA"):
        return None
    else:
        found = f"a {facts.mode} image"
    return (f"{name}: {found} but model.in_channels={in_channels}; images with more than 3 channels are read "
            "from TIFF (multi-band or multi-page) or .npy files")


@dataclass(frozen=True)
class Problem:
    """One bad sample: ``kind`` is "missing", "unreadable", "mask mode", "channels", "size mismatch",
    "unknown colour" or "out of range"; ``detail`` names the file(s) and says what is wrong."""

    sample: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return self.detail


def pair_problems(
    sample: str, image: tuple[str, FileFacts], mask: tuple[str, FileFacts], rules: SampleRules
) -> list[Problem]:
    """Everything wrong with one (name shown, facts) image/mask pair; labels only if ``rules.num_classes``."""
    (image_name, image_facts), (mask_name, mask_facts) = image, mask
    problems = []
    for name, facts, what in ((image_name, image_facts, "image"), (mask_name, mask_facts, "mask")):
        if facts.error is not None:
            kind = "missing" if facts.error == "file not found" else "unreadable"
            problems.append(Problem(sample, kind, f"{name}: unreadable {what} ({facts.error})"))
    if mask_facts.error is None and mask_facts.mode not in rules.mask_modes:
        problems.append(Problem(sample, "mask mode", mask_mode_problem(mask_name, mask_facts.mode, rules.mask_modes)))
    if not problems and (channels := channel_problem(image_name, image_facts, rules.in_channels)):
        problems.append(Problem(sample, "channels", channels))
    if problems:
        return problems
    image_size, mask_size = image_facts.size(rules.upright), mask_facts.size()
    if image_size != mask_size:
        problems.append(Problem(sample, "size mismatch", (
            f"size mismatch: {image_name} is {image_size[0]}x{image_size[1]} (W x H) "
            f"but {mask_name} is {mask_size[0]}x{mask_size[1]}")))
    return problems + label_problems(sample, mask, rules)


def label_problems(sample: str, mask: tuple[str, FileFacts], rules: SampleRules) -> list[Problem]:
    """Mask values that are neither a class id nor ``ignore_index`` (after ``label_map``)."""
    name, facts = mask
    if rules.num_classes is None or facts.error is not None or not facts.values:
        return []
    stored = np.asarray(facts.values, dtype=np.int64)
    if facts.mode in COLOUR_MASK_MODES:
        known = np.isin(stored, rules.colours if rules.colours is not None else [])
        if not known.all():
            return [Problem(sample, "unknown colour", unknown_colours_problem(name, stored[~known].tolist()))]
        stored = colours_to_ids(stored, rules.colours, name).astype(np.int64)
    mapped = rules.label_map[stored] if rules.label_map is not None else stored
    valid = (mapped < rules.num_classes) | (mapped == rules.ignore_index)
    if valid.all():
        return []
    expected = f"neither class ids (0..{rules.num_classes - 1}) nor ignore_index {rules.ignore_index}"
    bad = ", ".join(str(v) for v in stored[~valid])
    if rules.label_map is None:
        return [Problem(sample, "out of range", f"{name}: label values {bad} are {expected}")]
    became = ", ".join(str(v) for v in mapped[~valid])
    return [Problem(sample, "out of range", f"{name}: stored values {bad} become {became}, {expected}")]


# ------------------------------------------------------------------------------------------- one split


@dataclass
class VerifyReport:
    """What :func:`verify_dataset` found: every problem, the bad sample indices, and the pixel count of
    every value (0..255, after ``label_map``) over the samples whose image and mask are usable."""

    num_samples: int
    problems: list[Problem]
    bad: list[int]
    pixels: np.ndarray


def verify_dataset(dataset: SegmentationDataset, *, progress: bool = True, desc: str = "verify") -> VerifyReport:
    """Decodes every image and mask of ``dataset`` (cached, in parallel) and judges each pair.

    Datasets whose samples are files (``dataset.files(i)`` is not ``None``) are judged from their
    file facts; others (generated data) by loading each sample.
    """
    rules = SampleRules.of(dataset)
    count = len(dataset)
    pairs = [dataset.files(i) for i in range(count)]
    if count and pairs[0] is not None:
        root = getattr(dataset, "root", None) or Path(os.path.commonpath([str(p) for pair in pairs for p in pair]))
        facts = inspect_files((p for pair in pairs for p in pair), cache=VerdictCache.for_root(root),
                              progress=progress, desc=desc)
        show = _shortener(root)
        judged = [(show(image), facts[image], show(mask), facts[mask]) for image, mask in pairs]
    else:
        judged = [_loaded(dataset, i) for i in tqdm(range(count), desc=desc, disable=not progress, delay=0.5)]
    pixels = np.zeros(256, dtype=np.int64)
    problems, bad = [], []
    for index, (image_name, image_facts, mask_name, mask_facts) in enumerate(judged):
        found = pair_problems(dataset.name(index), (image_name, image_facts), (mask_name, mask_facts), rules)
        if found:
            problems += found
            bad.append(index)
        if any(p.kind != "out of range" for p in found):  # stray labels aside, the mask's pixels still count
            continue
        mapped = np.asarray(mask_facts.values, dtype=np.int64)
        if rules.label_map is not None:
            mapped = rules.label_map[mapped]
        np.add.at(pixels, mapped, np.asarray(mask_facts.counts, dtype=np.int64))
    return VerifyReport(count, problems, bad, pixels)


def _shortener(root: Path) -> Callable[[Path], str]:
    """Shows paths relative to the dataset root when they lie inside it (short, still unambiguous)."""
    root = Path(root)

    def show(path: Path) -> str:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            return str(path)

    return show


def _loaded(dataset: SegmentationDataset, index: int) -> tuple[str, FileFacts, str, FileFacts]:
    """Facts of a sample that is not a pair of files, from loading it."""
    name = dataset.name(index)
    try:
        image, mask = dataset.load(index)
    except Exception as err:  # any loading failure is a finding, not a crash
        # The error stands for the whole pair: the mask gets neutral facts so that only it is reported.
        failed = FileFacts(error=f"{type(err).__name__}: {err}")
        return f"{name} (image)", failed, f"{name} (mask)", FileFacts(mode="L")
    histogram = torch.bincount(torch.as_tensor(mask).flatten().long(), minlength=256)
    values = torch.nonzero(histogram).flatten()
    image_facts = FileFacts(width=image.shape[-1], height=image.shape[-2], mode="RGB")
    mask_facts = FileFacts(width=mask.shape[-1], height=mask.shape[-2], mode="L",
                           values=tuple(values.tolist()), counts=tuple(histogram[values].tolist()))
    return f"{name} (image)", image_facts, f"{name} (mask)", mask_facts


def ensure_valid(
    datasets: Mapping[str, SegmentationDataset], *, skip_bad: bool = False, progress: bool = True
) -> dict[str, VerifyReport]:
    """Verifies several splits and raises one :class:`DatasetError` listing every bad file of all of them.

    With ``skip_bad`` the bad samples are dropped instead (``dataset.drop(indices)``), with one
    warning each; a split left empty is still an error.
    """
    reports = {split: verify_dataset(data, progress=progress, desc=f"verify {split}")
               for split, data in datasets.items()}
    problems = [f"{split}: {p}" for split, report in reports.items() for p in report.problems]
    where = _where(datasets)
    if problems and not skip_bad:
        raise DatasetError(where, problems)
    for split, report in reports.items():
        data = datasets[split]
        for index in report.bad:
            details = "; ".join(p.detail for p in report.problems if p.sample == data.name(index))
            warnings.warn(f"{where}: skipping {split} sample {data.name(index)!r}: {details}",
                          SkippedSampleWarning, stacklevel=2)
        if report.bad:
            data.drop(report.bad)
        if report.num_samples and not len(data):
            raise DatasetError(where, [f"{split}: no usable samples left"])
    return reports


def _where(datasets: Mapping[str, SegmentationDataset]) -> str:
    roots = {str(getattr(d, "root", "")) for d in datasets.values()} - {""}
    splits = ", ".join(datasets)
    return f"dataset {', '.join(sorted(roots))!r} (splits {splits})" if roots else f"dataset (splits {splits})"
