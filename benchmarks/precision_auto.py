"""`precision auto` against fp32: Predictor.from_file of a trained checkpoint on 513-px demo images.

Prints what auto chose (its `runtime:` line), the share of pixels with fp32's class, and the per-round speed-up
(fp32 and auto interleaved, each run after a short pause so that the other runtime's threads are idle; median of
the per-round ratios with their range).

    python benchmarks/precision_auto.py runs/demo/best.pt --rounds 7 [--threads 2] [--check-images DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deeplab.data.demo import DemoDataset
from deeplab.deploy.runners import timed_run
from deeplab.inference import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--size", type=int, default=513, help="image side in pixels (default 513)")
    parser.add_argument("--check-images", default=None, help="folder for auto's real-image check (default: shipped)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = DemoDataset(split="val", transforms=None, num_images=100, image_size=args.size)
    images = [dataset[i][0] for i in range(0, 100, 10)]
    started = time.perf_counter()
    auto = Predictor.from_file(args.checkpoint, check_folder=args.check_images)
    print(f"open, precision auto: {time.perf_counter() - started:.1f} s\n{auto.runtime.describe()}")
    started = time.perf_counter()
    fp32 = Predictor.from_file(args.checkpoint, precision="fp32")
    print(f"open, precision fp32: {time.perf_counter() - started:.1f} s\n{fp32.runtime.describe()}")
    same = total = 0
    for image in images:
        a, b = auto.predict(image), fp32.predict(image)
        same += int((a == b).sum())
        total += a.numel()
    print(f"same class as fp32 on {100 * same / total:.3f}% of {total} pixels ({len(images)} images)")
    ratios, fp32_times, auto_times = [], [], []
    for round_ in range(args.rounds):
        image = images[round_ % len(images)]
        fp32_times.append(timed_run(fp32.predict, image)[0])
        auto_times.append(timed_run(auto.predict, image)[0])
        ratios.append(fp32_times[-1] / auto_times[-1])
    print(f"fp32 {statistics.median(fp32_times):.3f} s, auto {statistics.median(auto_times):.3f} s (medians); "
          f"speed-up {statistics.median(ratios):.2f}x, per round {min(ratios):.2f}-{max(ratios):.2f}x "
          f"over {args.rounds} rounds")


if __name__ == "__main__":
    main()
