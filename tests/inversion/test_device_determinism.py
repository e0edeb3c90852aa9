"""One versus two CPU devices: bitwise identical results for a convolutional ``fn`` (7 rows:
on two devices padded to 8, 4 per device; on one device all 7).

One subprocess with ``INVERSION_CPU_DEVICES=2`` runs the batch on its default mesh (both
devices) and on a mesh of its first device only, which is the program a one-device process
runs (rows on one device, nothing padded), at the cost of one JAX start instead of two.

Not bitwise for every ``fn``: XLA:CPU's small matrix products round differently for different
row counts (``vmap(lambda x: A @ x)`` on 2 or 4 rows differs in the last bit from the same rows
inside a batch of 8, one device, jaxlib 0.10), so a dense ``fn`` split over two devices agrees
with one device to float32 rounding only; tests/inversion/test_cpu_devices.py checks that case
with a tolerance.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    from inversion import cpu_devices
    cpu_devices.configure()  # the explicit call: importing inversion changes nothing
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from inversion.engine import invert_batch
    from models import layers

    rng = np.random.default_rng(0)
    K = jnp.asarray(rng.normal(size=(3, 3, 1, 2)) / 3, jnp.float32)

    def conv(x):  # one 6x6 image -> relu(conv) -> 2x2 max pool
        return layers.max_pool2d(layers.relu(layers.conv2d(x[None], K)))[0]

    images = jnp.asarray(rng.uniform(size=(7, 6, 6, 1)), jnp.float32)
    kw = dict(x_shape=(6, 6, 1), key=jax.random.key(1), steps=12, optimizer="adam",
              learning_rate=0.05)
    runs = {"two": invert_batch(conv, jax.vmap(conv)(images), **kw),
            "one": invert_batch(conv, jax.vmap(conv)(images),
                                mesh=Mesh(np.array(jax.devices("cpu")[:1]), ("d",)), **kw)}
    out = {"devices": np.asarray(len(jax.devices("cpu")))}
    for name, res in runs.items():
        out[name + "_split_over"] = np.asarray(len(res.x.sharding.device_set))
        for field in ("x", "history", "loss", "residual", "steps", "status_code"):
            out[name + "." + field] = np.asarray(getattr(res, field))
    np.savez(sys.argv[1], **out)
    """
)


def test_one_and_two_cpu_devices_give_bitwise_identical_results(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), INVERSION_CPU_DEVICES="2")
    path = tmp_path / "out.npz"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = dict(np.load(path))
    assert int(out["devices"]) == 2
    assert (int(out["one_split_over"]), int(out["two_split_over"])) == (1, 2)
    for field in ("x", "history", "loss", "residual", "steps", "status_code"):
        one, two = out["one." + field], out["two." + field]
        assert one.dtype == two.dtype, field
        np.testing.assert_array_equal(one, two, err_msg=field)  # bitwise
    assert np.all(out["two.history"][:, -1] < out["two.history"][:, 0])  # it did optimise
