import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: one torch thread each (and in the processes the tests
    # start), or the workers' thread pools would fight over the same cores.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def _private_cache_and_pinned_runtime(tmp_path_factory, monkeypatch):
    """Each test gets its own empty cache (dataset verdicts, runtime choices, converted models), never the user's
    ~/.cache; and model loading is pinned to the torch runtime, so that the many tests that open a model do not
    each convert it and time three runtimes: tests/deploy/test_runtimes.py unpins it where `auto` is the subject."""
    monkeypatch.setenv("DEEPLAB_CACHE", str(tmp_path_factory.mktemp("deeplab-cache")))
    monkeypatch.setenv("DEEPLAB_RUNTIME", "torch")
