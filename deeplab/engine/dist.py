"""Distributed training helpers: the torchrun environment, one device per process, collectives that are
no-ops in a single process, and BatchNorm synchronised over all processes (SyncBN).

A process started by ``torchrun`` finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous
address) in its environment; :func:`setup` joins the process group from them: NCCL on GPUs, gloo on
CPU. Without those variables everything here behaves as one process of a world of one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..devices import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its global rank, the number of processes, its rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0, the one process that writes checkpoints, logs and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_from_torchrun() -> DistEnv:
    """Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by torchrun); a world of one without them."""
    try:
        rank = int(os.environ.get("RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    except ValueError as err:
        raise RuntimeError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({err})") from err
    if world_size < 1 or not 0 <= rank < world_size:
        raise RuntimeError(f"RANK={rank} is not within WORLD_SIZE={world_size}")
    return DistEnv(rank, world_size, local_rank)


def restart_count() -> int:
    """How many times torchrun restarted this worker group (``--max-restarts``); 0 outside torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


def setup(device_name: str) -> tuple[DistEnv, torch.device, bool]:
    """Joins the process group torchrun describes (if any) and picks this process's device.

    Returns:
        The environment, the device, and whether this call created the process group (and so
        should destroy it, see :func:`teardown`).
    """
    env = env_from_torchrun()
    device = resolve_device(device_name, env.local_rank, option="train.device")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, store=_attempt_store(env),
                                device_id=device if device.type == "cuda" else None)
        created = True
    return env, device, created


def _attempt_store(env: DistEnv) -> dist.Store | None:
    """torchrun's store, with a key space of its own for this restart; ``None`` outside torchrun's shared store.

    torchrun's c10d rendezvous hands its workers one TCP store for the whole job, elastic restarts
    included. The process group's keys (each peer's address) from a failed attempt stay in it, so a
    process of the next attempt could read a dead peer's address and fail to connect (pytorch#135712).
    Prefixing the keys with the restart count, which every worker of a restarted group shares, keeps
    attempts apart.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), env.world_size,
                          is_master=False)  # the agent hosts the server
    return dist.PrefixStore(f"deeplab/attempt_{restart}", store)


def teardown(created: bool) -> None:
    """Leaves the process group if :func:`setup` created it."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sums ``tensor`` over all processes, in place; returns it (unchanged in a single process)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Waits for every process (nothing to wait for in a single process)."""
    if _active():
        dist.barrier()


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copies rank ``src``'s buffers (BatchNorm running statistics) to every process."""
    if _active():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


def first_on_each_node(env: DistEnv, build: Callable[[], T]) -> T:
    """Runs ``build`` on local rank 0 first, then on the node's other processes.

    For work that fills a per-node cache (the dataset check decodes every file once and caches the
    verdicts): the other processes then find it warm. If the first process fails, every process
    raises instead of waiting forever for it.
    """
    if not _active():
        return build()
    # NCCL reduces GPU tensors only.
    failed = torch.zeros(1, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    result = None
    if env.local_rank == 0:
        try:
            result = build()
        except BaseException:
            failed += 1
            all_reduce_sum(failed)
            raise
    all_reduce_sum(failed)
    if failed.item():
        raise RuntimeError("another process failed while preparing the data; see its error above")
    return result if env.local_rank == 0 else build()


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced (summed) incoming gradient."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # noqa: D102
        return all_reduce_sum(tensor.clone())

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return all_reduce_sum(grad.clone())


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all processes, for CPU tensors (gloo).

    ``torch.nn.SyncBatchNorm`` runs on GPUs only; this layer gives CPU runs (and the tests that check
    that N processes train like one) the same statistics: per-channel sums and counts are all-reduced
    through an autograd-aware collective, so the backward pass is synchronised too. In eval mode, or
    in a single process, it is plain ``F.batch_norm``. State-dict keys are those of ``BatchNorm2d``.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and _active()):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype)
        # Two passes (mean, then squared deviations), as torch's own BN, for the same numerics.
        total = _SumOverProcesses.apply(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        shape = [1, -1] + [1] * (input.dim() - 2)
        centred = x - mean.view(shape)
        var = _SumOverProcesses.apply((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / (n - 1).clamp(min=1))
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), momentum)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replaces every BatchNorm layer by one that normalises over the global batch of all processes:
    ``torch.nn.SyncBatchNorm`` on GPUs, :class:`CPUSyncBatchNorm` on CPU. Weights and running statistics
    are kept; so are the names of the state dict, so checkpoints load into plain BatchNorm models."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        synced = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        if module.affine:
            synced.weight.requires_grad_(module.weight.requires_grad)
            synced.bias.requires_grad_(module.bias.requires_grad)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module

