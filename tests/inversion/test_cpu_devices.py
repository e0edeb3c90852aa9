"""One CPU device per core: configured by an explicit call (never on import), batches split over
them, same results."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from inversion import cpu_devices

ROOT = pathlib.Path(__file__).resolve().parents[2]
EPS32 = float(np.finfo(np.float32).eps)
STEPS = 30  # Adam steps in SCRIPT


def rounding_bound(out) -> float:
    """A batch and one row at a time are different float32 programs of the same STEPS-step run:
    each step rounds at eps32 relative to max|x|, independently in the two."""
    return STEPS * EPS32 * max(1.0, out["max_abs"])


SCRIPT = textwrap.dedent(
    """
    import json, os
    import jax
    if os.environ.get("RUN_JAX_FIRST"):
        jax.numpy.ones(2).block_until_ready()  # the backend starts with its default devices
    import jax.numpy as jnp, numpy as np
    from inversion import cpu_devices
    from inversion.engine import invert, invert_batch
    if os.environ.get("CONFIGURE"):
        cpu_devices.configure()

    A = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    def fn(x):
        return jnp.tanh(A @ x) + 0.1 * jnp.sum(x)
    ys = jax.vmap(fn)(jnp.asarray(np.random.default_rng(1).normal(size=(9, 3)), jnp.float32))
    kw = dict(x_shape=(3,), key=jax.random.key(0), init_scale=0.5, steps=30, optimizer="adam",
              learning_rate=0.05)
    batch = invert_batch(fn, ys, **kw)
    rows = [invert(fn, y, **kw) for y in ys]
    out = {
        "cpu_devices": len(jax.devices("cpu")),
        "batch_devices": len(batch.x.sharding.device_set),
        "max_diff": max(float(np.max(np.abs(np.asarray(batch.x[i]) - np.asarray(r.x))))
                        for i, r in enumerate(rows)),
        "max_abs": max(float(np.max(np.abs(np.asarray(r.x)))) for r in rows),
        "mesh_1": cpu_devices.cpu_mesh(1) is not None,
        "mesh_2": cpu_devices.cpu_mesh(2) is not None,
        "reconfigured": cpu_devices.configure(3),
    }
    print("RESULT" + json.dumps(out))
    """
)


def _run(**env_extra):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", cpu_devices.ENV)
    }
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **env_extra)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def test_import_changes_nothing():
    out = _run(INVERSION_CPU_DEVICES="2")
    assert out["cpu_devices"] == 1 and out["batch_devices"] == 1
    assert out["max_diff"] <= rounding_bound(out)


def test_configure_gives_two_devices_and_batches_split_over_them():
    out = _run(INVERSION_CPU_DEVICES="2", CONFIGURE="1")
    assert out["cpu_devices"] == 2
    assert out["batch_devices"] == 2  # 9 rows: padded to 10, 5 per device
    assert out["max_diff"] <= rounding_bound(out)  # as one target at a time on one device
    assert (out["mesh_1"], out["mesh_2"]) == (False, True)  # >= 1 row per device
    assert out["reconfigured"] is False  # the backend has started: the count is fixed


def test_nothing_changes_once_jax_has_run():
    out = _run(INVERSION_CPU_DEVICES="2", RUN_JAX_FIRST="1", CONFIGURE="1")
    assert out["cpu_devices"] == 1 and out["batch_devices"] == 1
    assert out["max_diff"] <= rounding_bound(out)


def test_bad_counts_raise():
    with pytest.raises(ValueError, match="positive int"):
        cpu_devices.configure(0)
    with pytest.raises(ValueError, match="positive int"):
        cpu_devices.configure(True)
    assert cpu_devices.usable_cores() >= 1
    assert len(jax.devices("cpu")) >= 1
