"""Pooling analysis: Jacobian rank, switches, unpooling and preimage projections."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inversion.analysis.pooling import (
    avg_unpool,
    max_pool_with_switches,
    max_unpool,
    pooling_loss,
    project_to_max_pool_preimage,
)

EPS64 = float(np.finfo(np.float64).eps)


def _reduce_window(x, k, op):
    """Independent pooling through lax.reduce_window."""
    init, fn = (-jnp.inf, jax.lax.max) if op == "max" else (0.0, jax.lax.add)
    y = jax.lax.reduce_window(x, init, fn, (1, k, k, 1), (1, k, k, 1), "VALID")
    return y if op == "max" else y / (k * k)


@pytest.mark.parametrize("k,h,c", [(2, 4, 2), (3, 6, 1), (2, 6, 3)])
def test_jacobian_rank_is_number_of_windows(k, h, c):
    x = jnp.asarray(np.random.default_rng(k + h).normal(size=(1, h, h, c)), jnp.float32)
    windows = (h // k) ** 2 * c
    for op in ("max", "avg"):
        loss = pooling_loss(lambda v, op=op: _reduce_window(v, k, op), x, window=k)
        assert loss.rank == windows
        assert loss.n_windows == windows and loss.n_in == h * h * c
        assert loss.nullity == loss.n_in - windows
        # (1 - 1/k^2) n in float64: three roundings
        assert loss.nullity == pytest.approx(loss.expected_nullity, rel=2 * EPS64)
        assert loss.free_per_window == k * k - 1
        assert loss.switch_bits == windows * math.log2(k * k)  # the same float64 expression


def test_switches_and_unpooling_on_the_ramp():
    x = jnp.arange(1.0, 17.0).reshape(1, 4, 4, 1)
    y, sw = max_pool_with_switches(x, 2)
    np.testing.assert_array_equal(y[0, ..., 0], [[6, 8], [14, 16]])
    np.testing.assert_array_equal(sw, 3)  # bottom-right of each window
    np.testing.assert_array_equal(y, _reduce_window(x, 2, "max"))
    up = max_unpool(y, window=2, switches=sw, fill="zero")
    expected = np.zeros((4, 4))
    expected[1::2, 1::2] = [[6, 8], [14, 16]]
    np.testing.assert_array_equal(up[0, ..., 0], expected)
    nearest = max_unpool(y, window=2, fill="max")
    np.testing.assert_array_equal(nearest[0, ..., 0], np.kron([[6, 8], [14, 16]], np.ones((2, 2))))
    # every unpooling is an exact preimage of y
    for rec in (up, nearest, max_unpool(y, window=2, switches=sw, fill="max")):
        np.testing.assert_array_equal(_reduce_window(rec, 2, "max"), y)


def test_avg_unpool_is_the_pseudo_inverse():
    k, shape = 2, (1, 4, 6, 2)
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    n = x.size
    A = jax.jacfwd(lambda v: _reduce_window(v.reshape(shape), k, "avg").ravel())(jnp.zeros(n))
    y = _reduce_window(x, k, "avg")
    # avg_unpool copies y exactly; A (entries 0, 1/4: exact) has orthogonal rows, cond 1, so
    # its float64 pinv applied to y is off by ~ n eps64 max|y|
    np.testing.assert_allclose(
        avg_unpool(y, window=k).ravel(),
        np.linalg.pinv(A) @ y.ravel(),
        rtol=0,
        atol=16 * n * EPS64 * np.abs(y).max(),
    )


def test_random_switch_roundtrip():
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype(np.float32)
    y, sw = max_pool_with_switches(x, 3)
    up = np.asarray(max_unpool(y, window=3, switches=sw))
    kept = up != 0
    np.testing.assert_array_equal(up[kept], x[kept])  # the maxima come back in place
    assert int(kept.sum()) == y.size


def _brute_projection(w, yv, switch=None):
    """Nearest point with max == yv for one small window, by enumerating the face index."""
    best = None
    for j in range(w.size) if switch is None else [switch]:
        z = np.minimum(w, yv)
        z[j] = yv
        if best is None or np.sum((z - w) ** 2) < np.sum((best - w) ** 2):
            best = z
    return best


def test_projection_onto_max_pool_preimage_is_nearest():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 4, 4, 2)).astype(np.float32)
    y = rng.normal(size=(1, 2, 2, 2)).astype(np.float32)
    sw = rng.integers(0, 4, size=y.shape)
    for switches in (None, sw):
        z = np.asarray(project_to_max_pool_preimage(x, y, window=2, switches=switches))
        np.testing.assert_allclose(_reduce_window(jnp.asarray(z), 2, "max"), y, atol=0)
        for i in range(2):
            for j in range(2):
                for c in range(2):
                    w = x[0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c].ravel()
                    s = None if switches is None else int(sw[0, i, j, c])
                    ref = _brute_projection(w.copy(), y[0, i, j, c], s)
                    np.testing.assert_array_equal(  # min() and copies of y: exact
                        z[0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c].ravel(), ref
                    )


def test_bad_input_raises():
    x = jnp.zeros((1, 4, 4, 1))
    with pytest.raises(ValueError, match="window"):
        max_pool_with_switches(x, 0)
    with pytest.raises(ValueError, match="divisible"):
        max_pool_with_switches(jnp.zeros((1, 5, 4, 1)), 2)
    with pytest.raises(ValueError, match="NHWC"):
        max_pool_with_switches(jnp.zeros((4, 4)), 2)
    with pytest.raises(ValueError, match="fill"):
        max_unpool(jnp.zeros((1, 2, 2, 1)), fill="mean")
    with pytest.raises(TypeError, match="callable"):
        pooling_loss("max", x)
