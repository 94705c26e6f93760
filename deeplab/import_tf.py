"""``deeplab import-tf``: a TF DeepLab checkpoint (the authors' model zoo) -> an ordinary deeplab checkpoint.

The file it writes holds the model spec (with the TF reference's numerics switched on), the weights,
the class names and palette, and a config naming the model, so ``eval``, ``predict``, ``export``,
``serve`` and :func:`deeplab.load_checkpoint` use it as they use a trained checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .engine.checkpoint import save_model
from .modelfile import read_checkpoint
from .models import build_from_spec
from .models.tf_import import import_tf_variables
from .tfcheckpoint import read_tf_checkpoint


def import_tf_checkpoint(source: str | Path, out: str | Path, *, dataset: str | None = None,
                         output_stride: int = 16, atrous_rates: Sequence[int] | None = None,
                         multi_grid: Sequence[int] | None = None) -> Path:
    """Reads a TF checkpoint (prefix, folder or zoo ``.tar.gz``), writes a deeplab checkpoint at ``out``."""
    variables = read_tf_checkpoint(source)
    spec, state = import_tf_variables(variables, output_stride=output_stride, atrous_rates=atrous_rates,
                                      multi_grid=multi_grid)
    model = build_from_spec(spec)
    model.load_state_dict(state)
    return save_model(model, out, dataset=dataset, extra={"imported_from": str(source)})


def add_import_tf_command(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``import-tf`` on the CLI's subcommands."""
    p = subparsers.add_parser(
        "import-tf", help="Convert a checkpoint of the authors' TensorFlow DeepLab (their model zoo) into a deeplab "
                          "checkpoint.",
        description="Convert a checkpoint of the authors' TensorFlow DeepLab (research/deeplab, its model zoo) "
                    "into a deeplab checkpoint. The architecture is read from the variable names and shapes; "
                    "output stride, atrous rates and multi-grid are not recorded there and default to the "
                    "reference's (16; 6,12,18; 1,1,1).")
    p.add_argument("source", help="a checkpoint prefix (.../model.ckpt), a folder holding one, or a zoo .tar.gz")
    p.add_argument("--out", type=Path, required=True, help="the deeplab checkpoint to write (.pt)")
    p.add_argument("--dataset", choices=("voc", "cityscapes", "ade20k"), default=None,
                   help="class names and palette (default: from the class count: 21 voc, 19 cityscapes, 151 ade20k)")
    p.add_argument("--output-stride", type=int, default=16,
                   help="build at this output stride (default 16; rates scale with it)")
    p.add_argument("--atrous-rates", type=int, nargs="+", default=None,
                   help="ASPP rates at --output-stride (default: 6 12 18 at 16, doubled at 8)")
    p.add_argument("--multi-grid", type=int, nargs=3, default=None,
                   help="ResNet-beta block-4 unit rates (default 1 1 1)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        out = import_tf_checkpoint(args.source, args.out, dataset=args.dataset, output_stride=args.output_stride,
                                   atrous_rates=args.atrous_rates, multi_grid=args.multi_grid)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    spec = read_checkpoint(out).spec
    print(f"wrote {out}: {spec.name}, {spec.num_classes} classes, output stride {spec.output_stride}, "
          f"TF numerics (align_corners, TF padding, inputs scaled to -1..1)")
    return 0
