"""invert_batch over a device mesh: 8 forced host devices in a subprocess (XLA_FLAGS)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from inversion.engine import invert_batch

    assert jax.device_count() == 8, jax.devices()
    A = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)

    def fn(x):
        return jnp.tanh(A @ x) + 0.1 * jnp.sum(x)

    ys = jax.vmap(fn)(jnp.asarray(np.random.default_rng(1).normal(size=(16, 3)), jnp.float32))
    kw = dict(x_shape=(3,), key=jax.random.key(0), init_scale=0.5, steps=40, optimizer="adam",
              learning_rate=0.05, tol=1e-3)
    out = {}

    mesh = Mesh(np.array(jax.devices()), ("data",))
    plain = invert_batch(fn, ys, **kw)
    sharded = invert_batch(fn, ys, mesh=mesh, **kw)
    def max_diff(a, b):  # on host: no extra programs to compile
        return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
                   for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    out["max_diff"] = max_diff(plain, sharded)
    out["devices"] = len(sharded.x.sharding.device_set)
    out["shard_shapes"] = sorted({tuple(s.data.shape) for s in sharded.x.addressable_shards})
    out["status_equal"] = bool(np.all(plain.status == sharded.status))

    mesh2 = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
    kw2 = dict(kw, restarts=2)
    plain2 = invert_batch(fn, ys[:8], **kw2)  # 16 rows: reuses the compiled unsharded step
    sharded2 = invert_batch(fn, ys[:7], mesh=mesh2, chunk=4, **kw2)  # 14 rows -> 2 chunks of 8
    out["max_diff_2d"] = max_diff(jax.tree.map(lambda a: a[:7], plain2), sharded2)
    out["shape_2d"] = list(sharded2.x.shape)
    print("RESULT" + json.dumps(out))
    """
)


def test_invert_batch_sharded_over_eight_host_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    out = json.loads(line[len("RESULT"):])
    assert out["max_diff"] < 1e-5
    assert out["devices"] == 8
    assert out["shard_shapes"] == [[2, 3]]  # 16 targets, 2 per device
    assert out["status_equal"]
    # 2-D mesh, restarts and chunking (7 targets x 2 restarts, chunks of 8 rows, padded)
    assert out["max_diff_2d"] < 1e-5
    assert out["shape_2d"] == [7, 2, 3]
