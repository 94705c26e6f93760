"""Honest compute reporting: parameters and multiply-adds as the DeepLab papers count them."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Counted like the papers: conv and linear (matmul) weights only; BN, ReLU, pooling, resize are free.
_COUNTED_OPS = ("convolution", "mm", "addmm", "bmm")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, size: int | tuple[int, int] = 513) -> int:
    """Multiply-adds of one forward pass of a 1 x C x size x size image (the auxiliary head excluded).

    Build the model under ``torch.device("meta")`` to count without computing anything.
    """
    height, width = (size, size) if isinstance(size, int) else size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, getattr(model, "in_channels", 3), height, width, device=device))
    finally:
        model.train(was_training)
    flops = sum(
        count for op, count in counter.get_flop_counts()["Global"].items()
        if str(op).split(".")[1] in _COUNTED_OPS
    )
    return flops // 2  # FlopCounterMode counts a multiply-add as two FLOPs
