"""``deeplab data prepare | check | stats | import-coco``: argparse wiring plus plain-value handlers.

Part of the command line, like :mod:`deeplab.cli`, and under its rules: a handler returns 0, or 1 when it
found bad samples; bad input (a missing folder, a failed download, a malformed config) raises, and
``deeplab.cli.main`` prints ``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

from .data.labels import TASKS
from .data.prepare import check, format_check_report, prepare
from .data.registry_standard import DATASETS
from .data.verify import SkippedSampleWarning

CHECKABLE = (*sorted(DATASETS), "folder")  # the standard datasets and your own folder (images/ + masks/)


def add_data_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``data prepare`` and ``data check`` on ``subparsers``; each sets ``func(args) -> int``."""
    data = subparsers.add_parser("data", help="Download and convert the standard benchmarks; check any dataset.",
                                 description="Download and convert the standard benchmarks; check any dataset.")
    commands = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    prep = commands.add_parser("prepare", help="Download, unpack and convert a benchmark dataset.",
                               description="Download (with checksums, resumable), unpack and convert a benchmark "
                               "dataset; for Cityscapes, print where to fetch it.")
    prep.add_argument("name", choices=sorted(DATASETS), help="dataset to prepare")
    prep.add_argument("--root", type=Path, required=True, help="dataset folder (archives are kept here)")
    prep.add_argument("--no-download", action="store_true", help="only use archives already in --root")
    prep.set_defaults(func=lambda a: run_prepare(a.name, a.root, download=not a.no_download))

    chk = commands.add_parser("check", help="Decode every sample of a dataset: counts, pixels per class, bad files.",
                              description="Decode every image and mask of a dataset and print three tables: "
                              "images and problems per split, pixels per class, every bad sample. "
                              "Exit status 1 if any sample is bad, 2 if the dataset cannot be read.")
    chk.add_argument("--config", type=Path, help="check the train and val splits of a run config's data section")
    chk.add_argument("--dataset", choices=CHECKABLE,
                     help="dataset name (without --config); folder: your own images/ + masks/ folder")
    chk.add_argument("--root", type=Path, help="dataset folder (without --config)")
    chk.add_argument("--split", default=None, help="one split (default: all of the dataset's splits)")
    chk.add_argument("--task", choices=TASKS, default="multiclass",
                     help="folder without --config: the targets to read the masks as (model.task)")
    chk.add_argument("--in-channels", type=int, default=3, help="folder without --config: image channels (default 3)")
    chk.set_defaults(func=_check_command)
    _add_own_data_commands(commands)
    return data


def _add_own_data_commands(commands: argparse._SubParsersAction) -> None:
    """``data stats`` and ``data import-coco``: for your own folder datasets (docs/data.md)."""
    stats = commands.add_parser("stats", help="Per-channel mean and std of a folder's images (for model.mean/std).",
                                description="Read every image of ROOT/images (or of ROOT itself) as training "
                                "reads them and print the per-channel mean and std on the 0..1 scale.")
    stats.add_argument("root", type=Path, help="a folder dataset root, or a folder of images")
    stats.add_argument("--in-channels", type=int, default=3, help="channels per image (model.in_channels; default 3)")
    stats.add_argument("--max-value", type=float, default=None,
                       help="the image value read as 1.0 (data.max_value; default: by the dtype)")
    stats.set_defaults(func=lambda a: run_stats(a.root, a.in_channels, a.max_value))

    coco = commands.add_parser("import-coco", help="Turn COCO instance annotations into a folder of index masks.",
                               description="Convert a COCO annotation file (polygons and RLE) to the folder "
                               "layout: images/, masks/<stem>.png (class ids) and classes.txt.")
    coco.add_argument("annotations", type=Path, help="the COCO JSON file")
    coco.add_argument("images_dir", type=Path, help="the folder its file_name entries are relative to")
    coco.add_argument("--out", type=Path, required=True, help="the dataset root to write")
    coco.add_argument("--crowd", choices=("ignore", "class"), default="ignore",
                      help="crowd regions: ignore (255, default) or their category")
    coco.set_defaults(func=lambda a: run_import_coco(a.annotations, a.images_dir, a.out, crowd=a.crowd))


