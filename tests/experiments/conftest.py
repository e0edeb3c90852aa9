"""Shared fixtures of the experiment smoke tests."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """One model cache per session unless the caller already chose one."""
    if os.environ.get("INVERSION_CACHE"):
        yield
        return
    mp = pytest.MonkeyPatch()
    mp.setenv("INVERSION_CACHE", str(tmp_path_factory.mktemp("model_cache")))
    yield
    mp.undo()
