"""The ``deeplab`` command: train | eval | predict | export | benchmark | serve | models | data. Thin: parse, call
the library, print."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config

PRECISION_CHOICES = ("fp32", "bf16", "fp16")  # eager precisions; an export keeps its own


SET_EXAMPLES = {  # each command's --set example names keys that command reads
    "train": "train.iterations=2000 model.output_stride=8",
    "eval": "eval.flip=true eval.scales=[0.75,1.0,1.25]",
    "crf-tune": "data.root=data/voc eval.output_stride=16",
}
DEVICE_HELP = "auto (default: the GPU when there is one), cpu, cuda or cuda:N"


def _config_args(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                        help=f"override config values, e.g. {SET_EXAMPLES[command]}")


def _command(commands: argparse._SubParsersAction, name: str, func) -> argparse.ArgumentParser:
    """A subcommand whose one-line help and ``--help`` description come from its handler's docstring."""
    parser = commands.add_parser(name, help=func.__doc__, description=func.__doc__)
    parser.set_defaults(func=func)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model from a YAML config (plus overrides); evaluate on the val split as it goes."""
    from .config import load_config
    from .engine.train import train

    config = load_config(args.config, args.overrides)
    if args.resume and not args.config:
        run_dir = Path(config.train.run_dir)
        if not (run_dir / "last.pt").is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {run_dir / 'last.pt'}")
        config = load_config(run_dir / "config.yaml", args.overrides)
    result = train(config, resume=args.resume)
    if result.rank == 0:
        print(result.summary())
    # 128 + the signal number, as a shell reports a process stopped by it (and torchrun sees a failure
    # to restart from when --max-restarts allows).
    return 128 + signal.Signals[result.stop_signal].value if result.interrupted else 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint, an export or published weights on a dataset's val split: mIoU table, optional JSON."""
    from .config import apply_overrides, from_dict, load_config, parse_override
    from .engine.checkpoint import read_checkpoint
    from .engine.evaluate import evaluate_file, evaluate_published

    if args.pretrained:  # published weights carry no config: --config (e.g. a TF zoo protocol) says what to run
        config = load_config(args.config, args.overrides)
        metrics, classes = evaluate_published(args.pretrained, config, precision=args.precision,
                                              device=_device(config.train.device))
        return _report_eval(args, config, metrics, classes)
    path = args.model or args.checkpoint
    explicit_os = any(parse_override(o)[0] == "model.output_stride" for o in args.overrides)
    if _is_export(path):
        from .runtime import read_export

        base = load_config(args.config) if args.config else from_dict(read_export(path).config)
        config = apply_overrides(base, args.overrides)
        output_stride = config.model.output_stride if explicit_os else None  # an export keeps its own stride
    else:
        base = load_config(args.config) if args.config else read_checkpoint(path).config
        config = apply_overrides(base, args.overrides)
        if explicit_os:
            config.eval.output_stride = config.model.output_stride  # an explicit model OS wins
        output_stride = config.eval.output_stride or config.model.output_stride
    metrics, classes = evaluate_file(path, config, output_stride=output_stride, precision=args.precision,
                                     device=_device(config.train.device, path))
    return _report_eval(args, config, metrics, classes)


def _report_eval(args: argparse.Namespace, config: Config, metrics: dict, classes: list[str]) -> int:
    from .engine.evaluate import crf_params
    from .imageio import atomic_write
    from .metrics import format_metrics_table, metrics_to_json

    print(format_metrics_table(metrics, classes))
    if config.eval.crf:
        print(f"with the DenseCRF: {crf_params(config.eval).describe()}")
    if args.json:
        with atomic_write(args.json, "w") as handle:
            json.dump(metrics_to_json(metrics, classes), handle, indent=2)
        print(f"wrote {args.json}")
    return 0


def _is_export(path: Path) -> bool:
    from .runtime import detect_format

    return detect_format(path) != "checkpoint"


def _device(name: str, model_path: Path | None = None):
    """``auto`` picks the GPU when there is one, except for ONNX files (the usual onnxruntime runs on the CPU)."""
    import torch

    from .engine.train import resolve_device
    from .runtime import detect_format

    if name == "auto" and model_path is not None and detect_format(model_path) == "onnx":
        return torch.device("cpu")
    return resolve_device(name)


def _predictor(args: argparse.Namespace):
    """The Predictor for ``--model``/``--checkpoint`` (any model file) or ``--pretrained`` (published weights)."""
    from .inference import Predictor

    options = {"scales": args.scales, "flip": args.flip, "window": args.window, "precision": args.precision,
               "crf": parse_crf_params(args.crf_params, args.crf)}
    if args.pretrained:
        return Predictor.from_published(args.pretrained, output_stride=args.output_stride,
                                        device=_device(args.device), **options)
    path = args.model or args.checkpoint
    return Predictor.from_file(path, output_stride=args.output_stride, device=_device(args.device, path), **options)


