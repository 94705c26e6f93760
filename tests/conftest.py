import os
from pathlib import Path

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
    each convert it and time three runtimes: tests/deploy/test_runtimes.py unpins it where `auto` is the subject.
    The precision `auto` means is pinned to fp32 the same way (exact numerics for the tests that compare logits)."""
    monkeypatch.setenv("DEEPLAB_CACHE", str(tmp_path_factory.mktemp("deeplab-cache")))
    monkeypatch.setenv("DEEPLAB_RUNTIME", "torch")
    monkeypatch.setenv("DEEPLAB_PRECISION", "fp32")  # precision auto's real-image check: tests/deploy unpin it


# The modules that take longest (CPU seconds under `make test`, measured 2026-12-03: 207, 128, 66, 40, 37, 32, 23,
# 18, 17, 17), in that order ahead of the rest. pytest-xdist's --dist loadfile hands out whole modules in collection
# order (`make test` passes --no-loadscope-reorder), so longest-first lets the two workers end together instead of
# one idling while the other runs a long module it picked up last.
LONGEST_FIRST = ["deploy/test_defaults.py", "engine/test_distributed.py", "deploy/test_export.py",
                 "test_predict_files.py", "test_recipes.py", "engine/test_resume_faults.py", "models/test_zoo.py",
                 "test_docs.py", "test_inference.py",
                 "engine/test_cli_loop.py", "models/test_tf_zoo.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    tests = Path(__file__).parent
    items.sort(key=lambda item: rank.get(item.path.relative_to(tests).as_posix(), len(rank)))  # stable: the rest
