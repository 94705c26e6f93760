"""The training loop: iteration-based SGD with poly LR, periodic evaluation, last/best checkpoints, on one
process or on many (``torchrun`` + DistributedDataParallel + SyncBN) with the same recipe.

``train.batch_size`` is the global batch; each of the ``WORLD_SIZE`` processes takes its slice of every
step's batch (:class:`~deeplab.engine.data.StepBatchSampler`), and the loss is normalised over the global
batch, so 1, 2 or 8 processes train the same way. Every random stream is a function of the step: the
augmentation of each sample (its position in the run), dropout (reseeded from ``(seed, step, rank)``
before every step), so a run resumed from any step repeats the uninterrupted one bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config import Config, save_config
from ..deploy.precision import AMP_CHOICES, autocast_dtype
from ..inference import Predictor
from ..losses import SegmentationLoss, build_loss, labelled_pixels
from ..metrics import metrics_to_json
from ..modelfile import read_checkpoint
from ..models import Segmenter, build_with_weights
from . import dist
from .checkpoint import model_from_config, save_checkpoint
from .class_weights import resolve_class_weights
from .data import attach_transforms, build_train_val, check_global_batch, train_loader
from .evaluate import evaluate
from .report import plot_training_curve, save_previews
from .runlog import RunLog, Throughput
from .schedule import poly_lr
from .stops import Stop, read_stop, stop_flags, stop_on_signals

EVAL_PROTOCOLS = ("fast", "eval")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


@dataclass
class TrainResult:
    """How a call to :func:`train` ended (on every process)."""

    run_dir: Path
    step: int
    best_miou: float
    last_metrics: dict[str, Any] | None
    interrupted: bool = False
    stop_signal: str | None = None  # "SIGINT" or "SIGTERM" when interrupted
    rank: int = 0

    def summary(self) -> str:
        """One line for the user: how the run ended, its best val mIoU (when it had an evaluation), where it is."""
        how = "interrupted" if self.interrupted else "finished"
        best = f"best val mIoU {self.best_miou:.4f}" if self.best_miou >= 0 else "no evaluation yet"
        return f"{how} at step {self.step}; {best}; checkpoints in {self.run_dir}"


@dataclass
class StepInfo:
    """What ``on_step_end`` receives after every optimizer step, on every process."""

    step: int  # steps done so far
    loss: float  # the loss of the global batch
    lr: float
    best_miou: float  # the best val mIoU so far (-1 before the first evaluation)
    rank: int
    world_size: int


@dataclass
class TrainState:
    """Everything a checkpoint restores."""

    model: Segmenter
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    step: int = 0
    best_miou: float = -1.0
    resumed_from: tuple[int, int] | None = None  # (step, world size) of the checkpoint resumed from


class TrainingModule(nn.Module):
    """What DistributedDataParallel wraps: its ``forward`` computes every output the loss uses (main,
    aux, per-scale), so that gradient synchronisation covers all of them."""

    def __init__(self, model: Segmenter) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.model.forward_train(images)


def autocast_for(amp: str, device: torch.device):
    """``torch.autocast`` for ``train.amp``: ``bf16`` or ``fp16`` (with :func:`grad_scaler`), or ``off``.

    Both run on CPU too (fp16 there mainly so that the GPU recipe's code path can be tested anywhere).
    """
    if amp == "off":
        return nullcontext()
    if amp not in AMP_CHOICES:
        raise ValueError(f"train.amp={amp!r}; valid choices: {', '.join(AMP_CHOICES)}")
    return torch.autocast(device.type, dtype=autocast_dtype(amp))


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, enabled for fp16 only: small fp16 gradients underflow to zero without one
    (bf16 has fp32's exponent range and needs none). Its state is saved in every checkpoint."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.SGD:
    """SGD with momentum; the backbone may learn at ``backbone_lr_mult`` times the head's LR."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    others = [p for name, p in model.named_parameters() if not name.startswith("backbone.") and p.requires_grad]
    groups = [{"params": backbone, "lr_mult": cfg.train.backbone_lr_mult}, {"params": others, "lr_mult": 1.0}]
    return torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum,
                           weight_decay=cfg.train.weight_decay)