def run_stats(root: Path, in_channels: int = 3, max_value: float | None = None, *, progress: bool = True) -> int:
    """Handler of ``deeplab data stats``: prints the per-channel mean/std and the config line; returns 0."""
    from .data.folder import IMAGE_SUFFIXES
    from .data.stats import channel_stats

    root = Path(root)
    folder = root / "images" if (root / "images").is_dir() else root
    if not folder.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not paths:
        raise FileNotFoundError(f"no images in {folder}")
    stats = channel_stats(paths, in_channels, max_value=max_value, progress=progress)
    print(f"{stats.images} images, {stats.pixels} pixels per channel, 0..1 scale")
    for channel, (mean, std) in enumerate(zip(stats.mean, stats.std, strict=True)):
        print(f"  channel {channel}: mean {mean:.4f}  std {std:.4f}")
    print(stats.config_lines())
    return 0


def run_import_coco(annotations: Path, images_dir: Path, out: Path, *, crowd: str = "ignore") -> int:
    """Handler of ``deeplab data import-coco``: converts and prints what it wrote; returns 0."""
    from .data.coco import import_coco

    print(import_coco(annotations, images_dir, out, crowd=crowd))
    return 0


def run_prepare(name: str, root: Path, *, download: bool = True) -> int:
    """Handler of ``deeplab data prepare``: prints what was done; returns 0 (errors raise, see the module)."""
    print(prepare(name, Path(root), download=download))
    return 0


def _check_command(args: argparse.Namespace) -> int:
    if args.config is not None:
        return run_check_config(args.config, args.split)
    if args.dataset is None or args.root is None:
        raise ValueError("give --config FILE, or --dataset NAME and --root DIR")
    return run_check(args.dataset, args.root, args.split, task=args.task, in_channels=args.in_channels)


def run_check_config(config_path: Path, split: str | None = None, *, progress: bool = True) -> int:
    """``deeplab data check --config FILE``: the config's train and val splits (or one split); 1 if any
    sample is bad."""
    from .config import load_config  # imported when used, as cli.py's handlers do: `deeplab --help` stays quick
    from .engine.data import build_dataset

    config = load_config(config_path)
    data = config.data
    splits = [split] if split is not None else [data.train_split, data.val_split]
    # A folder dataset checks itself when built; skipping its bad samples (quietly) lets the report list them.
    lenient = dataclasses.replace(data, skip_bad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSampleWarning)
        own = {"task": getattr(config.model, "task", "multiclass"),
               "in_channels": getattr(config.model, "in_channels", 3)}
        reports = [check(build_dataset(lenient, s, None, **own), split=s, progress=progress) for s in splits]
    unchecked = not data.verify and data.name != "folder"  # a folder always checks itself when it loads
    return _print_report(reports, skip_bad=data.skip_bad, unchecked=unchecked)


def run_check(dataset: str, root: Path, split: str | None = None, *, progress: bool = True,
              task: str = "multiclass", in_channels: int = 3) -> int:
    """Handler of ``deeplab data check``: prints the report; returns 1 if any sample is bad.

    ``dataset`` is a standard dataset's name or ``folder`` (default options: classes from
    ``classes.txt`` or the masks, ``splits/`` or a seeded 80/20 split; ``--config`` for others).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSampleWarning)  # the report's last table lists them
        found = _splits(dataset, Path(root), split, task=task, in_channels=in_channels)
        reports = [check(data, split=s, progress=progress) for s, data in found]
    return _print_report(reports, skip_bad=False)


def _print_report(reports: list, *, skip_bad: bool, unchecked: bool = False) -> int:
    """Prints the tables and what training will do about the bad samples; 1 if there are any."""
    print(format_check_report(reports))
    bad = sum(len({problem.sample for problem in report.problems}) for report in reports)
    if bad and unchecked:
        print(f"\ndata.verify=false: training does not check these {bad} sample(s) at start")
    elif bad and skip_bad:
        print(f"\ndata.skip_bad=true: training leaves these {bad} sample(s) out, with a warning each")
    elif bad:
        print(f"\ntraining stops at start on these {bad} sample(s) (data.skip_bad=true leaves them out)")
    return int(bool(bad))


def _splits(dataset: str, root: Path, split: str | None, *, task: str = "multiclass", in_channels: int = 3):
    """(split, dataset) for one split or all of them; a folder is built with ``skip_bad`` so that its bad
    samples are reported rather than raised."""
    if dataset == "folder":
        from .data.folder import SPLITS, FolderDataset

        return [(s, FolderDataset(root, s, skip_bad=True, task=task, in_channels=in_channels))
                for s in ([split] if split else SPLITS)]
    cls = DATASETS[dataset]
    return [(s, cls(root, s)) for s in ([split] if split is not None else cls.splits)]
