import pytest


@pytest.fixture(autouse=True)
def _private_verify_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own empty verification cache (deeplab.data.verify), never the user's ~/.cache."""
    monkeypatch.setenv("DEEPLAB_CACHE", str(tmp_path_factory.mktemp("deeplab-cache")))
