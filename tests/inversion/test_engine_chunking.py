"""Automatic chunking of large batches on CPU, and the engine's static step cost."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import inversion
from inversion.cpu_devices import MIN_ROWS_PER_DEVICE
from inversion.driver import CPU_CHUNK_ROWS, Plan, chunking
from inversion.engine import invert_batch, step_cost
from inversion.losses import mse
from inversion.solvers import Optax

A = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)


def smooth(x):
    """A small nonlinear map R^3 -> R^4."""
    return jnp.tanh(A @ x) + 0.1 * x.sum() ** 2


KW = dict(solver=Optax(optax.adam(0.05)), steps=30)
PROBLEM = Plan(fn=smooth, loss=mse, regularizers=(), solver=Optax(optax.adam(0.05)), steps=30)


def _expected_chunks(rows: int) -> tuple[int, int]:
    """What the engine should pick on this CPU: at most 64 rows per CPU device per chunk,
    balanced chunks, rows split over all CPU devices when there is at least one per device."""
    ndev = len(jax.devices("cpu"))
    ndev = ndev if rows >= MIN_ROWS_PER_DEVICE * ndev else 1
    chunks = math.ceil(rows / (CPU_CHUNK_ROWS * ndev))
    return math.ceil(math.ceil(rows / chunks) / ndev) * ndev, chunks


@pytest.mark.parametrize(
    "rows,chunk,expected",
    [
        (CPU_CHUNK_ROWS, None, (CPU_CHUNK_ROWS, 1)),
        (2 * CPU_CHUNK_ROWS + 2, None, (44, 3)),  # balanced: 3 chunks of 44, not 64 + 64 + 2
        (5, 3, (3, 2)),  # one padding row
        (4, None, (4, 1)),
    ],
)
def test_chunk_sizes_are_balanced_and_bounded(rows, chunk, expected):
    assert jax.default_backend() == "cpu"
    size, n = chunking(PROBLEM, jnp.zeros((rows, 3)), chunk)  # one device: no mesh
    assert (size, n) == expected
    assert size <= (chunk or CPU_CHUNK_ROWS) and size * n >= rows


def test_auto_chunked_batch_equals_one_chunk():
    n = 2 * CPU_CHUNK_ROWS + 2  # several chunks on CPU, with padding rows
    x0 = jnp.asarray(np.random.default_rng(1).normal(size=(n, 3)), jnp.float32)
    ys = jax.vmap(smooth)(jnp.asarray(np.random.default_rng(2).normal(size=(n, 3)), jnp.float32))
    auto = invert_batch(smooth, ys, x0=x0, **KW)
    whole = invert_batch(smooth, ys, x0=x0, execution=inversion.Execution(chunk=n), **KW)
    assert auto.x.shape == (n, 3) and auto.history.shape == (n, 30)
    # Chunks of 44 rows and one chunk of 130 compile to differently vectorised float32
    # programs, so they agree to rounding, not bitwise. Error model: each of the `steps`
    # Adam updates rounds x (and the loss) at eps_32 relative to the largest magnitude in
    # play, and the two paths round independently: |a - b| <= steps * eps_32 * max|b|
    # (measured: 1.8e-6 on x with max|x| = 3.5, bound 1.3e-5).
    bound = KW["steps"] * np.finfo(np.float32).eps
    for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(whole), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind in "iubUSO":  # steps, status: exactly equal
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=0, atol=bound * max(1.0, np.abs(b).max()))


def test_step_cost_counts_all_chunks():
    n = 2 * CPU_CHUNK_ROWS + 2
    x0, ys = jnp.zeros((n, 3)), jnp.ones((n, 4))
    size, chunks = _expected_chunks(n)
    cost = step_cost(smooth, ys, x0=x0, **KW)
    assert (cost["chunk_rows"], cost["chunks"]) == (size, chunks)
    one = step_cost(smooth, ys[:size], x0=x0[:size], **KW)
    assert (one["chunk_rows"], one["chunks"]) == (size, 1)
    # the same one-chunk program counted `chunks` times: integer-valued floats, exact
    assert one["flops"] > 0 and cost["flops"] == chunks * one["flops"]
    assert cost["argument_bytes"] > 0 and cost["output_bytes"] > 0 and cost["temp_bytes"] >= 0
    with pytest.raises(ValueError, match="leading axes"):
        step_cost(smooth, ys[:3], x0=x0, **KW)
