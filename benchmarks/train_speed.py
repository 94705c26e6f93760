"""Training throughput (images/s) and peak memory: deeplab's training step against a plain loop.

The plain loop is how the popular PyTorch ports train: torchvision's ``deeplabv3_resnet101`` (aux head
on), fp32, SGD, ``loss = CE(out) + 0.5 * CE(aux)``. deeplab's step is the engine's own (``train_step``:
the training module, global-batch loss normalisation, gradient scaler) on the model the engine prepares
(channels-last, ``torch.compile`` when asked). ``deeplabv3_resnet101_tv`` is our DeepLabV3 built exactly
like torchvision's (output stride 8, the extra 3x3 head conv, no multi-grid, dropout 0.5, aux head):
the same network, so its ratio to the plain loop measures the engine. Every row times the same
random batch, already on the device (no data loading), after warm-up steps; GPU timings synchronise.

    python benchmarks/train_speed.py                                 # GPU: crop 513, batch 8
    python benchmarks/train_speed.py --crop 97 --batch 2 --steps 4   # a CPU-sized run
    python benchmarks/train_speed.py --models deeplabv3plus_mobilenetv2 --amp off bf16 --channels-last off on
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
import torchvision

from deeplab import create_model
from deeplab.config import Config
from deeplab.engine.dist import DistEnv
from deeplab.engine.runlog import peak_memory_mb
from deeplab.engine.train import build_optimizer, grad_scaler, prepare_model, reseed, train_step, wrap_for_training
from deeplab.models.weights import TORCHVISION_LAYOUT

NUM_CLASSES = 21
MODELS = {
    "deeplabv3_resnet101_tv": dict(name="deeplabv3_resnet101", **TORCHVISION_LAYOUT, aux_loss=True),
    "deeplabv3plus_resnet101": dict(name="deeplabv3plus_resnet101"),
    "deeplabv3plus_mobilenetv2": dict(name="deeplabv3plus_mobilenetv2"),
}


def _batch(args, device):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.crop, args.crop, generator=gen)
    masks = torch.randint(0, NUM_CLASSES, (args.batch, args.crop, args.crop), generator=gen)
    return images.to(device), masks.to(device)


def _time(step, args, device) -> tuple[float, float | None]:
    """Median images/s over ``args.steps`` timed steps after ``args.warmup``; peak memory (MiB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    rates = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(args.batch / (time.perf_counter() - start))
    return statistics.median(rates), peak_memory_mb(device)


def plain_loop(args, device):
    """torchvision's DeepLabV3-ResNet101 in the loop the popular ports write."""
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None,
                                                                num_classes=NUM_CLASSES, aux_loss=True)
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.007, momentum=0.9, weight_decay=1e-4)
    images, masks = _batch(args, device)

    def step():
        out = model(images)
        loss = F.cross_entropy(out["out"], masks, ignore_index=255)
        loss = loss + 0.5 * F.cross_entropy(out["aux"], masks, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # the engine also reads its loss every step (NaN check, log)

    return _time(step, args, device)


def engine(name, amp, channels_last, compile, args, device):
    """deeplab's own training step, as ``deeplab train`` runs it on one process."""
    cfg = Config()
    cfg.train.amp, cfg.train.channels_last, cfg.train.compile = amp, channels_last, compile
    options = dict(MODELS[name])
    torch.manual_seed(0)
    model = prepare_model(create_model(options.pop("name"), num_classes=NUM_CLASSES, **options), cfg, DistEnv(),
                          device)
    optimizer, scaler = build_optimizer(model, cfg), grad_scaler(amp, device)
    module = wrap_for_training(model, DistEnv(), device, compile=compile)
    images, masks = _batch(args, device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    counter = itertools.count()

    def step():
        reseed(0, next(counter), 0)
        train_step(module, optimizer, scaler, images, masks, cfg, DistEnv()).item()

    return _time(step, args, device)


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--crop", type=int, default=513 if cuda else 129)
    parser.add_argument("--batch", type=int, default=8 if cuda else 2)
    parser.add_argument("--steps", type=int, default=10 if cuda else 3)
    parser.add_argument("--warmup", type=int, default=5 if cuda else 1)
    parser.add_argument("--amp", nargs="+", default=["off", "bf16", "fp16"] if cuda else ["off", "bf16"])
    parser.add_argument("--channels-last", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-loop baseline")
    parser.add_argument("--row", nargs=4, metavar=("MODEL", "AMP", "CL", "COMPILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    if args.row:  # one measurement in this (fresh) process: its own peak memory, its own compile caches
        model, amp, cl, comp = args.row
        rate, peak = plain_loop(args, device) if model == "plain" else engine(model, amp, cl == "on", comp == "on",
                                                                               args, device)
        print(f"RESULT {rate} {peak or 0}")
        return
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}; torch {torch.__version__}; crop {args.crop}, batch {args.batch}; median of {args.steps} steps "
          f"after {args.warmup} warm-up; each row in a fresh process")
    print("| model | loop | amp | channels-last | compile | images/s | x plain | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    rows = [] if args.no_plain else [("plain", "off", "off", "off")]
    rows += list(itertools.product(args.models, args.amp, args.channels_last, args.compile))
    base = None
    for row in rows:
        try:
            rate, peak = _measure(row, args)
        except RuntimeError as err:
            print(f"| {' | '.join(row)} | failed: {str(err).splitlines()[-1][:80]} |", flush=True)
            continue
        if row[0] == "plain":
            base = rate
        ratio = f"{rate / base:.2f}" if base and row[0] in ("plain", "deeplabv3_resnet101_tv") else "-"
        name, loop = ("torchvision deeplabv3_resnet101", "plain") if row[0] == "plain" else (row[0], "deeplab")
        print(f"| {name} | {loop} | {row[1]} | {row[2]} | {row[3]} | {rate:.2f} | {ratio} | {peak:.0f} |", flush=True)


def _measure(row, args) -> tuple[float, float]:
    command = [sys.executable, __file__, "--row", *row, "--crop", str(args.crop), "--batch", str(args.batch),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    result = subprocess.run(command, capture_output=True, text=True)
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    if result.returncode != 0 or not line:
        raise RuntimeError(f"{' '.join(row)} failed:\n{result.stderr[-3000:]}")
    _, rate, peak = line[-1].split()
    return float(rate), float(peak)


if __name__ == "__main__":
    main()
