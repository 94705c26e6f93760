"""Binary segmentation losses: the same small model trained on the demo set with ce, dice and ce + dice.

    python benchmarks/binary_losses.py [--foreground disk] [--losses ce dice ce+dice] [--seeds 0]
        [--iterations 150] [--batch-size 8] [--image-size 64] [--num-images 200] [--val-images 50] [--json FILE]

One shape class of the embedded demo set is the foreground (1), everything else the background (0)
(:class:`deeplab.data.demo.BinaryDemoDataset`). For each loss and seed, DeepLab v3 MobileNetV2 with one
output logit (``task: binary``) is trained from scratch with the demo recipe (configs/demo.yaml: SGD,
poly LR, its augmentation) through the engine's own ``train_step`` and ``build_loss``, then evaluated on
the val split: foreground IoU, Dice/F1, precision and recall of ``sigmoid > 0.5``. ``ce`` of a binary
model is the sigmoid (binary) cross-entropy of its single logit, i.e. ``bce``. Runs of one seed start
from the same initial weights and see the same batches; only the loss differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from deeplab import create_model
from deeplab.config import Config, load_config
from deeplab.data.demo import DEMO_CLASSES, BinaryDemoDataset
from deeplab.engine import dist
from deeplab.engine.data import attach_transforms, train_loader
from deeplab.engine.evaluate import evaluate
from deeplab.engine.schedule import poly_lr
from deeplab.engine.train import TrainingModule, build_optimizer, grad_scaler, train_step
from deeplab.imageio import atomic_write
from deeplab.losses import build_loss

ROOT = Path(__file__).resolve().parents[1]
FIGURES = (("miou", "foreground IoU %"), ("mdice", "Dice/F1 %"), ("mprecision", "precision %"),
           ("mrecall", "recall %"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deeplabv3_mobilenetv2", help="a small model trains in minutes on a CPU")
    parser.add_argument("--foreground", choices=DEMO_CLASSES[1:], default="disk", help="the shape class that is 1")
    parser.add_argument("--losses", nargs="+", default=["ce", "dice", "ce+dice"], help="train.loss values")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64, help="demo images (and crops) of this side")
    parser.add_argument("--num-images", type=int, default=200, help="training images")
    parser.add_argument("--val-images", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    return parser.parse_args(argv)


def recipe(args: argparse.Namespace, seed: int) -> Config:
    return load_config(ROOT / "configs" / "demo.yaml", [
        f"model.name={args.model}", f"train.iterations={args.iterations}", f"train.batch_size={args.batch_size}",
        f"train.seed={seed}", f"data.crop_size={args.image_size}", f"data.image_size={args.image_size}",
        "data.num_workers=0", "train.device=cpu",
    ])


def train_and_evaluate(args: argparse.Namespace, loss: str, seed: int) -> dict[str, float]:
    """One run: a fresh binary model trained ``args.iterations`` steps with ``loss``; its val figures."""
    cfg = recipe(args, seed)
    foreground = DEMO_CLASSES.index(args.foreground)
    torch.manual_seed(seed)
    model = create_model(args.model, num_classes=1, output_stride=cfg.model.output_stride)
    model.spec = dataclasses.replace(model.spec, task="binary")  # one sigmoid logit
    train_set, val_set = (BinaryDemoDataset(split=split, foreground=foreground, image_size=args.image_size,
                                            num_images=count)
                          for split, count in (("train", args.num_images), ("val", args.val_images)))
    attach_transforms(train_set, val_set, cfg.data, mean=model.spec.mean, std=model.spec.std)
    loss_fn = build_loss(loss, task="binary", num_classes=1, ignore_index=cfg.data.ignore_index,
                         aux_weight=cfg.train.aux_weight)
    optimizer, scaler, env = build_optimizer(model, cfg), grad_scaler("off", torch.device("cpu")), dist.DistEnv()
    module, t = TrainingModule(model).train(), cfg.train
    batches = iter(train_loader(train_set, batch_size=t.batch_size, seed=seed, start_step=0, num_workers=0))
    for step in range(t.iterations):
        lr = poly_lr(step, base_lr=t.lr, iterations=t.iterations, power=t.poly_power, warmup=t.warmup_iterations)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        images, masks = next(batches)
        train_step(module, optimizer, scaler, images, masks, cfg, env, loss_fn)
    metrics = evaluate(model, val_set, num_classes=1, batch_size=25, progress=False, threshold=0.5)
    return {key: metrics[key] for key, _ in FIGURES}


def _cell(values: list[float]) -> str:
    percent = [100 * v for v in values]
    spread = f" ± {statistics.stdev(percent):.2f}" if len(percent) > 1 else ""
    return f"{statistics.mean(percent):.2f}{spread}"


def format_table(results: dict[str, list[dict[str, float]]]) -> str:
    header = ["loss", *(title for _, title in FIGURES)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for loss, runs in results.items():
        name = f"{loss} (= bce on the one logit)" if loss == "ce" else loss
        lines.append("| " + " | ".join([name, *(_cell([r[key] for r in runs]) for key, _ in FIGURES)]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {loss: [] for loss in args.losses}
    for loss in args.losses:  # a bad loss name fails before any training
        build_loss(loss, task="binary", num_classes=1)
    for seed in args.seeds:
        for loss in args.losses:
            start = time.perf_counter()
            figures = train_and_evaluate(args, loss, seed)
            figures["seconds"] = time.perf_counter() - start
            results[loss].append(figures)
            print(f"{loss}, seed {seed}: foreground IoU {100 * figures['miou']:.2f} % in {figures['seconds']:.0f} s",
                  flush=True)
    print(f"\nforeground: {args.foreground}; {args.model}, {args.iterations} iterations, batch {args.batch_size}, "
          f"{args.image_size} px, {args.num_images} training images, seeds {args.seeds}")
    print(format_table(results))
    if args.json:
        with atomic_write(args.json, "w") as handle:
            json.dump({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
