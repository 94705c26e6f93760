"""Where do ours and the reference part? BatchNorm output by BatchNorm output, in the reference graph's order.

Needs ``tf_reference.py OUT --variants V --dump FusedBatchNorm`` (the reference's BatchNorm outputs) and
``compare.py OUT`` (which writes ``OUT/V/imported.pt``); then ``python conformance/layer_diff.py OUT V 129x129``.
Each line: the TF op, max|ours - ref| / max|ref| of that layer's output, and a mark on the first over ``--above``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("variant")
    parser.add_argument("size", help="e.g. 129x129")
    parser.add_argument("--above", type=float, default=1e-5, help="mark the first layer over this relative difference")
    args = parser.parse_args(argv)
    from deeplab import load_checkpoint
    from deeplab.imageio import read_image
    from deeplab.models.tf_import import _rules  # our state key -> TF variable (the import's own mapping)

    folder = args.out / args.variant
    with np.load(folder / args.size / "tensors.npz") as dumped:
        reference = {name: dumped[name] for name in dumped.files}
    model, checkpoint = load_checkpoint(folder / "imported.pt")
    rules = _rules(model)
    ours: dict[str, np.ndarray] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            tf_scope = rules[f"{name}.running_mean"][0].rsplit("/", 1)[0]
            op = next((k for k in reference if k.rsplit("/", 1)[0] == tf_scope), None)
            if op is not None:
                hooks.append(module.register_forward_hook(
                    lambda _m, _i, out, op=op: ours.__setitem__(op, out[0].permute(1, 2, 0).double().numpy())))
    image = read_image(folder / args.size / "image.png")
    mean = torch.tensor(checkpoint.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(checkpoint.spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        model((image.float().unsqueeze(0) / 255.0 - mean) / std)
    marked = False
    for op, ref in reference.items():
        if op not in ours:
            print(f"{op:90s} (no module of ours)")
            continue
        ref = ref[0].astype(np.float64)
        if ours[op].shape != ref.shape:
            print(f"{op:90s} shape {ours[op].shape} != {ref.shape}")
            continue
        ratio = np.abs(ours[op] - ref).max() / max(np.abs(ref).max(), 1e-12)
        mark = "" if marked or ratio <= args.above else "   <-- first over"
        marked = marked or bool(mark)
        print(f"{op:90s} {ratio:.2e}{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
