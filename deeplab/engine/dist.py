"""Distributed helpers for training, evaluation and prediction: the torchrun environment, one device per
process, collectives that are no-ops in a single process, and BatchNorm synchronised over all processes (SyncBN).

A process started by ``torchrun`` finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous
address) in its environment; :func:`setup` joins the process group from them: NCCL on GPUs, gloo on
CPU. Without those variables everything here behaves as one process of a world of one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def setup(device_name: str, *, option: str = "train.device") -> tuple[DistEnv, torch.device, bool]:
    """Joins the process group torchrun describes (if any) and picks this process's device.

    ``option`` names the device setting in errors.

    Returns:
        The environment, the device, and whether this call created the process group (and so
        should destroy it, see :func:`teardown`).
    """
    env = env_from_torchrun()
    device = resolve_device(device_name, env.local_rank, option=option)
    return env, device, join(env, device)


def join(env: DistEnv, device: torch.device) -> bool:
    """Makes ``device`` this process's GPU (if it is one) and joins the process group of ``env`` when there
    are several processes: NCCL on GPUs, gloo on CPU. Returns whether it created the group."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not env.distributed or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, store=_attempt_store(env),
                            device_id=device if device.type == "cuda" else None)
    return True


@contextmanager
def process_group(env: DistEnv, device: torch.device) -> Iterator[None]:
    """:func:`join` for the duration of the block, then :func:`teardown`."""
    created = join(env, device)
    try:
        yield
    finally:
        teardown(created)


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


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the number of processes in the current group; ``(0, 1)`` without one."""
    return (dist.get_rank(), dist.get_world_size()) if _active() else (0, 1)


def shard(count: int) -> range:
    """This process's share of ``count`` items: every ``world_size``-th index from its rank (all of them alone).

    Taking every N-th rather than a contiguous block spreads a sorted list's large and small items evenly."""
    rank, size = rank_and_size()
    return range(rank, count, size)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sums ``tensor`` over all processes, in place; returns it (unchanged in a single process)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_sum_with_grad(tensor: Tensor) -> Tensor:
    """Sums ``tensor`` over all processes into a new tensor that backpropagates (the gradient is summed over
    the processes too); ``tensor`` itself in a single process."""
    if _active():
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(tensor, op=dist.ReduceOp.SUM)
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


def _collective_device() -> torch.device:
    """Where tensors of a collective live: NCCL reduces GPU tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def first_on_each_node(env: DistEnv, build: Callable[[], T]) -> T:
    """Runs ``build`` on local rank 0 first, then on the node's other processes.

    For work that fills a per-node cache (the dataset check decodes every file once and caches the
    verdicts): the other processes then find it warm. If the first process fails, every process
    raises instead of waiting forever for it.
    """
    if not _active():
        return build()
    failed = torch.zeros(1, device=_collective_device())
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


def from_main(build: Callable[[], T]) -> T:
    """``build()`` run on rank 0 alone, its (picklable) result handed to every process.

    For a decision all processes must share exactly (which files to work on, say). If it raises on rank 0,
    every other process raises too, instead of waiting forever for the result.
    """
    if not _active():
        return build()
    payload: list = [None]
    if dist.get_rank() == 0:
        try:
            payload = [(build(), None)]
        except Exception as err:
            dist.broadcast_object_list([(None, f"{type(err).__name__}: {err}")], src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    result, error = payload[0]
    if error is not None:
        raise RuntimeError(f"process 0 failed: {error}")
    return result


def gather_results(work: Callable[[], T]) -> list[T]:
    """Runs ``work`` on every process and hands each the (picklable) results of all, in rank order.

    If ``work`` raises on some process, that process re-raises its error and every other one raises a
    ``RuntimeError`` naming it, once all have finished: no process is left waiting for a failed one.
    """
    if not _active():
        return [work()]
    try:
        result, error = work(), None
    except Exception as err:
        result, error = None, err
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (result, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    for rank, (_, message) in enumerate(gathered):
        if message is not None:
            raise RuntimeError(f"process {rank} failed: {message}")
    return [item for item, _ in gathered]


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


class CPUSyncBatchNormAct(CPUSyncBatchNorm):
    """:class:`CPUSyncBatchNorm` followed by the dropout and activation of timm's ``BatchNormAct2d`` (Xception
    and many timm encoders fuse them into their norm layer; a plain BatchNorm in its place would drop them)."""

    def __init__(self, *args, drop: nn.Module, act: nn.Module) -> None:
        super().__init__(*args)
        self.drop = drop
        self.act = act

    def forward(self, input: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(input)))


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replaces every BatchNorm layer by one that normalises over the global batch of all processes:
    ``torch.nn.SyncBatchNorm`` on GPUs (timm's ``SyncBatchNormAct`` for its norm + activation layers),
    :class:`CPUSyncBatchNorm` on CPU. Weights and running statistics are kept; so are the names of the
    state dict, so checkpoints load into plain BatchNorm models."""
    if device.type != "cpu":
        from timm.layers import convert_sync_batchnorm as timm_convert  # torch's would drop BatchNormAct2d's act

        return timm_convert(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        arguments = (module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if isinstance(getattr(module, "act", None), nn.Module):  # timm's BatchNormAct2d
            synced = CPUSyncBatchNormAct(*arguments, drop=module.drop, act=module.act)
        else:
            synced = CPUSyncBatchNorm(*arguments)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        if module.affine:
            synced.weight.requires_grad_(module.weight.requires_grad)
            synced.bias.requires_grad_(module.bias.requires_grad)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module

