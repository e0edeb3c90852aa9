"""invert_batch over a device mesh: 8 forced host devices in a subprocess (XLA_FLAGS)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
EPS32 = float(np.finfo(np.float32).eps)
STEPS = 40  # Adam steps in SCRIPT

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from inversion.engine import invert, invert_batch

    assert jax.device_count() == 8, jax.devices()
    A = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)

    def fn(x):
        return jnp.tanh(A @ x) + 0.1 * jnp.sum(x)

    ys = jax.vmap(fn)(jnp.asarray(np.random.default_rng(1).normal(size=(16, 3)), jnp.float32))
    kw = dict(x_shape=(3,), key=jax.random.key(0), init_scale=0.5, steps=40, optimizer="adam",
              learning_rate=0.05, tol=1e-3)
    out = {}

    def compare(a, b, name):  # on host: no extra programs to compile
        pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
        floats = [(np.asarray(u, np.float64), np.asarray(v, np.float64)) for u, v in pairs
                  if np.asarray(u).dtype.kind == "f"]
        out[name + "_diff"] = max(float(np.max(np.abs(u - v))) for u, v in floats)
        out[name + "_abs"] = max(float(np.max(np.abs(v))) for _, v in floats)
        out[name + "_ints_equal"] = all(np.array_equal(u, v) for u, v in pairs
                                        if np.asarray(u).dtype.kind != "f")

    def stack(results):
        return jax.tree.map(lambda *a: np.stack([np.asarray(v) for v in a]), *results)

    # reference: one target at a time, one row on one device (no mesh)
    single = [invert(fn, y, **kw) for y in ys]
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = invert_batch(fn, ys, mesh=mesh, **kw)
    default = invert_batch(fn, ys, **kw)  # the default CPU mesh: all 8 devices as well
    compare(sharded, stack(single), "single")
    out["devices"] = len(sharded.x.sharding.device_set)
    out["default_devices"] = len(default.x.sharding.device_set)
    out["default_equal"] = all(np.array_equal(u, v) for u, v in
                               zip(jax.tree.leaves(default), jax.tree.leaves(sharded)))
    out["shard_shapes"] = sorted({tuple(s.data.shape) for s in sharded.x.addressable_shards})

    mesh2 = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
    keys = jax.random.split(kw["key"], 2)  # restart r starts from keys[r]
    sharded2 = invert_batch(fn, ys[:7], mesh=mesh2, chunk=4, restarts=2, **kw)  # 2 chunks of 8
    single2 = stack([stack([invert(fn, y, **dict(kw, key=k)) for k in keys]) for y in ys[:7]])
    compare(sharded2, single2, "single_2d")
    out["shape_2d"] = list(sharded2.x.shape)
    print("RESULT" + json.dumps(out))
    """
)


def test_invert_batch_sharded_over_eight_host_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
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
    out = json.loads(line[len("RESULT") :])
    # 8 devices x 2 rows and one row on one device are different float32 programs of the same
    # run: each of the STEPS steps rounds at eps32 relative to the largest magnitude, independently
    for name in ("single", "single_2d"):
        assert out[name + "_diff"] <= STEPS * EPS32 * max(1.0, out[name + "_abs"]), name
        assert out[name + "_ints_equal"], name  # steps and status
    assert out["devices"] == 8
    assert out["shard_shapes"] == [[2, 3]]  # 16 targets, 2 per device
    # the default mesh is the same 8-device program (only the axis name differs): bitwise
    assert out["default_devices"] == 8 and out["default_equal"]
    # 2-D mesh, restarts and chunking (7 targets x 2 restarts, chunks of 8 rows, padded)
    assert out["shape_2d"] == [7, 2, 3]