def freeze_batchnorm(model: nn.Module) -> None:
    """Keeps BN statistics and affine parameters fixed (for fine-tuning at small batch sizes)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """Training mode, with BatchNorm kept frozen when asked (also after an evaluation switched it to eval)."""
    model.train()
    if freeze_bn:
        freeze_batchnorm(model)


def reseed(seed: int, step: int, rank: int) -> None:
    """Makes the global random streams (dropout, on CPU and every GPU) a function of (seed, step, rank).

    Whatever drew from them before (an evaluation, a loader being built, a resumed run that did
    neither), the step draws the same numbers, and each process its own.
    """
    high, low = np.random.SeedSequence([seed, step, rank]).generate_state(2)
    torch.manual_seed(int(high) << 32 | int(low))


def train(cfg: Config, *, resume: bool = False, on_step_end: Callable[[StepInfo], None] | None = None
          ) -> TrainResult:
    """Trains ``cfg.model`` on ``cfg.data`` as ``cfg.train`` says; evaluates on the val split every
    ``eval_every`` steps. Rank 0 writes ``config.yaml``, ``log.jsonl``, ``last.pt`` and ``best.pt`` to
    ``run_dir``.

    Started by ``torchrun``, each process trains its share of the global batch under
    DistributedDataParallel (NCCL on GPUs, gloo on CPU). A SIGINT or SIGTERM to any process makes every
    process stop after the current step, once rank 0 has saved ``last.pt``.

    Args:
        cfg: the run's configuration.
        resume: continue from ``run_dir/last.pt`` (automatic after a torchrun elastic restart).
        on_step_end: called on every process after each optimizer step (and its evaluation, if any),
            e.g. to record progress or stop the run early by raising a signal.
    """
    env, device, created = dist.setup(cfg.train.device)
    try:
        return _train(cfg, env, device, resume, on_step_end)
    finally:
        dist.teardown(created)


def _train(cfg: Config, env: dist.DistEnv, device: torch.device, resume: bool,
           on_step_end: Callable[[StepInfo], None] | None) -> TrainResult:
    t, run_dir = cfg.train, Path(cfg.train.run_dir)
    _check_settings(cfg, env, device)
    torch.manual_seed(t.seed)  # the same initial weights in every process
    train_set, val_set = dist.first_on_each_node(
        env, lambda: build_train_val(cfg.data, progress=t.progress and env.local_rank == 0,
                                  task=getattr(cfg.model, "task", "multiclass"),
                                  in_channels=getattr(cfg.model, "in_channels", 3)))
    model = prepare_model(model_from_config(cfg, train_set.num_classes), cfg, env, device)
    loss_fn = training_loss(cfg, model, train_set, progress=t.progress and env.is_main)
    attach_transforms(train_set, val_set, cfg.data, mean=model.spec.mean, std=model.spec.std)
    state = TrainState(model, build_optimizer(model, cfg), grad_scaler(t.amp, device))
    if resume or (dist.restart_count() > 0 and (run_dir / "last.pt").is_file()):
        _restore(run_dir, state)
    module = wrap_for_training(state.model, env, device, compile=t.compile)
    meta = {"config": cfg, "classes": list(train_set.classes), "palette": list(train_set.palette)}
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    loader = iter(train_loader(train_set, batch_size=t.batch_size, seed=t.seed, start_step=state.step,
                               num_workers=cfg.data.num_workers, rank=env.rank, world_size=env.world_size,
                               pin_memory=device.type == "cuda"))
    log, meter = RunLog(run_dir, enabled=env.is_main), Throughput(t.batch_size, device)
    bar = tqdm(total=t.iterations, initial=state.step, desc="train", unit="it", dynamic_ncols=True,
               disable=not (t.progress and env.is_main))
    _announce(bar, log, cfg, state, env, loss_fn)
    metrics, stopped, saved_at = None, None, -1
    try:
        with stop_on_signals() as stop:
            while state.step < t.iterations:
                started = time.perf_counter()
                lr = _set_lr(state.optimizer, poly_lr(state.step, base_lr=t.lr, iterations=t.iterations,
                                                      power=t.poly_power, warmup=t.warmup_iterations))
                images, masks = _to_device(next(loader), device, t.channels_last)
                reseed(t.seed, state.step, env.rank)
                loss = train_step(module, state.optimizer, state.scaler, images, masks, cfg, env, loss_fn)
                loss_value, stopped = _synchronise(loss, stop, env)
                _check_finite(loss_value, state.step, cfg)
                state.step += 1
                meter.add(time.perf_counter() - started)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                if state.step % t.log_every == 0 or state.step == t.iterations:
                    log.write({"step": state.step, "loss": loss_value, "lr": lr, "time": time.time(), **meter.take()})
                if state.step % t.eval_every == 0 or state.step == t.iterations:
                    saved_at = _save(run_dir / "last.pt", state, meta, env)  # first: a failing eval loses nothing
                    metrics = _evaluate_and_keep_best(state, val_set, cfg, env, device, log, bar, meta)
                if on_step_end is not None:
                    on_step_end(StepInfo(state.step, loss_value, lr, state.best_miou, env.rank, env.world_size))
                if stopped:
                    _stop(bar, run_dir, state, meta, env, stopped, saved_at)
                    break
    finally:
        bar.close()
        log.close()
    if not stopped:
        _finish(state.model, val_set, run_dir, env, device)
    return TrainResult(run_dir, state.step, state.best_miou, metrics, stopped is not None,
                       stopped.signal if stopped else None, env.rank)


def training_loss(cfg: Config, model: Segmenter, train_set, *, progress: bool = False) -> SegmentationLoss:
    """``train.loss`` for the model's task (its spec's), with ``train.class_weights`` resolved."""
    spec = model.spec
    weights = resolve_class_weights(cfg.train.class_weights, train_set, task=spec.task, progress=progress)
    return build_loss(cfg.train.loss, task=spec.task, num_classes=spec.num_classes,
                      ignore_index=cfg.data.ignore_index, aux_weight=cfg.train.aux_weight, class_weights=weights)


def train_step(module: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, images: Tensor,
               masks: Tensor, cfg: Config, env: dist.DistEnv, loss_fn: SegmentationLoss) -> Tensor:
    """One optimizer step on this process's share of the global batch; returns its (detached) loss.

    Pixel terms (ce, bce, focal) sum over this process's pixels and divide by the global batch's labelled
    pixels over the number of processes; dice and tversky sum their per-class counts over the processes
    (with gradients): either way DDP's averaged gradients are those of the global batch. Lovasz and
    hard-pixel mining are each process's, averaged by DDP.
    """
    normalizer = dist.all_reduce_sum(labelled_pixels(masks, cfg.data.ignore_index)) / env.world_size
    with autocast_for(cfg.train.amp, images.device):
        outputs = module(images)
    loss = loss_fn(outputs, masks, normalizer=normalizer, reduce=dist.all_reduce_sum_with_grad)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def _check_settings(cfg: Config, env: dist.DistEnv, device: torch.device) -> None:
    """Clear errors for settings that would fail later (or silently do the wrong thing)."""
    check_global_batch(cfg.train.batch_size, env.world_size)
    autocast_for(cfg.train.amp, device)
    for key in ("iterations", "eval_every", "log_every"):
        if getattr(cfg.train, key) < 1:
            raise ValueError(f"train.{key} must be at least 1, got {getattr(cfg.train, key)}")
    if cfg.train.eval_protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"train.eval_protocol={cfg.train.eval_protocol!r}; valid choices: "
                         f"{', '.join(EVAL_PROTOCOLS)}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: let cuDNN pick its fastest kernels once


def prepare_model(model: Segmenter, cfg: Config, env: dist.DistEnv, device: torch.device) -> Segmenter:
    """The model as the loop trains it: SyncBN when several processes share the batch (``train.sync_bn``),
    on ``device``, channels-last if asked, in training mode (BatchNorm frozen if asked)."""
    t = cfg.train
    if (env.distributed if t.sync_bn is None else t.sync_bn) and not t.freeze_bn:
        model = dist.convert_sync_batchnorm(model, device)
    model = model.to(device, memory_format=torch.channels_last if t.channels_last else torch.preserve_format)
    set_train_mode(model, t.freeze_bn)
    return model


def wrap_for_training(model: Segmenter, env: dist.DistEnv, device: torch.device, *, compile: bool = False
                      ) -> nn.Module:
    """:class:`TrainingModule` around ``model``, in DistributedDataParallel when there are several
    processes, then ``torch.compile``-d if asked (DDP first, so that compilation sees its buckets)."""
    module: nn.Module = TrainingModule(model)
    if env.distributed:
        module = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(module) if compile else module


def _to_device(batch: tuple[Tensor, Tensor], device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    images, masks = (x.to(device, non_blocking=True) for x in batch)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images, masks


def _synchronise(loss: Tensor, stop: dict[str, str | None], env: dist.DistEnv) -> tuple[float, Stop | None]:
    """One all-reduce per step: the global batch's loss, and how many processes got SIGINT / SIGTERM.

    Returns the loss and the :class:`~deeplab.engine.stops.Stop` if any process is asked to stop, so that every
    process stops after the same step.
    """
    stats = dist.all_reduce_sum(torch.cat([loss.float().view(1), torch.tensor(stop_flags(stop), device=loss.device)]))
    total, sigint, sigterm = stats.tolist()
    return total / env.world_size, read_stop(sigint, sigterm, env.world_size)


def _check_finite(loss: float, step: int, cfg: Config) -> None:
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"loss became {loss} at step {step + 1}; stopped without saving, so the last good checkpoint in "
            f"{cfg.train.run_dir} is intact. Try a lower train.lr or train.warmup_iterations > 0."
        )


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    return lr


def _save(path: Path, state: TrainState, meta: dict[str, Any], env: dist.DistEnv, *, optimizer: bool = True) -> int:
    """Rank 0 writes the checkpoint (atomically); returns the step it holds."""
    if env.is_main:
        extra = {"world_size": env.world_size, "grad_scaler": state.scaler.state_dict()}
        save_checkpoint(path, model=state.model, optimizer=state.optimizer if optimizer else None, step=state.step,
                        best_miou=state.best_miou, extra=extra, **meta)
    return state.step


def _restore(run_dir: Path, state: TrainState) -> None:
    """Loads ``last.pt`` into every process (``run_dir`` must be on storage all nodes see)."""
    path = run_dir / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    checkpoint = read_checkpoint(path)
    state.model.load_state_dict(checkpoint.raw["model"])
    state.optimizer.load_state_dict(checkpoint.raw["optimizer"])
    if checkpoint.raw.get("grad_scaler"):
        state.scaler.load_state_dict(checkpoint.raw["grad_scaler"])
    state.step = checkpoint.step
    # last.pt is written before each evaluation, so the best mIoU it knows may predate best.pt's.
    best = run_dir / "best.pt"
    state.best_miou = max(checkpoint.best_miou, read_checkpoint(best).best_miou if best.is_file() else -1.0)
    state.resumed_from = (checkpoint.step, checkpoint.raw.get("world_size", 1))


def eval_protocol(model: Segmenter, cfg: Config) -> dict[str, Any]:
    """How evaluations during training measure mIoU (and so select ``best.pt``), as ``train.eval_protocol`` says:
    ``fast``: one scale, no flip, the training output stride; ``eval``: the ``eval`` section's settings."""
    if cfg.train.eval_protocol == "fast":
        return {"output_stride": model.spec.output_stride, "scales": [1.0], "flip": False, "window": None}
    e = cfg.eval
    return {"output_stride": e.output_stride or model.spec.output_stride, "scales": list(e.scales),
            "flip": e.flip, "window": e.window}


