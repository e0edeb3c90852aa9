"""Shared fixtures of the experiment smoke tests."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """One model cache for the whole run unless the caller already chose one.

    Under pytest-xdist every worker has its own base temporary folder inside one shared
    parent; the cache lives in that parent, so the workers share it (the cache is safe for
    concurrent processes: ``models.cached_train`` trains an entry once, under a lock) and each
    quick model is trained once per run rather than once per worker.
    """
    if os.environ.get("INVERSION_CACHE"):
        yield
        return
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    mp = pytest.MonkeyPatch()
    mp.setenv("INVERSION_CACHE", str(shared / "model_cache"))
    yield
    mp.undo()
