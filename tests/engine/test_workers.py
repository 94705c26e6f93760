"""Loader workers leave SIGINT and SIGTERM to the trainer while it is shielded, and react to them otherwise."""

import os
import signal
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from deeplab.engine.workers import shielded, worker_options

pytestmark = pytest.mark.skipif(not worker_options(1), reason="needs the fork start method")


class Numbers(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(index)


def _workers(num_workers: int = 2):
    it = iter(DataLoader(Numbers(), batch_size=2, num_workers=num_workers, persistent_workers=True,
                         **worker_options(num_workers)))
    assert next(it).tolist() == [0, 1]
    return it, list(it._workers)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shielded_workers_survive_a_stop_signal_and_keep_loading(signum):
    it, workers = _workers()
    with shielded():
        for worker in workers:
            os.kill(worker.pid, signum)
        time.sleep(0.3)  # a worker killed by it would be gone by now
        assert [next(it).tolist() for _ in range(3)] == [[2, 3], [4, 5], [6, 7]]
        assert all(worker.is_alive() for worker in workers)
    del it  # shuts the workers down as usual
    for worker in workers:
        worker.join(timeout=10)
        assert worker.exitcode == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_outside_the_shield_a_stop_signal_ends_the_workers(signum):
    it, workers = _workers()  # (it keeps the workers' loader alive)
    for worker in workers:
        os.kill(worker.pid, signum)
    for worker in workers:
        worker.join(timeout=10)
        assert worker.exitcode == 0  # quietly, as torch's own handler ends a worker its loader terminates


def test_no_options_without_workers():
    assert worker_options(0) == {}
