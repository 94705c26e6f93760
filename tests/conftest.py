import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: one torch thread each (and in the processes the tests
    # start), or the workers' thread pools would fight over the same cores.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def _private_verify_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own empty verification cache (deeplab.data.verify), never the user's ~/.cache."""
    monkeypatch.setenv("DEEPLAB_CACHE", str(tmp_path_factory.mktemp("deeplab-cache")))