def validate(model: Segmenter, dataset, cfg: Config, env: dist.DistEnv, device: torch.device) -> dict[str, Any]:
    """Val mIoU under :func:`eval_protocol`; each process evaluates its shard of the split and the
    confusion matrices are summed, which gives exactly the single-process result."""
    protocol = eval_protocol(model, cfg)
    dist.broadcast_buffers(model)  # BN statistics as rank 0 has them (differ without SyncBN)
    net = model
    if protocol["output_stride"] != model.spec.output_stride:  # same weights, another dilation
        net = build_with_weights(model.spec.at_output_stride(protocol["output_stride"]), model.state_dict(),
                                 device=device)
    metrics = evaluate(net, dataset, num_classes=model.spec.num_classes, ignore_index=dataset.ignore_index,
                       device=device, scales=protocol["scales"], flip=protocol["flip"], window=protocol["window"],
                       batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers, progress=False,
                       distributed=env.distributed, threshold=cfg.eval.threshold)
    set_train_mode(model, cfg.train.freeze_bn)
    return metrics


def _evaluate_and_keep_best(state: TrainState, val_set, cfg: Config, env: dist.DistEnv, device: torch.device,
                            log: RunLog, bar: tqdm, meta: dict[str, Any]) -> dict[str, Any]:
    metrics = validate(state.model, val_set, cfg, env, device)
    summary = metrics_to_json(metrics, _metric_names(meta["classes"], metrics))
    log.write({"step": state.step, "miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"],
               "val_pixels": int(torch.tensor(metrics["confusion_matrix"]).sum()), "metrics": summary})
    if env.is_main:
        what = "foreground IoU" if metrics["task"] == "binary" else "mIoU"
        bar.write(f"step {state.step}: val {what} {metrics['miou']:.4f}, Dice/F1 {metrics['mdice']:.4f}, "
                  f"precision {metrics['mprecision']:.4f}, recall {metrics['mrecall']:.4f}, pixel accuracy "
                  f"{metrics['pixel_accuracy']:.4f}, frequency-weighted IoU {metrics['fw_iou']:.4f}")
    if metrics["miou"] > state.best_miou:
        state.best_miou = metrics["miou"]
        _save(Path(cfg.train.run_dir) / "best.pt", state, meta, env, optimizer=False)
    return metrics