def parse_crf_params(text: str | None, enabled: bool):
    """``--crf`` / ``--crf-params w1=5,sigma_alpha=50`` -> CRFParams, or None when neither is given."""
    from .postprocess import CRFParams

    return CRFParams.build(enabled, text)


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict masks for image files, folders or globs: index, colour and overlay PNGs."""
    from .inference import predict_paths

    report = predict_paths(_predictor(args), args.inputs, args.out, area_table=args.areas)
    for path, reason in report.failed:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"wrote {len(report.written)} prediction(s) to {args.out}")
    return 1 if report.failed and not report.written else 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX or TorchScript (fp32, bf16, int8); the file is verified before it is written."""
    from .export import export_model

    fmt = args.format or ("torchscript" if args.out.suffix.lower() in (".pt", ".ts", ".torchscript") else "onnx")
    report = export_model(args.checkpoint, args.out, format=fmt, precision=args.precision,
                          output_stride=args.output_stride, calibration_images=args.calibration_images,
                          calibration=args.calibration, max_miou_drop=args.max_miou_drop,
                          eval_images=args.eval_images, tolerance=args.tolerance)
    print(report.summary())
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Latency and peak memory of each deploy path (eager, fast, TorchScript, ONNX Runtime, bf16, int8) and peers."""
    from .benchmark import DEFAULT_MODELS, format_report, run_benchmark

    models = [name.strip() for name in args.models.split(",")] if args.models else list(DEFAULT_MODELS)
    result = run_benchmark(models, size=args.size, batch=args.batch, runs=args.runs, warmup=args.warmup,
                           memory=not args.no_memory, peers=not args.no_peers)
    print(format_report(result))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a model over HTTP: a web page to try it and a JSON/PNG API (needs the serve extra)."""
    try:
        from .serve import ServeSettings, load_predictor, run_server
    except ImportError as err:
        raise RuntimeError(str(err)) from err

    device = _device(args.device, args.model or args.checkpoint)
    predictor, info = load_predictor(args.checkpoint, model=args.model, precision=args.precision, device=device,
                                     output_stride=args.output_stride, scales=args.scales, flip=args.flip,
                                     window=args.window)
    settings = ServeSettings(max_upload_bytes=round(args.max_upload_mb * 2**20), max_side=args.max_side,
                             max_batch=args.max_batch)
    run_server(predictor, info, host=args.host, port=args.port, settings=settings)
    return 0


