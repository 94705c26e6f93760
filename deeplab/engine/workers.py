"""DataLoader worker processes that leave SIGINT and SIGTERM to the trainer while it can stop cleanly.

A stop signal often reaches every process of a job, not only the trainer: torchrun forwards it to each
training process's whole process group, and SLURM, systemd and a terminal's Ctrl-C signal all processes
of a job. A loader worker killed by it takes the trainer down (``DataLoader worker (pid ...) is killed by
signal``) before the trainer can finish its step and save. Workers of a DataLoader built with
:func:`worker_options` ignore both signals while :func:`shielded` is active (the training loop, which
stops after its step and saves), and react to them as before otherwise.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_shield = None  # a byte in shared memory; workers forked after its creation read the trainer's value


def _flag():
    global _shield
    if _shield is None:
        _shield = multiprocessing.RawValue("b", 0)
    return _shield


@contextmanager
def shielded() -> Iterator[None]:
    """While active, workers of loaders built with :func:`worker_options` (started before or meanwhile)
    ignore SIGINT and SIGTERM."""
    flag = _flag()
    previous, flag.value = flag.value, 1
    try:
        yield
    finally:
        flag.value = previous


def worker_options(num_workers: int) -> dict[str, Any]:
    """DataLoader keyword arguments whose workers honour :func:`shielded`.

    Empty (the DataLoader's defaults) without workers, or where the start method is not ``fork`` (Windows,
    macOS, Linux from Python 3.14 on, or set so by the user): there workers react to signals as they always did.
    """
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    if num_workers == 0 or method != "fork":
        return {}
    _flag()  # before any fork, so that the workers share it
    return {"multiprocessing_context": _BlockedForkContext(), "worker_init_fn": _handle_stop_signals}


def _handle_stop_signals(worker_id: int) -> None:
    """In each worker, before its first sample: after torch set its own handlers, which it must override."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_stop_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # pending ones are handled now


def _on_stop_signal(signum: int, frame) -> None:
    if _flag().value:
        return  # meant for the trainer, which stops after its step and then shuts this worker down
    if signum == signal.SIGINT:
        raise KeyboardInterrupt  # as before: the worker loop ends quietly on it
    os._exit(0)  # as torch's own handler does when the loader terminates its worker (at exit, say)


if sys.platform != "win32":  # fork exists everywhere else
    from multiprocessing.context import ForkContext, ForkProcess

    class _BlockedForkProcess(ForkProcess):
        """Forked with the stop signals blocked, so that none kills it before :func:`_handle_stop_signals`."""

        def start(self) -> None:
            before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                super().start()
            finally:  # one that came meanwhile reaches this process now
                signal.pthread_sigmask(signal.SIG_SETMASK, before)

    class _BlockedForkContext(ForkContext):
        Process = _BlockedForkProcess
