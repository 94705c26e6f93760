"""Deploy benchmark: every inference path of the README's models, against torchvision and smp, in one run.

    python benchmarks/deploy.py [--models deeplabv3plus_resnet101,...] [--size 513] [--batch 1] [--runs 7]
                                [--warmup 2] [--threads N] [--no-memory] [--no-peers]

Same as ``deeplab benchmark``. Paths: plain eager fp32, the fast path (BatchNorm folded, channels-last:
what Predictor does by default), TorchScript and ONNX Runtime exports (fp32, int8), bf16 autocast where
the CPU has AVX512-BF16/AMX, and the same architecture from torchvision (v3 ResNet-101, identical weights)
and segmentation_models_pytorch (when installed: ``pip install segmentation-models-pytorch``). Runs are
interleaved; the table gives median and min latency, the speed-up against plain eager, peak memory, and
the deploy issue's two targets.
"""

from __future__ import annotations

import argparse

import torch

from deeplab.deploy.benchmark import DEFAULT_MODELS, format_report, run_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-peers", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run_benchmark([name.strip() for name in args.models.split(",")], size=args.size, batch=args.batch,
                           runs=args.runs, warmup=args.warmup, memory=not args.no_memory, peers=not args.no_peers)
    print(format_report(result))


if __name__ == "__main__":
    main()
