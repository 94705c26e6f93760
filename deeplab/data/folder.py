"""Any folder of images and masks as a segmentation dataset, validated up front.

Layout::

    root/
      images/<stem>.<ext>       any of deeplab.imageio.IMAGE_EXTENSIONS (jpg, png, bmp, gif, tiff, webp, ppm ...)
                                or .npy; TIFF and .npy may hold any number of bands (deeplab.imageio.read_bands)
      masks/<stem>.png          pixel value = class id (mode L or P; for P the index, not the colour), 0/1 or
                                0/255 binary masks, or RGB colour masks mapped through classes.txt's colours
      masks/<stem>/<class>.png  multilabel (model.task=multilabel): one 0/1 or 0/255 PNG per class of classes.txt
      classes.txt               optional: one class per line, "name", "name R G B" or "name #RRGGBB"
      splits/train.txt          optional: one stem per line (with splits/val.txt)
      splits/val.txt

The mask formats and the targets of each task are described in :mod:`deeplab.data.labels` and docs/data.md.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from ..constants import IGNORE_INDEX
from ..imageio import COLOUR_MASK_MODES, IMAGE_EXTENSIONS, MASK_MODES, read_bands, read_mask
from ..imageio import MaskModeError as MaskModeError  # noqa: F401  (its home was here; still importable)
from ..palettes import default_palette
from .base import PairTransform, SegmentationDataset
from .labels import TASKS, binary_table, colour_keys, colours_to_ids, label_table, mask_summary, pixel_keys
from .verify import (
    DatasetError,
    FileFacts,
    Problem,
    SampleRules,
    SkippedSampleWarning,
    VerdictCache,
    inspect_files,
    pair_problems,
)

SPLITS = ("train", "val")
IMAGE_SUFFIXES = IMAGE_EXTENSIONS | {".npy"}

Colour = tuple[int, int, int]
_HEX_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


@dataclass
class _Pair:
    """What validation learnt about one stem; ``problems`` empty means usable."""

    stem: str
    image: Path | None
    mask: Path | None
    problems: list[Problem] = field(default_factory=list)

    def add(self, kind: str, detail: str) -> None:
        self.problems.append(Problem(self.stem, kind, detail))

    @property
    def complete(self) -> bool:
        return self.image is not None and self.mask is not None


def parse_classes_file(path: str | Path) -> tuple[list[str], list[Colour]]:
    """Read a ``classes.txt``: class names in id order and their colours.

    Each non-blank line that does not start with ``#`` is ``name``, ``name R G B`` or
    ``name #RRGGBB``; names may contain spaces. Classes without a colour get the VOC colour of
    their id.

    Raises:
        DatasetError: listing every malformed line.
    """
    names, palette, problems = _parse_classes(Path(path))
    if problems:
        raise DatasetError(str(path), problems)
    return names, palette


def _parse_classes(path: Path) -> tuple[list[str], list[Colour], list[str]]:
    names: list[str] = []
    colours: list[Colour | None] = []
    problems: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        return [], [], [f"{path.name}: cannot read ({err})"]
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            name, colour = _parse_class_line(line)
        except ValueError as err:
            problems.append(f"{path.name} line {number}: {err}")
            continue
        if name in names:
            problems.append(f"{path.name} line {number}: class {name!r} is listed twice")
        names.append(name)
        colours.append(colour)
    defaults = default_palette(min(len(names), 256))
    palette = [c if c is not None else defaults[i % 256] for i, c in enumerate(colours)]
    return names, palette, problems


def _parse_class_line(line: str) -> tuple[str, Colour | None]:
    """``"name"``, ``"name R G B"`` or ``"name #RRGGBB"`` -> (name, colour or None)."""
    tokens = line.split()
    if tokens[-1].startswith("#") and len(tokens) > 1:
        if not _HEX_COLOUR.fullmatch(tokens[-1]):
            raise ValueError(f"bad colour {tokens[-1]!r} in {line!r}: expected #RRGGBB")
        value = int(tokens[-1][1:], 16)
        return " ".join(tokens[:-1]), ((value >> 16) & 255, (value >> 8) & 255, value & 255)
    trailing = 0
    while trailing < min(3, len(tokens) - 1) and re.fullmatch(r"[+-]?\d+", tokens[-1 - trailing]):
        trailing += 1
    if trailing == 0:
        return line, None
    if trailing < 3:
        raise ValueError(f"incomplete colour in {line!r}: expected 'name R G B' or 'name #RRGGBB'")
    rgb = tuple(int(t) for t in tokens[-3:])
    if not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"colour components must be 0..255 in {line!r}")
    return " ".join(tokens[:-3]), (rgb[0], rgb[1], rgb[2])


@dataclass
class _Listing:
    """The files of one folder by stem: accepted extensions, other files, and ambiguous stems."""

    files: dict[str, Path]
    others: dict[str, list[Path]]
    duplicates: dict[str, list[Path]]

    @classmethod
    def scan(cls, folder: Path, extensions: Collection[str], folders: bool = False) -> _Listing:
        """Files with one of ``extensions`` by stem; with ``folders``, sub-folders by name instead."""
        accepted: dict[str, list[Path]] = {}
        others: dict[str, list[Path]] = {}
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not (path.is_dir() if folders else path.is_file()):
                continue
            if folders:
                accepted[path.name] = [path]
                continue
            target = accepted if path.suffix.lower() in extensions else others
            target.setdefault(path.stem, []).append(path)
        files = {stem: paths[0] for stem, paths in accepted.items()}
        return cls(files, others, {stem: paths for stem, paths in accepted.items() if len(paths) > 1})


class FolderDataset(SegmentationDataset):
    """A folder of images and masks matched by file stem (layout in the module docstring).

    At construction the whole split is checked: every image has a mask and vice versa, every file
    decodes completely (a truncated JPEG or PNG is caught here, not mid-training), sizes agree (after
    EXIF orientation), mask values are class ids or ``ignore_index``, and split files name existing
    stems. All problems are raised together in one ``DatasetError``, or, with ``skip_bad=True``, the
    bad pairs are skipped with one warning each (their problems stay in ``skipped``). The decoding is
    :mod:`deeplab.data.verify`'s: parallel, with a progress bar, and cached per file (path + size +
    mtime), so constructing the dataset again over unchanged files decodes nothing.

    Classes come from ``root/classes.txt`` if present (its line count must then equal
    ``num_classes`` when that is given); else from ``num_classes``; else ``num_classes`` is inferred
    as the largest label (other than ``ignore_index``) in *all* masks of the folder plus one, so
    that the train and val splits agree. Names are then ``class_0, class_1, ...`` with VOC colours.

    The split comes from ``root/splits/{split}.txt`` if present; otherwise the sorted stems are
    shuffled with ``seed`` and the first ``round(val_ratio * n)`` (at least one, at most ``n - 1``
    when ``val_ratio > 0``) form ``val``, the rest ``train``.

    Masks must align with the image as displayed, i.e. after applying its EXIF orientation.

    Targets follow ``task`` (:mod:`deeplab.data.labels`): ``multiclass`` class ids (index or colour masks),
    ``binary`` 0/1 (``classes`` is then the one foreground class), ``multilabel`` ``L x H x W`` planes from
    ``masks/<stem>/<class>.png`` (a missing class file means the class is absent). ``label_map`` maps stored
    mask values before anything else (``{255: 1}``); binary and multilabel folders whose masks are 0/255 read
    255 as 1 without one. Images are read with ``in_channels`` channels, 16-bit data scaled by
    ``max_value`` (:func:`deeplab.imageio.read_bands`).
    """

    mask_modes = MASK_MODES
    upright_images = True

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        transforms: PairTransform | None = None,
        val_ratio: float = 0.2,
        seed: int = 0,
        num_classes: int | None = None,
        ignore_index: int = IGNORE_INDEX,
        skip_bad: bool = False,
        task: str = "multiclass",
        in_channels: int = 3,
        label_map: Mapping[int, int] | None = None,
        max_value: float | None = None,
    ) -> None:
        super().__init__(transforms)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0.0 <= val_ratio < 1.0:
            raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
        if num_classes is not None and not 1 <= num_classes <= 256:
            raise ValueError(f"num_classes must be in 1..256 (uint8 masks), got {num_classes}")
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {in_channels}")
        self.root = Path(root)
        self.split = split
        self.ignore_index = ignore_index
        self.task = task
        self.in_channels = in_channels
        self.max_value = max_value
        self.label_map = label_table(label_map)
        self._explicit_map = self.label_map is not None
        if task == "multiclass":
            self.mask_modes = MASK_MODES + COLOUR_MASK_MODES
        pairs = self._validate(val_ratio, seed, num_classes, skip_bad)
        self.stems = [pair.stem for pair in pairs]
        self.image_paths = [pair.image for pair in pairs]
        self.mask_paths = [pair.mask for pair in pairs]

    def __len__(self) -> int:
        return len(self.stems)

    def name(self, index: int) -> str:
        return self.stems[index]

    def files(self, index: int) -> tuple[Path, Path]:
        """The image and mask paths of sample ``index`` (for multilabel, the mask folder)."""
        return self.image_paths[index], self.mask_paths[index]

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The image (``in_channels x H x W``, uint8 or float 0..1) and the target of ``task``."""
        image = read_bands(self.image_paths[index], self.in_channels, self.max_value)
        mask = torch.from_numpy(self.read_target(self.mask_paths[index], tuple(image.shape[-2:])))
        if image.shape[-2:] != mask.shape[-2:]:
            sizes = f"image {tuple(image.shape[-2:])} and mask {tuple(mask.shape[-2:])} (H x W)"
            raise DatasetError(self._where, [f"{self.stems[index]}: {sizes} differ when loaded"])
        return tv_tensors.Image(image), tv_tensors.Mask(mask)

    def read_target(self, mask: Path, size: tuple[int, int]) -> np.ndarray:
        """The uint8 target of one mask file (or multilabel folder) after colours and ``label_map``."""
        if self.task == "multilabel":
            planes = [self._mapped(read_mask(mask / f"{name}.png")) if (mask / f"{name}.png").is_file()
                      else np.zeros(size, dtype=np.uint8) for name in self.classes]
            return np.stack(planes)
        with Image.open(mask) as opened:
            colour = opened.mode in COLOUR_MASK_MODES and self.task == "multiclass"
            if colour:
                keys = pixel_keys(np.asarray(opened.convert("RGB")))
        if colour:
            return self._mapped(colours_to_ids(keys, colour_keys(self.palette), str(mask)))
        return self._mapped(read_mask(mask, MASK_MODES))

    def _mapped(self, values: np.ndarray) -> np.ndarray:
        return self.label_map[values] if self.label_map is not None else values

    def mask_format(self) -> tuple[str, str | None]:
        """What the masks of this split are, and the config line that fits them (None: they are read right)."""
        return mask_summary(self.stored_values, task=self.task, colour=self._colour, multilabel=self._multilabel,
                            label_map=self._explicit_map, ignore_index=self.ignore_index)

    # ------------------------------------------------------------------ validation

    def _validate(self, val_ratio: float, seed: int, num_classes: int | None, skip_bad: bool) -> list[_Pair]:
        """Check the split; return its usable pairs or raise one ``DatasetError`` with every problem."""
        fatal = self._check_folders()
        if fatal:
            raise DatasetError(self._where, fatal)
        images = _Listing.scan(self.root / "images", IMAGE_SUFFIXES)
        masks = _Listing.scan(self.root / "masks", (".png",), folders=self.task == "multilabel")
        fatal += self._init_classes(num_classes)
        stems, split_problems = self._split_stems(
            sorted(images.files.keys() | masks.files.keys()), val_ratio, seed
        )
        fatal += split_problems
        pairs = [self._pair(stem, images, masks) for stem in stems]
        whole_folder = not self.classes or (self.task != "multiclass" and not self._explicit_map)
        others = self._other_pairs(images, masks, set(stems)) if whole_folder else []
        self._judge(pairs, others)
        return self._collect(fatal, pairs, skip_bad)

    def _mask_files(self, pair: _Pair) -> list[Path]:
        """The files of a pair's mask: the mask, or a multilabel folder's class PNGs."""
        if self.task != "multilabel":
            return [pair.mask]
        return sorted(p for p in pair.mask.iterdir() if p.is_file() and not p.name.startswith("."))

    def _judge(self, pairs: list[_Pair], others: list[_Pair]) -> None:
        """Decode every file of the complete pairs (in parallel, cached) and record each pair's problems.

        ``others`` (pairs outside the split) only serve to infer the classes when they are not given, and
        the reading of 0/255 masks of a binary or multilabel folder.
        """
        complete = [pair for pair in [*pairs, *others] if pair.complete]
        mask_files = {pair.stem: self._mask_files(pair) for pair in complete}
        masks = [path for files in mask_files.values() for path in files]
        facts = inspect_files(
            [*(pair.image for pair in complete), *masks], masks=masks,
            cache=VerdictCache.for_root(self.root), desc=f"verify {self.root.name} ({self.split})",
        )
        self._multilabel = self.task == "multilabel"
        self._colour = any(facts[path].mode in COLOUR_MASK_MODES for path in masks)
        single = [facts[path] for path in masks if facts[path].error is None and facts[path].mode in MASK_MODES]
        everywhere: Counter[int] = Counter()
        for mask in single:
            everywhere.update(dict(zip(mask.values, mask.counts, strict=True)))
        if self.task != "multiclass" and self.label_map is None:
            self.label_map = binary_table(set(everywhere), self.ignore_index)
        if not self.classes:
            self._infer_classes([] if self._colour else single)
        labels = 2 if self.task != "multiclass" else len(self.classes)
        rules = SampleRules(mask_modes=self.mask_modes, upright=True, ignore_index=self.ignore_index,
                            num_classes=labels, label_map=self.label_map, in_channels=self.in_channels,
                            colours=colour_keys(self.palette) if self.task == "multiclass" else None)
        stored: Counter[int] = Counter()
        self.class_pixels = np.zeros(len(self.classes) + (self.task == "binary"), dtype=np.int64)
        self.ignored_pixels = 0
        for pair in pairs:
            if pair.complete:
                self._judge_pair(pair, mask_files[pair.stem], facts, rules, stored)
        self.stored_values = dict(stored)

    def _judge_pair(self, pair: _Pair, files: list[Path], facts: dict[Path, FileFacts], rules: SampleRules,
                    stored: Counter[int]) -> None:
        """Record one complete pair's problems; count its pixels if it is good, its stored mask values in any case
        (unless a mask cannot be read)."""
        image = self._named(pair.image, facts)
        if not files:
            pair.add("missing", f"{self._rel(pair.mask)}/: no class PNG in this multilabel mask folder")
        colours_known = (self.root / "classes.txt").is_file() or self.task != "multiclass"
        for path in files:
            if self._multilabel and (path.suffix.lower() != ".png" or path.stem not in self.classes):
                pair.add("unknown class", f"{self._rel(path)}: not '<class name>.png' for a class of classes.txt")
                continue
            if not colours_known and facts[path].mode in COLOUR_MASK_MODES:
                pair.add("mask mode", f"{self._rel(path)}: an RGB colour mask, but there is no classes.txt to map "
                         "its colours to classes: add one 'name R G B' line per class")
                continue
            found = pair_problems(pair.stem, image, self._named(path, facts), rules)
            pair.problems += [p for p in found if p not in pair.problems]  # an image's problem only once
            if facts[path].mode in MASK_MODES and all(p.kind == "out of range" for p in found):
                stored.update(dict(zip(facts[path].values, facts[path].counts, strict=True)))
        if not pair.problems:
            self._count_pixels(files, facts)

    def _count_pixels(self, files: list[Path], facts: dict[Path, FileFacts]) -> None:
        """Adds one good sample's pixels to ``class_pixels`` (per class; binary: background, foreground;
        multilabel: the pixels on per label) and ``ignored_pixels``."""
        for path in files:
            fact = facts[path]
            values = np.asarray(fact.values, dtype=np.int64)
            if fact.mode in COLOUR_MASK_MODES:
                values = colours_to_ids(values, colour_keys(self.palette)).astype(np.int64)
            mapped = self._mapped(values)
            counts = np.asarray(fact.counts, dtype=np.int64)
            self.ignored_pixels += int(counts[mapped == self.ignore_index].sum())
            if self.task == "multilabel":
                self.class_pixels[self.classes.index(path.stem)] += int(counts[mapped == 1].sum())
            else:
                keep = mapped < len(self.class_pixels)
                np.add.at(self.class_pixels, mapped[keep], counts[keep])

    def _named(self, path: Path, facts: dict[Path, FileFacts]) -> tuple[str, FileFacts]:
        return self._rel(path), facts[path]

    @property
    def _where(self) -> str:
        return f"dataset {str(self.root)!r} (split {self.split!r})"

    def _check_folders(self) -> list[str]:
        if not self.root.is_dir():
            return [f"{self.root} is not a directory"]
        return [
            f"missing folder {sub}/ (expected {self.root / sub})"
            for sub in ("images", "masks")
            if not (self.root / sub).is_dir()
        ]

    def _init_classes(self, num_classes: int | None) -> list[str]:
        problems = self._read_classes(num_classes)
        if self.task == "binary" and self.classes:  # one output: the foreground (a listed background is dropped)
            if len(self.classes) > 2:
                problems.append(f"model.task=binary takes classes.txt with 1 (foreground) or 2 (background, "
                                f"foreground) classes; it lists {len(self.classes)}")
            self.classes, self.palette = self.classes[-1:], self.palette[-1:]
        if self.task == "multilabel" and not (self.root / "classes.txt").is_file():
            problems.append("model.task=multilabel needs classes.txt: one line per class, named as the mask "
                            "files masks/<stem>/<class name>.png")
        return problems

    def _read_classes(self, num_classes: int | None) -> list[str]:
        classes_file = self.root / "classes.txt"
        self.classes, self.palette = (), []
        if not classes_file.is_file():
            if num_classes is not None:
                self.classes = tuple(f"class_{i}" for i in range(num_classes))
                self.palette = default_palette(num_classes)
            return []
        names, palette, problems = _parse_classes(classes_file)
        if num_classes is not None and len(names) != num_classes:
            problems.append(f"classes.txt lists {len(names)} classes but num_classes={num_classes}")
        if not names and not problems:
            problems.append("classes.txt lists no classes")
        if len(names) > 256:
            problems.append(f"classes.txt lists {len(names)} classes; uint8 masks hold at most 256")
        self.classes, self.palette = tuple(names), palette
        return problems

    def _infer_classes(self, masks: list[FileFacts]) -> None:
        """``num_classes`` = largest label (not ``ignore_index``) in the given masks + 1 (binary: one class)."""
        if self.task == "binary":
            self.classes, self.palette = ("foreground",), default_palette(2)[1:]
            return
        largest = 0
        for mask in masks:
            mapped = self._mapped(np.asarray(mask.values, dtype=np.int64)).tolist()
            valid = [value for value in mapped if value != self.ignore_index]
            largest = max([largest, *valid])
        self.classes = tuple(f"class_{i}" for i in range(largest + 1))
        self.palette = default_palette(largest + 1)
        if largest == 0 and masks:
            warnings.warn(
                f"{self.root}: no mask holds a label above 0, so num_classes was inferred as 1; if objects "
                f"are marked {self.ignore_index} (= ignore_index), set model.task=binary, or "
                f"data.label_map={{{self.ignore_index}: 1}}, or pass num_classes",
                stacklevel=4,
            )

    def _split_stems(self, all_stems: list[str], val_ratio: float, seed: int) -> tuple[list[str], list[str]]:
        """The stems of this split (file order, or sorted for the seeded split) and fatal problems."""
        split_dir = self.root / "splits"
        split_file = split_dir / f"{self.split}.txt"
        if split_file.is_file():
            return self._read_split_file(split_file), []
        if split_dir.is_dir() and any((split_dir / f"{s}.txt").is_file() for s in SPLITS):
            return [], [f"splits/{self.split}.txt is missing while splits/ has the other split's file"]
        count = len(all_stems)
        num_val = round(val_ratio * count)
        if val_ratio > 0 and count >= 2:
            num_val = min(max(num_val, 1), count - 1)
        order = np.random.default_rng(seed).permutation(count)
        chosen = order[:num_val] if self.split == "val" else order[num_val:]
        return [all_stems[i] for i in sorted(chosen)], []

    @staticmethod
    def _read_split_file(path: Path) -> list[str]:
        """Stems listed in a split file, in order, without blanks, ``#`` comments or repeats."""
        stems = (line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines())
        return list(dict.fromkeys(stem for stem in stems if stem and not stem.startswith("#")))

    def _pair(self, stem: str, images: _Listing, masks: _Listing) -> _Pair:
        pair = _Pair(stem, images.files.get(stem), masks.files.get(stem))
        if pair.image is None and pair.mask is None:
            pair.add("missing", f"splits/{self.split}.txt lists {stem!r}, which has no image and no mask")
            return pair
        for listing in (images, masks):
            if stem in listing.duplicates:
                names = ", ".join(self._rel(p) for p in listing.duplicates[stem])
                pair.add("duplicate stem", f"several files share the stem {stem!r}: {names}")
        if pair.image is None:
            pair.add("missing", f"{self._rel(pair.mask)}: mask without image (no images/{stem}.<ext>)")
        if pair.mask is None:
            hint = "".join(
                f"; found {self._rel(p)}, but masks must be PNG" for p in masks.others.get(stem, [])
            )
            expected = f"masks/{stem}/<class name>.png" if self.task == "multilabel" else f"masks/{stem}.png"
            if self.task != "multilabel" and (self.root / "masks" / stem).is_dir():
                hint += f"; found masks/{stem}/, a multilabel mask folder: set model.task=multilabel"
            pair.add("missing", f"{self._rel(pair.image)}: image without mask (expected {expected}{hint})")
        return pair

    def _other_pairs(self, images: _Listing, masks: _Listing, seen: set[str]) -> list[_Pair]:
        """Complete pairs outside this split, inspected only to infer the number of classes."""
        return [
            _Pair(s, images.files[s], masks.files[s])
            for s in sorted(images.files.keys() & masks.files.keys())
            if s not in seen
        ]

    def _collect(self, fatal: list[str], pairs: list[_Pair], skip_bad: bool) -> list[_Pair]:
        """Raise for fatal problems (or bad pairs without ``skip_bad``); else warn, drop bad pairs and keep
        their problems in ``self.skipped``."""
        bad = [str(problem) for pair in pairs for problem in pair.problems]
        if fatal or (bad and not skip_bad):
            raise DatasetError(self._where, fatal + bad)
        dropped = [pair for pair in pairs if pair.problems]
        self.skipped: list[Problem] = [problem for pair in dropped for problem in pair.problems]
        for pair in dropped:
            details = "; ".join(str(problem) for problem in pair.problems)
            warnings.warn(f"{self.root}: skipping {pair.stem!r}: {details}", SkippedSampleWarning, stacklevel=4)
        good = [pair for pair in pairs if not pair.problems]
        if not good:
            raise DatasetError(self._where, ["no usable image/mask pairs in this split", *bad])
        return good

    def _rel(self, path: Path | None) -> str:
        """A path relative to the dataset root, for messages."""
        if path is None:
            return "?"
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)
