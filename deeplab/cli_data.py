"""``deeplab data prepare`` and ``deeplab data check``: argparse wiring plus plain-value handlers.

Part of the command line, like :mod:`deeplab.cli`, and under its rules: a handler returns 0, or 1 when it
found bad samples; bad input (a missing folder, a failed download, a malformed config) raises, and
``deeplab.cli.main`` prints ``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

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
    chk.set_defaults(func=_check_command)
    return data


def run_prepare(name: str, root: Path, *, download: bool = True) -> int:
    """Handler of ``deeplab data prepare``: prints what was done; returns 0 (errors raise, see the module)."""
    print(prepare(name, Path(root), download=download))
    return 0


def _check_command(args: argparse.Namespace) -> int:
    if args.config is not None:
        return run_check_config(args.config, args.split)
    if args.dataset is None or args.root is None:
        raise ValueError("give --config FILE, or --dataset NAME and --root DIR")
    return run_check(args.dataset, args.root, args.split)


def run_check_config(config_path: Path, split: str | None = None, *, progress: bool = True) -> int:
    """``deeplab data check --config FILE``: the config's train and val splits (or one split); 1 if any
    sample is bad."""
    from .config import load_config  # imported when used, as cli.py's handlers do: `deeplab --help` stays quick
    from .engine.data import build_dataset

    data = load_config(config_path).data
    splits = [split] if split is not None else [data.train_split, data.val_split]
    # A folder dataset checks itself when built; skipping its bad samples (quietly) lets the report list them.
    lenient = dataclasses.replace(data, skip_bad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSampleWarning)
        reports = [check(build_dataset(lenient, s, None), split=s, progress=progress) for s in splits]
    unchecked = not data.verify and data.name != "folder"  # a folder always checks itself when it loads
    return _print_report(reports, skip_bad=data.skip_bad, unchecked=unchecked)


def run_check(dataset: str, root: Path, split: str | None = None, *, progress: bool = True) -> int:
    """Handler of ``deeplab data check``: prints the report; returns 1 if any sample is bad.

    ``dataset`` is a standard dataset's name or ``folder`` (default options: classes from
    ``classes.txt`` or the masks, ``splits/`` or a seeded 80/20 split; ``--config`` for others).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSampleWarning)  # the report's last table lists them
        reports = [check(data, split=s, progress=progress) for s, data in _splits(dataset, Path(root), split)]
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


def _splits(dataset: str, root: Path, split: str | None):
    """(split, dataset) for one split or all of them; a folder is built with ``skip_bad`` so that its bad
    samples are reported rather than raised."""
    if dataset == "folder":
        from .data.folder import SPLITS, FolderDataset

        return [(s, FolderDataset(root, s, skip_bad=True)) for s in ([split] if split else SPLITS)]
    cls = DATASETS[dataset]
    return [(s, cls(root, s)) for s in ([split] if split is not None else cls.splits)]
