"""The ``deeplab`` command: train | eval | predict | export | benchmark | serve | models | push | data. Thin: parse,
call the library, print."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config

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
    """Evaluate a checkpoint, an export or published weights on a dataset's val split: metrics table, optional JSON."""
    from .config import apply_overrides, from_dict, load_config, parse_override
    from .engine import dist
    from .engine.eval_progress import model_identity, progress_file
    from .engine.evaluate import describe_protocol, eval_protocol, evaluate_on_config
    from .engine.stops import stop_on_signals
    from .inference import Predictor
    from .modelfile import read_model
    from .options import InferenceOptions

    source = args.pretrained or args.model or args.checkpoint
    model_file = read_model(source)  # read and identified once
    card = model_file.card
    if args.pretrained:  # published weights carry no config: --config (e.g. a TF zoo protocol) says what to run
        config = load_config(args.config, args.overrides)
        output_stride = config.eval.output_stride
    else:
        base = load_config(args.config) if args.config else from_dict(card.config or {})
        config = apply_overrides(base, args.overrides)
        explicit_os = any(parse_override(o)[0] == "model.output_stride" for o in args.overrides)
        if card.is_export:  # an export keeps its own stride unless one is asked for explicitly
            output_stride = config.model.output_stride if explicit_os else None
        else:
            if explicit_os:
                config.eval.output_stride = config.model.output_stride  # an explicit model OS wins
            output_stride = config.eval.output_stride or config.model.output_stride
    env = dist.env_from_torchrun()
    device = _device(config.train.device, card, env.local_rank)
    runner = model_file.open(output_stride=output_stride, device=device)
    options = InferenceOptions.from_eval_config(config.eval, precision=args.precision)
    predictor = Predictor.from_runner(runner, card, device=device, runtime=args.runtime, log=_note, options=options)
    _note(predictor.runtime.describe())
    protocol = eval_protocol(predictor, card.spec.output_stride if card.spec is not None else None)
    if env.is_main:
        print(describe_protocol(protocol), flush=True)
    saved = progress_file({"model": model_identity(source), "data": dataclasses.asdict(config.data),
                           "eval": dataclasses.asdict(config.eval), "protocol": protocol})
    with dist.process_group(env, device), stop_on_signals() as stop:  # each process evaluates its shard
        started = time.perf_counter()
        metrics, classes = evaluate_on_config(predictor, config, str(source), progress=env.is_main,
                                              distributed=env.distributed, stop=stop, progress_file=saved,
                                              resume=args.resume)
        seconds = time.perf_counter() - started
    resumed = metrics["resumed"]
    if env.is_main and args.resume:
        print(f"resumed: {resumed} image(s) evaluated before ({saved})" if resumed else
              "nothing to resume: evaluating the whole split", flush=True)
    if "stopped" in metrics:
        return _report_stopped_eval(metrics, env.is_main, _resume_command(_argv(args), env.world_size))
    if not env.is_main:
        return 0
    speed = _throughput(metrics["images"] - resumed, seconds, env.world_size)
    return _report_eval(args, config, metrics, classes, speed, protocol)


