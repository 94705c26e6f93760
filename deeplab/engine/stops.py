"""Ctrl-C and SIGTERM as a request to stop after the current unit of work (a training step, an image), agreed on by
every process of a torchrun group, so that each one stops at the same point and can say what was kept.

A signal handler only records the request (:func:`stop_on_signals`); the loop asks after each unit whether any
process got one (:func:`in_lockstep`, :func:`agreed_stop`, or :func:`stop_flags` / :func:`read_stop` inside a
collective the loop makes anyway), and stops, every process at the same unit. Loader workers built with
:func:`~deeplab.engine.workers.worker_options` leave the signal to their process meanwhile.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch

from . import dist
from .workers import STOP_SIGNALS, shielded

T = TypeVar("T")


@dataclass(frozen=True)
class Stop:
    """A stop all processes agreed on: the signal (SIGTERM wins over SIGINT) and how many processes got it."""

    signal: str  # "SIGINT" or "SIGTERM"
    processes: int
    world_size: int = 1

    def describe(self) -> str:
        """``SIGINT received by 1 of 2 process(es)``."""
        return f"{self.signal} received by {self.processes} of {self.world_size} process(es)"

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as a shell reports a process stopped by it (torchrun then sees a failure,
        which it restarts from when ``--max-restarts`` allows)."""
        return 128 + signal.Signals[self.signal].value


@contextmanager
def stop_on_signals() -> Iterator[dict[str, str | None]]:
    """Turns SIGINT and SIGTERM into a flag (``{"signal": name or None}``) the loop checks after each unit of
    work, so it can keep what it did first; the previous handlers are back afterwards.

    Loader workers, which often get the same signal (torchrun forwards it to the process group, SLURM and
    systemd signal every process of the job), ignore it meanwhile: killed, they would take the unit down.
    Outside the main thread, where Python lets no code set handlers, the flag stays down and signals act as before.
    """
    requested: dict[str, str | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum, frame):
        requested["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        with shielded():
            yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_flags(requested: dict[str, str | None]) -> list[float]:
    """This process's request as two numbers (SIGINT, SIGTERM), to be summed over processes in a collective."""
    return [float(requested["signal"] == "SIGINT"), float(requested["signal"] == "SIGTERM")]


def read_stop(sigint: float, sigterm: float, world_size: int) -> Stop | None:
    """The stop that the summed :func:`stop_flags` of all processes ask for, or None."""
    if sigterm:
        return Stop("SIGTERM", int(sigterm), world_size)
    return Stop("SIGINT", int(sigint), world_size) if sigint else None


def agreed_stop(requested: dict[str, str | None], device: torch.device | str = "cpu", *,
                failed: bool = False) -> tuple[Stop | None, bool]:
    """Whether any process of the group asked to stop, and whether any ``failed``: one small all-reduce, which
    every process must make as often as the others (a plain read of the flag in a single process)."""
    flags = dist.all_reduce_sum(torch.tensor([*stop_flags(requested), float(failed)], device=device))
    sigint, sigterm, failures = flags.tolist()
    return read_stop(sigint, sigterm, dist.rank_and_size()[1]), failures > 0


def in_lockstep(items: Iterable[T], work: Callable[[T], None], *, rounds: int, requested: dict[str, str | None],
                device: torch.device | str = "cpu") -> Stop | None:
    """``work(item)`` for each of ``items``, stopping early, every process at the same round, when any process
    got SIGINT / SIGTERM (returns the :class:`Stop`) or failed.

    After each item all processes agree (:func:`agreed_stop`); ``rounds``, the same on every process, is the
    longest share's length, so that a process with fewer items keeps making the checks. A process whose item
    fails re-raises its error once the others know; they return None, and learn why at their next gather
    (:func:`~deeplab.engine.dist.gather_results`).
    """
    items = iter(items)
    for _ in range(rounds):
        error = None
        try:
            item = next(items, _END)
            if item is not _END:
                work(item)
        except Exception as err:  # shared first, so that no process waits for this one
            error = err
        stop, failed = agreed_stop(requested, device, failed=error is not None)
        if error is not None:
            raise error
        if stop or failed:
            return stop
    return None


_END = object()
