"""The fast eager path: an eval-mode copy of a model with BatchNorm folded into the convolutions, channels-last.

:class:`deeplab.inference.Predictor` runs every ``nn.Module`` through :func:`fast_copy` by default, and the
exporters trace the folded copy. The caller's model is never modified.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

# Input side of the probe pass that finds conv -> BN pairs: valid for every backbone at OS 8, 16 and 32.
_PROBE_SIZE = 65


def fast_copy(model: nn.Module, device: str | torch.device = "cpu", *, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` on ``device``, BatchNorms folded into their convolutions, channels-last.

    The caller's model is not modified (its mode, weights and device stay as they were), so this can be
    called on a model in the middle of training: the copy reflects its current weights. Gradients are
    switched off in the copy.
    """
    device = torch.device(device)
    fast = _eval_copy(model, device)
    problem = _fold_batchnorms(fast, device) if any(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) else None
    if problem:
        warnings.warn(f"BatchNorm folding changed this model's output ({problem}); running it unfolded", stacklevel=2)
        fast = _eval_copy(model, device)
    if channels_last and device.type in ("cpu", "cuda"):
        fast = fast.to(memory_format=torch.channels_last)
    return fast


def _eval_copy(model: nn.Module, device: torch.device) -> nn.Module:
    copied = copy.deepcopy(model).to(device).eval()
    copied.requires_grad_(False)
    return copied


def _fold_batchnorms(model: nn.Module, device: torch.device) -> str | None:
    """Folds the conv -> BN pairs a probe pass finds, in place; says by how much that changed the model's output
    if it did beyond rounding (None: it did not)."""
    channels = getattr(getattr(model, "spec", None), "in_channels", 3)
    probe = torch.randn(1, channels, _PROBE_SIZE, _PROBE_SIZE, generator=torch.Generator().manual_seed(0))
    try:
        pairs, reference = conv_bn_pairs(model, probe.to(device))
    except Exception:  # a model that cannot run the probe input is served as it is
        return None
    if not pairs:
        return None
    fold_pairs(model, pairs)
    with torch.no_grad():
        output = model(probe.to(device))
    difference, bound = _max_difference(output, reference), 1e-3 * max(1.0, _max_magnitude(reference))
    return None if difference <= bound else f"max |d output| = {difference:.2e} on a probe input, > {bound:.1e}"


def _max_difference(a: Any, b: Any) -> float:
    if isinstance(a, torch.Tensor):
        return (a.float() - b.float()).abs().max().item()
    if isinstance(a, dict):
        return max((_max_difference(a[key], b[key]) for key in a), default=0.0)
    return 0.0 if a == b else float("inf")


def _max_magnitude(a: Any) -> float:
    if isinstance(a, torch.Tensor):
        return a.float().abs().max().item()
    if isinstance(a, dict):
        return max((_max_magnitude(value) for value in a.values()), default=0.0)
    return 0.0


def conv_bn_pairs(model: nn.Module, probe: torch.Tensor) -> tuple[list[tuple[str, str]], Any]:
    """Names of the (Conv2d, BatchNorm2d) pairs where the BN normalises the conv's output and nothing else
    reads it, found by running ``probe`` through ``model`` (in eval mode) with hooks; also returns the output.

    A pair is kept only if every call of the BN took the output of the same conv, and that output went to
    no other module. Modules are matched by tensor identity, so a conv output that a plain function also
    reads would go unseen: :func:`fast_copy` checks the folded model's output against this one's.
    """
    names = {module: name for name, module in model.named_modules()}
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> conv name (the tensor keeps the id alive)
    readers: dict[str, set[str]] = {}  # conv name -> modules that read its output
    sources: dict[str, set[str | None]] = {}  # BN name -> convs it read from (None: something else)

    def before(module: nn.Module, args: tuple) -> None:
        name = names[module]
        tensors = [arg for arg in args if isinstance(arg, torch.Tensor)]
        for tensor in tensors:
            if id(tensor) in produced:
                readers.setdefault(produced[id(tensor)][0], set()).add(name)
        if isinstance(module, nn.BatchNorm2d):
            first = produced.get(id(tensors[0])) if tensors else None
            sources.setdefault(name, set()).add(first[0] if first else None)

    def after(module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            produced[id(output)] = (names[module], output)

    handles = []
    for module in model.modules():
        if module is model:
            continue
        handles.append(module.register_forward_pre_hook(before))
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(after))
    try:
        with torch.no_grad():
            output = model(probe)
    finally:
        for handle in handles:
            handle.remove()
    pairs = []
    for bn, convs in sources.items():
        conv = next(iter(convs))
        if len(convs) == 1 and conv is not None and readers.get(conv) == {bn}:
            pairs.append((conv, bn))
    return pairs, output


def fold_pairs(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Folds each named BN into its conv (``torch.nn.utils.fusion``) and removes the BN, in place.

    A BN that carries its own activation (timm's ``BatchNormAct2d``) is replaced by that activation.
    """
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias)
        conv.weight, conv.bias = weight, bias
        rest: nn.Module = nn.Identity()
        if type(bn) is not nn.BatchNorm2d and isinstance(getattr(bn, "act", None), nn.Module):
            rest = nn.Sequential(getattr(bn, "drop", nn.Identity()), bn.act)
        parent_name, _, attribute = bn_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attribute, rest)