def _report_stopped_eval(metrics: dict, is_main: bool, resume: str) -> int:
    """One line for an evaluation a SIGINT / SIGTERM stopped; the exit status says which signal."""
    stopped = metrics["stopped"]
    if is_main:
        print(f"{stopped.describe()}: stopped after {metrics['images']} of {metrics['images_total']} image(s); "
              f"no metrics from part of the split; continue with: {resume}")
    return stopped.exit_status


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line ``main`` parsed (``sys.argv`` when the handler was called without it)."""
    return getattr(args, "argv", sys.argv[1:])


def _resume_command(argv: Sequence[str], processes: int) -> str:
    """The command line that continues a stopped ``predict`` or ``eval``: the same arguments with ``--resume``."""
    import shlex

    from .constants import LAUNCHER_ENV

    words = shlex.join([*argv, *(() if "--resume" in argv else ("--resume",))])
    if processes == 1:
        return f"deeplab {words}"
    return f"{os.environ.get(LAUNCHER_ENV, 'torchrun')} --nproc-per-node {processes} -m deeplab {words}"


def _report_eval(args: argparse.Namespace, config: Config, metrics: dict, classes: list[str], speed: str,
                 protocol: dict | None = None) -> int:
    from .imageio import atomic_write
    from .metrics import format_metrics_table, metrics_to_json
    from .options import crf_from_eval_config

    print(format_metrics_table(metrics, classes))
    print(f"evaluated {metrics['images']} image(s) {speed}")
    if config.eval.crf:
        print(f"with the DenseCRF: {crf_from_eval_config(config.eval).describe()}")
    if args.json:
        with atomic_write(args.json, "w") as handle:
            json.dump({**metrics_to_json(metrics, classes), "protocol": protocol}, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


def _device(name: str, card=None, local_rank: int = 0):
    """``auto`` picks the GPU when there is one (under torchrun the one of ``LOCAL_RANK``), except for ONNX models
    (the usual onnxruntime runs on the CPU)."""
    import torch

    from .devices import resolve_device

    if name == "auto" and card is not None and card.format == "onnx":
        return torch.device("cpu")
    return resolve_device(name, local_rank)


def _throughput(images: int, seconds: float, processes: int) -> str:
    """``in S s (X images/s over P processes)``: the end of the last line of predict and eval."""
    rate = images / seconds if seconds > 0 else 0.0
    return f"in {seconds:.1f} s ({rate:.2f} images/s over {processes} process{'es' if processes != 1 else ''})"


def _open_predictor(source: str | Path, device_name: str, output_stride: int | None, options, runtime: str | None,
                    local_rank: int = 0, check_folder: Path | None = None, threshold: float | None = None):
    """The Predictor for any model source (read once), on the device ``device_name`` resolves to and the runtime
    ``runtime`` picks (what it picked and why goes to stderr). ``threshold`` None (not asked): the training run's
    ``eval.threshold`` where the source records it, else ``options``'."""
    from dataclasses import replace

    from .inference import Predictor
    from .modelfile import read_model

    model_file = read_model(source)
    if threshold is None and model_file.card.eval_threshold is not None:  # not asked: the run's own
        options = replace(options, threshold=model_file.card.eval_threshold)
        if model_file.card.spec.task != "multiclass":
            _note(f"threshold {options.threshold:g} (the run's eval.threshold)")
    device = _device(device_name, model_file.card, local_rank)
    runner = model_file.open(output_stride=output_stride, device=device)
    predictor = Predictor.from_runner(runner, model_file.card, device=device, runtime=runtime, log=_note,
                                      options=options, check_folder=check_folder)
    _note(predictor.runtime.describe())
    return predictor


def _note(line: str) -> None:
    print(line, file=sys.stderr)


def _inference_options(args: argparse.Namespace, crf=None):
    from .config import DEFAULT_THRESHOLD
    from .options import InferenceOptions

    return InferenceOptions(scales=args.scales, flip=args.flip, window=args.window, precision=args.precision, crf=crf,
                            threshold=DEFAULT_THRESHOLD if args.threshold is None else args.threshold)


def parse_crf_params(text: str | None, enabled: bool):
    """``--crf`` / ``--crf-params w1=5,sigma_alpha=50`` -> CRFParams, or None when neither is given."""
    from .postprocess import CRFParams

    return CRFParams.build(enabled, text)


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict masks for image files, folders or globs: index, colour and overlay PNGs."""
    from .engine import dist
    from .predict_files import predict_paths

    env = dist.env_from_torchrun()
    predictor = _open_predictor(args.pretrained or args.model or args.checkpoint, args.device, args.output_stride,
                                _inference_options(args, parse_crf_params(args.crf_params, args.crf)), args.runtime,
                                local_rank=env.local_rank, check_folder=args.check_images, threshold=args.threshold)
    with dist.process_group(env, predictor.device):  # under torchrun each process predicts its share
        report = predict_paths(predictor, args.inputs, args.out, area_table=args.areas, progress=env.is_main,
                               workers=args.workers, resume=args.resume, distributed=env.distributed,
                               save_probs=args.save_probs)
    if env.is_main:
        for path, reason in report.failed:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        if args.resume:
            print(f"skipped {len(report.resumed)} image(s) whose outputs exist (--resume)")
        if report.stopped:
            print(f"{report.stopped.describe()}: {report.complete} of {report.inputs} image(s) have their outputs "
                  f"in {args.out}; continue with: {_resume_command(_argv(args), report.processes)}")
        else:
            print(f"wrote {len(report.written)} prediction(s) to {args.out} "
                  f"{_throughput(len(report.written), report.seconds, report.processes)}")
    if report.stopped:
        return report.stopped.exit_status
    return 1 if report.failed and not (report.written or report.resumed) else 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX or TorchScript (fp32, bf16, int8); the file is verified before it is written."""
    from .deploy.export import export_model

    fmt = args.format or ("torchscript" if args.out.suffix.lower() in (".pt", ".ts", ".torchscript") else "onnx")
    report = export_model(args.checkpoint, args.out, format=fmt, precision=args.precision,
                          output_stride=args.output_stride, calibration_images=args.calibration_images,
                          calibration=args.calibration, max_miou_drop=args.max_miou_drop,
                          eval_images=args.eval_images, tolerance=args.tolerance)
    print(report.summary())
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Latency and peak memory of each deploy path (eager, fast, TorchScript, ONNX Runtime, bf16, int8)."""
    from .deploy.benchmark import DEFAULT_MODELS, format_report, run_benchmark

    models = [name.strip() for name in args.models.split(",")] if args.models else list(DEFAULT_MODELS)
    result = run_benchmark(models, size=args.size, batch=args.batch, runs=args.runs, warmup=args.warmup,
                           memory=not args.no_memory, progress=True, checkpoint=args.checkpoint)
    print(format_report(result))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a model over HTTP: a web page to try it and a JSON/PNG API (needs the serve extra)."""
    try:
        from .serve import ServeSettings, model_info, run_server
    except ImportError as err:
        raise RuntimeError(str(err)) from err

    source = args.model or args.checkpoint
    predictor = _open_predictor(source, args.device, args.output_stride, _inference_options(args), args.runtime,
                                check_folder=args.check_images, threshold=args.threshold)
    info = model_info(predictor, source)
    settings = ServeSettings(max_upload_bytes=round(args.max_upload_mb * 2**20), max_side=args.max_side,
                             max_batch=args.max_batch)
    run_server(predictor, info, host=args.host, port=args.port, settings=settings)
    return 0


