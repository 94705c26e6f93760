"""The README's encoder table: DeepLab v3+ on one timm model per family, beside our ResNet-101 and Xception-65.

    python benchmarks/timm_encoders.py [--models NAME,...] [--size 513] [--runs 5] [--threads 2]

Per model: parameters (21 classes), multiply-adds at ``--size`` px and output stride 16 (deeplab's counter,
``deeplab.models.complexity.count_macs``, on the meta device), whether it builds at output stride 8 and 16,
and the fast path's CPU latency (what ``Predictor`` runs: an eval copy with BatchNorm folded, channels-last,
fp32), median and min of ``--runs`` timed runs after one warm-up, on random weights (weights do not change
the arithmetic).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deeplab import create_model
from deeplab.deploy.fastpath import fast_copy
from deeplab.deploy.precision import cpu_kind
from deeplab.models.complexity import count_macs, count_parameters

MODELS = ("deeplabv3plus_resnet101", "deeplabv3plus_xception65", "deeplabv3plus_tu-resnet50",
          "deeplabv3plus_tu-convnext_tiny", "deeplabv3plus_tu-efficientnet_b3", "deeplabv3plus_tu-regnety_016",
          "deeplabv3plus_tu-mobilenetv3_large_100", "deeplabv3plus_tu-mobilenetv4_conv_small")


def _builds(name: str, output_stride: int) -> bool:
    try:
        with torch.device("meta"):
            create_model(name, num_classes=21, output_stride=output_stride)
    except ValueError:
        return False
    return True


def measure(name: str, size: int, runs: int) -> dict:
    with torch.device("meta"):
        meta = create_model(name, num_classes=21, output_stride=16)
        macs = count_macs(meta, size)
    model = fast_copy(create_model(name, num_classes=21, output_stride=16))
    x = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for index in range(runs + 1):
            start = time.perf_counter()
            model(x)
            if index:  # the first run warms up
                times.append(time.perf_counter() - start)
    supported = [stride for stride in (8, 16) if _builds(name, stride)]
    return {"name": name, "params": count_parameters(meta), "macs": macs, "os": supported,
            "median": statistics.median(times), "min": min(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_kind()}; torch {torch.__version__}, {args.threads} threads, {args.size}x{args.size}, "
          f"batch 1, fast path fp32, {args.runs} runs after a warm-up")
    print("| model | params (M) | GMACs OS16 | OS 8 / 16 | latency median (min), s |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        row = measure(name.strip(), args.size, args.runs)
        support = " / ".join("yes" if s in row["os"] else "no" for s in (8, 16))
        print(f"| {row['name']} | {row['params'] / 1e6:.2f} | {row['macs'] / 1e9:.2f} | {support} "
              f"| {row['median']:.2f} ({row['min']:.2f}) |", flush=True)


if __name__ == "__main__":
    main()