def cmd_crf_tune(args: argparse.Namespace) -> int:
    """Cross-validate the DenseCRF's w1, sigma_alpha, sigma_beta on held-out val images (the papers' search)."""
    from .config import apply_overrides
    from .engine.checkpoint import read_checkpoint
    from .engine.crf_tune import crf_grid, format_crf_table, tune_crf
    from .engine.train import resolve_device
    from .imageio import atomic_write
    from .postprocess import CRFParams

    config = apply_overrides(read_checkpoint(args.checkpoint).config, args.overrides)
    base = CRFParams.build(iterations=args.iterations)
    grid = crf_grid(args.w1, args.sigma_alpha, args.sigma_beta, base=base)
    result = tune_crf(args.checkpoint, config, images=args.images, grid=grid,
                      device=resolve_device(args.device), workers=args.workers)
    print(format_crf_table(result, top=args.top, checkpoint=str(args.checkpoint)))
    if args.json:
        rows = [{**vars(params), "miou": miou} for params, miou in result.rows]
        with atomic_write(args.json, "w") as handle:
            json.dump({"dataset": result.dataset, "images": result.images, "baseline_miou": result.baseline_miou,
                       "best": rows[0], "rows": rows}, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List the models (version, backbone, parameters; multiply-adds with --macs) and the published weights."""
    from .models.table import format_model_table, format_published_table, model_rows

    print(format_model_table(model_rows(macs=args.macs, size=args.size), size=args.size))
    print()
    print(format_published_table())
    return 0


def _model_source(p: argparse.ArgumentParser, *, pretrained: bool = False) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a checkpoint written by deeplab train")
    source.add_argument("--model", type=Path, help="an export from deeplab export (.onnx, TorchScript) or a checkpoint")
    if pretrained:
        source.add_argument("--pretrained", metavar="NAME",
                            help="published weights by name, e.g. deeplabv3plus_xception65.tf_voc_trainaug "
                                 "(see deeplab models)")
    p.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                   help="eager arithmetic: bf16 on GPUs and CPUs with AVX512-BF16/AMX, fp16 on GPUs "
                        "(an export runs at the precision it was exported at)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .cli_data import add_data_commands
    from .import_tf import add_import_tf_command

    parser = argparse.ArgumentParser(prog="deeplab", description="DeepLab v1/v2/v3/v3+ semantic segmentation.")
    parser.add_argument("--version", action="version", version=f"deeplab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _command(commands, "train", cmd_train)
    p.add_argument("--config", type=Path, help="YAML config (see configs/); defaults apply where it is silent")
    p.add_argument("--resume", action="store_true", help="continue from run_dir/last.pt")
    p.epilog = ("several GPUs or nodes: torchrun --nproc-per-node N -m deeplab train --config FILE "
                "(train.batch_size is the global batch; see docs/distributed.md)")
    _config_args(p, "train")

    p = _command(commands, "eval", cmd_eval)
    _model_source(p, pretrained=True)
    p.add_argument("--config", type=Path, help="YAML config for the data and eval sections (e.g. "
                                               "configs/eval/tf_zoo_*.yaml; default: the checkpoint's own config)")
    p.add_argument("--json", type=Path, help="also write the metrics as JSON here")
    _config_args(p, "eval")

    p = _command(commands, "predict", cmd_predict)
    _model_source(p, pretrained=True)
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--output-stride", type=int, default=None, help="rebuild the model at this output stride")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multi-scale inference, e.g. 0.75 1 1.25")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped inputs")
    p.add_argument("--window", type=int, default=None, help="sliding-window side for large images")
    p.add_argument("--areas", action="store_true", help="write areas.csv with per-image class areas")
    p.add_argument("--crf", action="store_true", help="refine with the DenseCRF (pip install 'deeplab[crf]')")
    p.add_argument("--crf-params", metavar="KEY=VALUE,...",
                   help="CRF settings, implies --crf, e.g. w1=5,sigma_alpha=50,sigma_beta=3 (see deeplab crf-tune)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)

    p = _command(commands, "export", cmd_export)
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint written by deeplab train")
    p.add_argument("--out", type=Path, required=True, help="the file to write, e.g. model.onnx")
    p.add_argument("--format", choices=("onnx", "torchscript"), default=None,
                   help="default: torchscript for an --out ending in .pt/.ts/.torchscript, else onnx")
    p.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="int8: ONNX Runtime static quantization; bf16: TorchScript")
    p.add_argument("--output-stride", type=int, default=None, help="export the model rebuilt at this stride")
    p.add_argument("--calibration-images", type=int, default=64, help="int8: images that calibrate activations")
    p.add_argument("--calibration", type=Path, default=None,
                   help="int8: a folder of calibration images (default: the checkpoint's training split)")
    p.add_argument("--max-miou-drop", type=float, default=1.0,
                   help="int8: fail if the val mIoU drops by more points than this against fp32")
    p.add_argument("--eval-images", type=int, default=None,
                   help="int8: val images for the accuracy check (default all; 0 skips it)")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="fp32: fail if the export's logits differ from the checkpoint's by more than this")

    p = _command(commands, "benchmark", cmd_benchmark)
    p.add_argument("--models", default=None, help="comma-separated model names (default: the README table's four)")
    p.add_argument("--size", type=int, default=513, help="input side")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--runs", type=int, default=7, help="timed runs per path, interleaved across paths")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per path before the timed ones (default 2)")
    p.add_argument("--no-memory", action="store_true", help="skip peak memory (measured in one process per path)")
    p.add_argument("--no-peers", action="store_true", help="skip torchvision and segmentation_models_pytorch")

    p = _command(commands, "serve", cmd_serve)
    _model_source(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default 8000)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--output-stride", type=int, default=None, help="rebuild the model at this output stride")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multi-scale inference, e.g. 0.75 1 1.25")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped inputs")
    p.add_argument("--window", type=int, default=None, help="sliding-window side for large images")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MiB (else 413)")
    p.add_argument("--max-side", type=int, default=4096, help="longest image side in pixels (else 413)")
    p.add_argument("--max-batch", type=int, default=8, help="most waiting images of one size run as one batch")

    from .postprocess import CRF_SEARCH_GRID as GRID

    p = _command(commands, "crf-tune", cmd_crf_tune)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="a checkpoint written by deeplab train; its val split holds the tuning images")
    p.add_argument("--images", type=int, default=100, help="held-out val images (the papers used 100)")
    p.add_argument("--w1", type=float, nargs="+", default=list(GRID["w1"]), help="appearance weights")
    p.add_argument("--sigma-alpha", type=float, nargs="+", default=list(GRID["sigma_alpha"]),
                   help="appearance position widths (pixels)")
    p.add_argument("--sigma-beta", type=float, nargs="+", default=list(GRID["sigma_beta"]),
                   help="appearance colour widths (0..255)")
    p.add_argument("--iterations", type=int, default=None, help="mean-field iterations (default 10)")
    p.add_argument("--workers", type=int, default=None, help="CRF processes (default: one per core)")
    p.add_argument("--top", type=int, default=15, help="rows to print, best first (0: all)")
    p.add_argument("--json", type=Path, help="also write every setting's mIoU as JSON here")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    _config_args(p, "crf-tune")

    p = _command(commands, "models", cmd_models)
    p.add_argument("--macs", action="store_true", help="count multiply-adds at OS 16 and OS 8 (a few seconds)")
    p.add_argument("--size", type=int, default=513, help="input side for --macs")

    add_import_tf_command(commands)
    add_data_commands(commands)
    return parser


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings reach a CLI user as one plain line, without Python's source location."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _print_warning
        try:
            return args.func(args)
        except (ValueError, OSError, RuntimeError, FloatingPointError, ImportError) as err:  # input, not a bug
            print(f"error: {err}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