def cmd_crf_tune(args: argparse.Namespace) -> int:
    """Cross-validate the DenseCRF's w1, sigma_alpha, sigma_beta on held-out val images (the papers' search)."""
    from .config import apply_overrides
    from .devices import resolve_device
    from .engine.crf_tune import crf_grid, format_crf_table, tune_crf
    from .imageio import atomic_write
    from .modelfile import read_checkpoint
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
    """List the models (version, backbone, parameters; multiply-adds with --macs) and the published weights;
    with --encoders, the timm models that fit a DeepLab head instead."""
    from .models.table import format_model_table, format_published_table, model_rows

    if args.encoders is not None:
        return _print_encoders(args.encoders)

    print(format_model_table(model_rows(macs=args.macs, size=args.size), size=args.size))
    print("\nAny timm encoder under the v3 / v3+ head: deeplabv3plus_tu-NAME, deeplabv3_tu-NAME "
          "(`deeplab models --encoders [PATTERN]` lists them).")
    print()
    print(format_published_table())
    return 0


def _print_encoders(pattern: str) -> int:
    from .models.table import format_encoder_table
    from .models.timm_encoder import encoder_rows

    rows = encoder_rows(pattern)
    if not rows:
        print(f"error: no timm model matches {pattern!r} (a pattern like 'convnext*' or '*efficientnet*')",
              file=sys.stderr)
        return 2
    print(format_encoder_table(rows))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Publish a training run or checkpoint on the Hugging Face Hub: config.json, model.safetensors, a model card."""
    from .publish import push_model

    repo_id = args.repo.removeprefix("hf-hub:")
    result = push_model(args.source, repo_id, private=args.private, dry_run=args.dry_run, license=args.license)
    metrics = f", metrics from {result.metrics}" if result.metrics else ", no metrics.json beside it"
    print(f"wrote {', '.join(result.files)} from {result.checkpoint}{metrics}")
    if result.url is None:
        print(f"dry run: the folder hf-hub:{repo_id} would get is {result.folder}")
    else:
        print(f"uploaded to {result.url}; load it with hf-hub:{repo_id}")
    return 0


def _model_source(p: argparse.ArgumentParser, *, pretrained: bool = False, precision: str = "auto") -> None:
    from .deploy.precision import PRECISION_CHOICES
    from .deploy.runtimes import RUNTIMES

    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a checkpoint written by deeplab train")
    source.add_argument("--model", type=Path, help="an export from deeplab export (.onnx, TorchScript), a checkpoint, "
                                                   "a save_pretrained folder or hf-hub:ORG/NAME[@REVISION]")
    if pretrained:
        source.add_argument("--pretrained", metavar="NAME",
                            help="published weights by name, e.g. deeplabv3plus_xception65.tf_voc_trainaug "
                                 "(see deeplab models), or a Hugging Face Hub model hf-hub:ORG/NAME[@REVISION]")
    p.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="what runs the model: auto (default, or $DEEPLAB_RUNTIME) times the runtimes verified for it "
                        "and keeps the fastest; torch, onnxruntime, openvino (pip install 'deeplab[openvino]')")
    p.add_argument("--precision", default=precision, choices=PRECISION_CHOICES,
                   help=f"arithmetic (default {precision}): auto runs bf16 where the CPU has bf16 units (AVX512-BF16, "
                        "AMX) and it passes a check on real images, else fp32; fp32 keeps exact numerics; bf16 on "
                        "GPUs and such CPUs, fp16 on GPUs (an export runs at the precision it was exported at)")
    if precision == "auto":
        p.add_argument("--check-images", type=Path, default=None, metavar="DIR",
                       help="images like yours for the reduced-precision check (default: the sample images "
                            "deeplab ships; up to 8 are used)")


def _inference_args(p: argparse.ArgumentParser) -> None:
    """The InferenceOptions flags ``predict`` and ``serve`` share (``--precision`` comes with the model source)."""
    p.add_argument("--output-stride", type=int, default=None, help="rebuild the model at this output stride")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0],
                   help="multi-scale inference, e.g. 0.75 1 1.25 (default 1)")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped inputs")
    p.add_argument("--window", type=int, default=None, help="sliding-window side for large images")
    p.add_argument("--threshold", type=float, default=None,
                   help="binary and multilabel models: a pixel holds a class where its probability exceeds this "
                        "(default: the training run's eval.threshold, else 0.5)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .cli_data import add_data_commands
    from .constants import BENCHMARK_MODELS
    from .deploy.precision import EXPORT_PRECISIONS
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
    _model_source(p, pretrained=True, precision="fp32")
    p.add_argument("--config", type=Path, help="YAML config for the data and eval sections (e.g. "
                                               "configs/eval/tf_zoo_*.yaml; default: the checkpoint's own config)")
    p.add_argument("--json", type=Path, help="also write the metrics as JSON here")
    p.add_argument("--resume", action="store_true",
                   help="go on from where the same evaluation was stopped (Ctrl-C / SIGTERM): only the images it "
                        "had not evaluated are, and the metrics are the whole split's")
    p.epilog = ("several processes: torchrun --nproc-per-node N -m deeplab eval ... (each evaluates its shard of "
                "the split; the same metrics; see docs/distributed.md)")
    _config_args(p, "eval")

    p = _command(commands, "predict", cmd_predict)
    _model_source(p, pretrained=True)
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _inference_args(p)
    p.add_argument("--areas", action="store_true", help="write areas.csv with per-image class areas")
    p.add_argument("--workers", type=int, default=None,
                   help="processes decoding images, per predicting process (default 2 or the CPU count if "
                        "smaller; 0: decode in the main thread)")
    p.add_argument("--resume", action="store_true", help="skip images whose three outputs exist in --out")
    p.add_argument("--save-probs", action="store_true",
                   help="also write <stem>_probs.npy: float16 C x H x W probabilities (softmax; binary and multilabel: "
                        "each output's sigmoid)")
    p.epilog = ("several processes: torchrun --nproc-per-node N -m deeplab predict ... (each predicts its share of "
                "the images; the same files; see docs/distributed.md)")
    p.add_argument("--crf", action="store_true", help="refine with the DenseCRF (pip install 'deeplab[crf]')")
    p.add_argument("--crf-params", metavar="KEY=VALUE,...",
                   help="CRF settings, implies --crf, e.g. w1=5,sigma_alpha=50,sigma_beta=3 (see deeplab crf-tune)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)

    p = _command(commands, "export", cmd_export)
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint written by deeplab train")
    p.add_argument("--out", type=Path, required=True, help="the file to write, e.g. model.onnx")
    p.add_argument("--format", choices=("onnx", "torchscript"), default=None,
                   help="default: torchscript for an --out ending in .pt/.ts/.torchscript, else onnx")
    p.add_argument("--precision", choices=EXPORT_PRECISIONS, default="fp32",
                   help="fp32 (default); int8: ONNX Runtime static quantization; bf16: TorchScript")
    p.add_argument("--output-stride", type=int, default=None, help="export the model rebuilt at this stride")
    p.add_argument("--calibration-count", dest="calibration_images", type=int, default=64, metavar="N",
                   help="int8: how many images calibrate the activations (default 64), from --calibration")
    p.add_argument("--calibration-images", dest="calibration_images", type=int, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the first name, still read: a count that read like a path
    p.add_argument("--calibration", type=Path, default=None,
                   metavar="DIR",
                   help="int8: a folder of calibration images (default: the checkpoint's training split)")
    p.add_argument("--max-miou-drop", type=float, default=1.0,
                   help="int8: fail if the val mIoU drops by more points than this against fp32 (default 1.0)")
    p.add_argument("--eval-images", type=int, default=None,
                   help="int8: val images for the accuracy check (default all; 0 skips it)")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="fp32: fail if the export's logits differ from the checkpoint's by more than this "
                        "(default 1e-3)")

    p = _command(commands, "benchmark", cmd_benchmark)
    p.add_argument("--models", default=None,
                   help="comma-separated names from deeplab models (default: the five of the README's \"Deploy "
                        "benchmark models\" list: " + ", ".join(BENCHMARK_MODELS) + ")")
    p.add_argument("--size", type=int, default=513, help="input side in pixels (default 513)")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--runs", type=int, default=7,
                   help="timed rounds, each one run of every path (default 7; targets are judged from 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per path before the timed ones (default 2)")
    p.add_argument("--no-memory", action="store_true", help="skip peak memory (measured in one process per path)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="time this trained checkpoint (e.g. make demo's runs/demo/best.pt) instead of random-weight "
                        "models, on demo images: the argmax column then counts the pixels each path changes")
    p.add_argument("--no-peers", action="store_true",
                   help="accepted for old scripts; the peers (torchvision, smp) are in benchmarks/peers.py")

    p = _command(commands, "serve", cmd_serve)
    _model_source(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default 8000)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    _inference_args(p)
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MiB (default 20; else 413)")
    p.add_argument("--max-side", type=int, default=4096, help="longest image side in pixels (default 4096; else 413)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="most waiting images of one size run as one batch (default 8)")

    from .postprocess import CRF_SEARCH_GRID as GRID

    p = _command(commands, "crf-tune", cmd_crf_tune)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="a checkpoint written by deeplab train; its val split holds the tuning images")
    p.add_argument("--images", type=int, default=100, help="held-out val images (default 100, as the papers)")
    p.add_argument("--w1", type=float, nargs="+", default=list(GRID["w1"]),
                   help=f"appearance weights (default {' '.join(f'{v:g}' for v in GRID['w1'])})")
    p.add_argument("--sigma-alpha", type=float, nargs="+", default=list(GRID["sigma_alpha"]),
                   help="appearance position widths in pixels (default "
                        f"{' '.join(f'{v:g}' for v in GRID['sigma_alpha'])})")
    p.add_argument("--sigma-beta", type=float, nargs="+", default=list(GRID["sigma_beta"]),
                   help="appearance colour widths, 0..255 (default "
                        f"{' '.join(f'{v:g}' for v in GRID['sigma_beta'])})")
    p.add_argument("--iterations", type=int, default=None, help="mean-field iterations (default 10)")
    p.add_argument("--workers", type=int, default=None, help="CRF processes (default: one per core)")
    p.add_argument("--top", type=int, default=15, help="rows to print, best first (default 15; 0: all)")
    p.add_argument("--json", type=Path, help="also write every setting's mIoU as JSON here")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    _config_args(p, "crf-tune")

    p = _command(commands, "models", cmd_models)
    p.add_argument("--macs", action="store_true", help="count multiply-adds at OS 16 and OS 8 (a few seconds)")
    p.add_argument("--size", type=int, default=513, help="input side for --macs (default 513)")
    p.add_argument("--encoders", nargs="?", const="*", default=None, metavar="PATTERN",
                   help="list the timm models usable as HEAD_tu-NAME (e.g. 'convnext*'), with output stride 8/16 "
                        "support")

    p = _command(commands, "push", cmd_push)
    p.add_argument("source", type=Path, help="a training run's folder (best.pt or last.pt, metrics.json) or a "
                                             "checkpoint")
    p.add_argument("repo", metavar="ORG/NAME", help="the Hub model repo (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", type=Path, metavar="DIR", default=None,
                   help="write the folder that would be uploaded into DIR and upload nothing")
    p.add_argument("--license", default="apache-2.0", help="the model card's license (default apache-2.0)")
    p.epilog = ("uploads with huggingface_hub (log in with `hf auth login` or set HF_TOKEN); afterwards "
                "hf-hub:ORG/NAME works wherever a model is taken (--pretrained, --model, model.weights, ...)")

    add_import_tf_command(commands)
    add_data_commands(commands)
    return parser


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings reach a CLI user as one plain line, without Python's source location."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for the command that continues a stopped run
    with warnings.catch_warnings():
        warnings.showwarning = _print_warning
        try:
            return args.func(args)
        except (ValueError, OSError, RuntimeError, FloatingPointError, ImportError) as err:  # input, not a bug
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C before a command's loop listens for it (loading a model, say)
            print("interrupted by SIGINT", file=sys.stderr)
            return 128 + signal.SIGINT.value


if __name__ == "__main__":
    sys.exit(main())
