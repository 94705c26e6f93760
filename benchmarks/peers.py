"""``deeplab benchmark`` beside other implementations of the same architectures: torchvision and smp.

    python benchmarks/peers.py [--models deeplabv3_resnet101,deeplabv3plus_resnet101] [--size 513] [--runs 7]
                               [--no-memory]

Adds, for each model, the same architecture's plain eager model from torchvision (``deeplabv3_resnet101``;
it and ours share the same weights, ours built from torchvision's state dict) and from
segmentation_models_pytorch (``pip install segmentation-models-pytorch``; it takes only sides divisible by
16, so its input is zero-padded and its output cropped, as its users must). Prints the benchmark's table
and the target that compares our fast path with torchvision's eager model.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import torch

from deeplab.deploy.benchmark import (
    AUTO,
    DEFAULT_MODELS,
    NUM_CLASSES,
    BenchmarkResult,
    benchmark_model,
    calibrate_batchnorm,
    format_report,
    model_options,
    paired_ratio,
    run_benchmark,
)
from deeplab.models import build_model

_SMP_ENCODERS = {"deeplabv3plus_resnet101": "resnet101", "deeplabv3plus_mobilenetv2": "mobilenet_v2",
                 "deeplabv3plus_xception65": "tu-xception65", "deeplabv3_resnet101": "resnet101"}


def torchvision_model() -> torch.nn.Module:
    """torchvision's DeepLabV3-ResNet101, seeded random weights, calibrated BatchNorm."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None,
                                                                 num_classes=NUM_CLASSES, aux_loss=False)
    return calibrate_batchnorm(model)


def our_model(name: str) -> torch.nn.Module:
    """Ours; for ``deeplabv3_resnet101``, with torchvision's weights (the same network, key for key)."""
    if name != "deeplabv3_resnet101":
        return benchmark_model(name)
    return build_model(name, weights=torchvision_model().state_dict(), **model_options(name)).eval()


class _OutOnly(torch.nn.Module):
    """torchvision's segmentation models return a dict; the benchmark wants the logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


class _PaddedTo(torch.nn.Module):
    """smp's models take only sides divisible by 16: pad the input (zeros) and crop the logits, as a user must."""

    def __init__(self, model: torch.nn.Module, multiple: int) -> None:
        super().__init__()
        self.model = model
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        return self.model(torch.nn.functional.pad(x, (0, pad_w, 0, pad_h)))[..., :height, :width]


def peers(name: str, model: torch.nn.Module) -> dict[str, Callable[[], torch.nn.Module]]:
    """Builders of the other implementations of ``name``'s architecture (eager, fp32)."""
    found: dict[str, Callable[[], torch.nn.Module]] = {}
    if name == "deeplabv3_resnet101":
        found["torchvision eager"] = lambda: _OutOnly(torchvision_model().eval())
    encoder = _SMP_ENCODERS.get(name)
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return found
    if encoder is not None:
        arch = smp.DeepLabV3Plus if name.startswith("deeplabv3plus") else smp.DeepLabV3
        stride = model.spec.output_stride
        found["smp eager"] = lambda: _PaddedTo(arch(encoder, encoder_weights=None, classes=NUM_CLASSES,
                                                    encoder_output_stride=stride).eval(), 16)
    return found


def torchvision_target(result: BenchmarkResult) -> list[str]:
    """Our fast fp32 path (>= 1.25x) and our default runtime (>= 2x, argmax >= 99.9% the same) against
    torchvision's eager model on identical weights (v3 ResNet-101): per-round ratios (:func:`paired_ratio`),
    judged only when their spread allows."""
    rows = {t.path: t for t in result.timings if t.model == "deeplabv3_resnet101"}
    tv = rows.get("torchvision eager")
    lines = []
    for path, goal in (("fast fp32", 1.25), (AUTO, 2.0)):
        ours = rows.get(path)
        if not (tv and ours):
            continue
        ratio = paired_ratio(tv.times, ours.times)
        agreement = ours.agreement if ours.agreement is not None else float("nan")
        verdict = ratio.judge(goal)
        if verdict == "met" and not agreement >= 0.999:
            verdict = "NOT met"
        lines.append(f"target: {path} >= {goal}x torchvision eager (v3 ResNet-101, same weights), argmax >= 99.9% "
                     f"the same: {ratio.median:.2f}x (rounds {ratio.low:.2f}-{ratio.high:.2f}x), "
                     f"{100 * agreement:.2f}% [{verdict}]")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names")
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        print("note: smp not measured (pip install segmentation-models-pytorch)")
    # the memory child imports this module by name to rebuild a peer
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    result = run_benchmark(args.models.split(","), size=args.size, runs=args.runs, warmup=args.warmup,
                           memory=not args.no_memory, build=our_model, extra=peers, extra_name="peers:peers",
                           progress=True)
    for timing in result.timings:
        if timing.path == "smp eager":
            timing.agreement = None  # smp's network has weights of its own: its classes say nothing about ours
    print(format_report(result, torchvision_target))


if __name__ == "__main__":
    main()