def _metric_names(classes: list[str], metrics: dict[str, Any]) -> list[str]:
    """Class names for the metrics' entries (generic ones where the dataset's do not fit the model)."""
    count = len(metrics["per_class_iou"])
    fits = len(classes) == count or (metrics["task"] == "binary" and len(classes) in (1, 2))
    return classes if fits else [f"class_{i}" for i in range(count)]


def _announce(bar: tqdm, log: RunLog, cfg: Config, state: TrainState, env: dist.DistEnv,
              loss_fn: SegmentationLoss) -> None:
    """States, once, how the run is distributed and how best.pt is selected (log and console)."""
    if not env.is_main:
        return
    p = eval_protocol(state.model, cfg)
    how = (f"val mIoU every {cfg.train.eval_every} steps at output stride {p['output_stride']}, scales "
           f"{p['scales']}, flip {'on' if p['flip'] else 'off'}" + (f", window {p['window']}" if p["window"] else ""))
    lines = [f"{env.world_size} process(es), global batch {cfg.train.batch_size} "
             f"({cfg.train.batch_size // env.world_size} per process); best.pt: the highest {how} "
             f"(train.eval_protocol={cfg.train.eval_protocol})", f"loss: {loss_fn.describe()}"]
    if state.resumed_from:
        lines.append(f"resuming from step {state.resumed_from[0]} (saved by {state.resumed_from[1]} process(es))")
    for line in lines:
        bar.write(line)
    log.write({"step": state.step, "world_size": env.world_size, "global_batch": cfg.train.batch_size,
               "eval_protocol": {"name": cfg.train.eval_protocol, **p}, "loss_terms": loss_fn.describe(),
               "class_weights": loss_fn.class_weights})


def _stop(bar: tqdm, run_dir: Path, state: TrainState, meta: dict[str, Any], env: dist.DistEnv,
          stopped: Stop, saved_at: int) -> None:
    if saved_at != state.step:
        _save(run_dir / "last.pt", state, meta, env)
    if env.is_main:
        bar.write(f"{stopped.describe()}: saved "
                  f"{run_dir / 'last.pt'} at step {state.step}; continue with --resume")
    dist.barrier()  # no process leaves (and lets torchrun stop the others) before the checkpoint is written


def _finish(model: Segmenter, val_set, run_dir: Path, env: dist.DistEnv, device: torch.device) -> None:
    """Rank 0 draws the training curve and prediction previews; the others wait for it."""
    if env.is_main:
        plot_training_curve(run_dir / "log.jsonl", run_dir / "training_curve.png")
        count = model.spec.num_classes
        classes = list(val_set.classes) if len(val_set.classes) == count else None
        predictor = Predictor(model, num_classes=count, classes=classes, palette=val_set.palette, device=device)
        save_previews(predictor, val_set, run_dir / "previews")
    dist.barrier()
