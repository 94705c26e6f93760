"""Input channels other than RGB: which convolutions read the image, and how 3-channel weights adapt to N channels.

Every backbone is built for 3 channels (so its ImageNet or TF weights load unchanged); a model with
``in_channels=N`` then swaps the convolutions that read the image (the stem's first conv, and v1 MSc's
image branch) for N-channel ones. Pretrained 3-channel weights adapt by the usual rule (timm's and
smp's): one channel gets the sum of the three (a grey image then gives exactly the RGB model's
response to the same grey in every channel); N > 1 channels get the three repeated cyclically and
scaled by 3/N, which keeps the expected activation of the layer the same.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

RGB = 3


def adapt_input_weight(weight: Tensor, in_channels: int) -> Tensor:
    """An ``out x 3 x k x k`` convolution weight adapted to ``in_channels`` inputs (see the module's rule)."""
    if weight.shape[1] != RGB:
        raise ValueError(f"can only adapt 3-channel input weights, got shape {tuple(weight.shape)}")
    if in_channels == RGB:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeated = weight.repeat(1, -(-in_channels // RGB), 1, 1)[:, :in_channels]
    return repeated * (RGB / in_channels)


def adaptation_rule(in_channels: int) -> str:
    """The rule :func:`adapt_input_weight` applies, in words."""
    if in_channels == 1:
        return "summed over the 3 RGB channels"
    return f"RGB weights repeated over {in_channels} channels and scaled by 3/{in_channels}"


def input_convolutions(model: nn.Module, channels: int = RGB, size: int = 33) -> list[str]:
    """Names of the ``nn.Conv2d`` modules of ``model`` that read its input image itself (found by running a
    ``channels`` x ``size`` x ``size`` batch through it, on the model's device, in eval mode)."""
    found: list[str] = []
    batch = None

    def hook(name: str):
        def record(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            if args and args[0] is batch:
                found.append(name)
        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in model.named_modules()
               if isinstance(module, nn.Conv2d)]
    parameter = next(model.parameters())
    batch = torch.zeros(1, channels, size, size, device=parameter.device, dtype=parameter.dtype)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(batch)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if not found:
        raise ValueError(f"found no convolution reading the input image in {type(model).__name__}")
    return sorted(set(found), key=found.index)


def set_input_channels(model: nn.Module, in_channels: int, *, adapt: bool) -> list[str]:
    """Makes the convolutions that read the image take ``in_channels`` channels; returns their names.

    ``adapt``: derive their weights from the current 3-channel ones (pretrained weights); else they are
    initialised afresh as a new layer would be.
    """
    if in_channels == RGB:
        return []
    names = input_convolutions(model)
    for name in names:
        conv = model.get_submodule(name)
        if conv.groups != 1:
            raise ValueError(f"{name} is a grouped convolution; cannot change its input channels")
        weight = conv.weight.detach()
        if adapt:
            new = adapt_input_weight(weight, in_channels)
        else:
            new = torch.empty(weight.shape[0], in_channels, *weight.shape[2:], device=weight.device,
                              dtype=weight.dtype)
        conv.in_channels = in_channels
        conv.weight = nn.Parameter(new.contiguous(), requires_grad=conv.weight.requires_grad)
        if not adapt and new.device.type != "meta":
            conv.reset_parameters()
    return names
