"""Forward latency on CPU: our deeplabv3_resnet101 against torchvision's, with the same weights, same run.

    python benchmarks/speed.py [--size 513] [--runs 7] [--warmup 2] [--threads N]

Both models compute the same architecture (torchvision's layout: OS 8, rates 12/24/36, extra 3x3
conv), so the ratio measures overhead only. Runs alternate between the two models so that
machine noise hits both alike; the table shows medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from deeplab import create_model


def _time_once(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    theirs = torchvision.models.segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None,
                                                                  num_classes=21, aux_loss=False).eval()
    ours = create_model("deeplabv3_resnet101", num_classes=21, output_stride=8, weights=theirs.state_dict()).eval()
    x = torch.randn(1, 3, args.size, args.size)
    times: dict[str, list[float]] = {"torchvision": [], "deeplab": []}
    with torch.inference_mode():
        diff = (theirs(x)["out"] - ours(x)).abs().max().item()
        for _ in range(args.warmup):
            theirs(x), ours(x)
        for _ in range(args.runs):
            times["torchvision"].append(_time_once(lambda t: theirs(t)["out"], x))
            times["deeplab"].append(_time_once(ours, x))
    base = statistics.median(times["torchvision"])
    print(f"deeplabv3_resnet101, 1x3x{args.size}x{args.size}, CPU, {args.threads} threads, "
          f"median of {args.runs} runs after {args.warmup} warm-up; max |logit diff| = {diff:.2e}")
    print("| implementation | median (s) | min (s) | max (s) | ratio vs torchvision |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {min(values):.3f} | {max(values):.3f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
