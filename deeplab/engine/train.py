"""The training loop: iteration-based SGD with poly LR, periodic evaluation, last/best checkpoints."""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..config import Config, save_config
from ..inference import Predictor
from ..losses import segmentation_loss
from .checkpoint import build_model, read_checkpoint, save_checkpoint
from .data import attach_transforms, build_train_val, train_loader
from .evaluate import evaluate
from .report import plot_training_curve, save_previews
from .schedule import poly_lr


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_miou: float
    last_metrics: dict[str, Any] | None
    interrupted: bool = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available on this machine")
    return torch.device(name)


def autocast_for(amp: str, device: torch.device):
    """``torch.autocast`` for ``train.amp``: bf16 on CPU or GPU, fp16 on GPU only."""
    if amp == "off":
        return nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise ValueError(f"train.amp={amp!r}; valid choices: off, bf16, fp16")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs a CUDA device; use bf16 on CPU")
    return torch.autocast(device.type, dtype=dtypes[amp])


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


@contextmanager
def stop_on_signals():
    """Turns Ctrl-C and SIGTERM into a flag the loop checks after each step, so it can save first."""
    requested = {"signal": None}

    def handler(signum, frame):
        requested["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class RunLog:
    """JSON lines in ``run_dir/log.jsonl``, mirrored to TensorBoard when it is installed."""

    def __init__(self, run_dir: Path) -> None:
        self.file = (run_dir / "log.jsonl").open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            self.tensorboard = None

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self.tensorboard.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def train(cfg: Config, *, resume: bool = False) -> TrainResult:
    """Trains ``cfg.model`` on ``cfg.data`` as ``cfg.train`` says; evaluates on the val split every
    ``eval_every`` steps. Writes ``config.yaml``, ``log.jsonl``, ``last.pt`` and ``best.pt`` to ``run_dir``."""
    t = cfg.train
    run_dir = Path(t.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(t.device)
    torch.manual_seed(t.seed)
    train_set, val_set = build_train_val(cfg.data, progress=t.progress)
    model = build_model(cfg, train_set.num_classes).to(device)
    attach_transforms(train_set, val_set, cfg.data, mean=model.spec.mean, std=model.spec.std)
    if t.freeze_bn:
        freeze_batchnorm(model)
    optimizer = build_optimizer(model, cfg)
    step, best_miou = 0, -1.0
    if resume:
        step, best_miou = _restore(run_dir / "last.pt", model, optimizer)
    save_config(cfg, run_dir / "config.yaml")
    meta = {"config": cfg, "classes": list(train_set.classes), "palette": list(train_set.palette)}
    loader = iter(train_loader(train_set, batch_size=t.batch_size, seed=t.seed, start_step=step,
                               num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda"))
    log, metrics, interrupted = RunLog(run_dir), None, False
    bar = tqdm(total=t.iterations, initial=step, desc="train", unit="it", disable=not t.progress, dynamic_ncols=True)
    model.train()
    if t.freeze_bn:
        freeze_batchnorm(model)
    try:
        with stop_on_signals() as stop:
            while step < t.iterations:
                lr = _set_lr(optimizer, poly_lr(step, base_lr=t.lr, iterations=t.iterations,
                                                power=t.poly_power, warmup=t.warmup_iterations))
                loss = _train_step(model, optimizer, next(loader), cfg, device, step)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if step % t.log_every == 0 or step == t.iterations:
                    log.write({"step": step, "loss": loss, "lr": lr, "time": time.time()})
                if step % t.eval_every == 0 or step == t.iterations:
                    metrics = _evaluate(model, val_set, cfg, device)
                    log.write({"step": step, "miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"]})
                    bar.write(f"step {step}: val mIoU {metrics['miou']:.4f}")
                    if metrics["miou"] > best_miou:
                        best_miou = metrics["miou"]
                        save_checkpoint(run_dir / "best.pt", model=model, optimizer=None, step=step,
                                        best_miou=best_miou, **meta)
                    save_checkpoint(run_dir / "last.pt", model=model, optimizer=optimizer, step=step,
                                    best_miou=best_miou, **meta)
                if stop["signal"]:
                    save_checkpoint(run_dir / "last.pt", model=model, optimizer=optimizer, step=step,
                                    best_miou=best_miou, **meta)
                    bar.write(f"{stop['signal']} received: saved {run_dir / 'last.pt'} at step {step}; "
                              "continue with --resume")
                    interrupted = True
                    break
    finally:
        bar.close()
        log.close()
    if not interrupted:
        plot_training_curve(run_dir / "log.jsonl", run_dir / "training_curve.png")
        predictor = Predictor(model, num_classes=val_set.num_classes, palette=val_set.palette, device=device)
        save_previews(predictor, val_set, run_dir / "previews")
    return TrainResult(run_dir, step, best_miou, metrics, interrupted)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    return lr


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch, cfg: Config, device: torch.device,
                step: int) -> float:
    images, masks = (x.to(device, non_blocking=True) for x in batch)
    with autocast_for(cfg.train.amp, device):
        outputs = model.forward_train(images)
    loss = segmentation_loss(outputs, masks, ignore_index=cfg.data.ignore_index, aux_weight=cfg.train.aux_weight)
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"loss became {value} at step {step + 1}; stopped without saving, so the last good checkpoint in "
            f"{cfg.train.run_dir} is intact. Try a lower train.lr or train.warmup_iterations > 0."
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value


def _evaluate(model: nn.Module, dataset, cfg: Config, device: torch.device) -> dict[str, Any]:
    return evaluate(model, dataset, num_classes=dataset.num_classes, ignore_index=dataset.ignore_index,
                    device=device, batch_size=cfg.eval.batch_size, num_workers=0, progress=False)


def _restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    checkpoint = read_checkpoint(path)
    model.load_state_dict(checkpoint.raw["model"])
    optimizer.load_state_dict(checkpoint.raw["optimizer"])
    torch.set_rng_state(checkpoint.raw["rng"]["torch"])
    if "cuda" in checkpoint.raw["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint.raw["rng"]["cuda"])
    return checkpoint.step, checkpoint.best_miou
