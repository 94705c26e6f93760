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


def pytest_configure(config):
    # pytest-xdist registers it too; registered here as well, so a run without xdist raises no unknown-mark warning
    config.addinivalue_line("markers", "xdist_group(name): run these tests on one pytest-xdist worker")


def _expensive(definitions) -> bool:
    """A module- or session-scoped fixture of this test suite (not pytest's own, such as tmp_path_factory)."""
    if not definitions:
        return False
    definition = definitions[-1]
    return definition.scope in ("module", "session") and definition.func.__module__.startswith("tests")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """Under ``--dist loadgroup``, the tests of a module that share a module- or session-scoped fixture (a trained
    model, torchrun runs) go to one worker, so that no two workers build the same expensive fixture."""
    groups: dict[tuple[str, str], str] = {}  # (module, fixture) -> group
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        shared = [name for name in info.names_closure if _expensive(info.name2fixturedefs.get(name))]
        module = item.nodeid.split("::")[0]
        names = {groups[(module, name)] for name in shared if (module, name) in groups}
        group = min(names) if names else f"{module}::{shared[0]}" if shared else None
        if group is None:
            continue
        for key, value in list(groups.items()):  # merge groups that this test joins
            if value in names:
                groups[key] = group
        for name in shared:
            groups[(module, name)] = group
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        module = item.nodeid.split("::")[0]
        names = {groups.get((module, name)) for name in (info.names_closure if info else ())} - {None}
        if names:
            item.add_marker(pytest.mark.xdist_group(min(names)))
