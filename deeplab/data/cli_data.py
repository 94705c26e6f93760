"""``deeplab data prepare`` and ``deeplab data check``: argparse wiring plus plain-value handlers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deeplab.data.prepare import check, format_check_report, prepare
from deeplab.data.registry_standard import DATASETS


def add_data_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``data prepare`` and ``data check`` on ``subparsers``; each sets ``func(args) -> int``."""
    data = subparsers.add_parser("data", help="download, convert and check the standard datasets")
    commands = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    prep = commands.add_parser("prepare", help="download, unpack and convert a benchmark dataset")
    prep.add_argument("name", choices=sorted(DATASETS), help="dataset to prepare")
    prep.add_argument("--root", type=Path, required=True, help="dataset folder (archives are kept here)")
    prep.add_argument("--no-download", action="store_true", help="only use archives already in --root")
    prep.set_defaults(func=lambda a: run_prepare(a.name, a.root, download=not a.no_download))

    chk = commands.add_parser("check", help="read every sample; report counts, class pixels, bad files")
    chk.add_argument("--config", type=Path, help="check the train and val splits of a run config's data section")
    chk.add_argument("--dataset", choices=sorted(DATASETS), help="dataset name (without --config)")
    chk.add_argument("--root", type=Path, help="dataset folder (without --config)")
    chk.add_argument("--split", default=None, help="one split (default: all of the dataset's splits)")
    chk.set_defaults(func=_check_command)
    return data


def run_prepare(name: str, root: Path, *, download: bool = True) -> int:
    """Handler of ``deeplab data prepare``: prints what was done; returns the exit status."""
    try:
        print(prepare(name, Path(root), download=download))
    except (OSError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _check_command(args: argparse.Namespace) -> int:
    if args.config is not None:
        return run_check_config(args.config, args.split)
    if args.dataset is None or args.root is None:
        print("error: give --config FILE, or --dataset NAME and --root DIR", file=sys.stderr)
        return 2
    return run_check(args.dataset, args.root, args.split)


def run_check_config(config_path: Path, split: str | None = None, *, progress: bool = True) -> int:
    """``deeplab data check --config FILE``: the config's train and val splits (or one split)."""
    from deeplab.config import load_config
    from deeplab.engine.data import build_dataset

    data = load_config(config_path).data
    splits = [split] if split is not None else [data.train_split, data.val_split]
    try:
        reports = [check(build_dataset(data, s, None), split=s, progress=progress) for s in splits]
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_check_report(reports))
    return int(any(r.problems for r in reports))


def run_check(dataset: str, root: Path, split: str | None = None, *, progress: bool = True) -> int:
    """Handler of ``deeplab data check``: prints the report; returns 1 if any sample is bad."""
    cls = DATASETS[dataset]
    splits = [split] if split is not None else list(cls.splits)
    try:
        reports = [check(cls(Path(root), s), split=s, progress=progress) for s in splits]
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_check_report(reports))
    return int(any(r.problems for r in reports))
