"""Closed-form inverses against numpy's lstsq / pinv / null space."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inversion.closed_form import (
    affine_inverse,
    leaky_relu_inverse,
    sigmoid_inverse,
    tanh_inverse,
)

RNG = np.random.default_rng(7)


def test_square_invertible_is_exact():
    W = RNG.normal(size=(4, 4)) + 3 * np.eye(4)
    b = RNG.normal(size=4)
    x = RNG.normal(size=4)
    res = affine_inverse(W, b, W @ x + b)
    assert res.kind == "exact" and res.rank == 4 and res.null_space.shape == (4, 0)
    np.testing.assert_allclose(res.x, x, rtol=1e-5, atol=1e-6)
    assert float(res.residual) < 1e-6


def test_overdetermined_least_squares_matches_lstsq():
    W = RNG.normal(size=(7, 3))
    b = RNG.normal(size=7)
    y = RNG.normal(size=7)  # off the range: a true least-squares problem
    res = affine_inverse(W, b, y)
    expected = np.linalg.lstsq(W, y - b, rcond=None)[0]
    assert res.kind == "least_squares" and res.rank == 3
    np.testing.assert_allclose(res.x, expected, rtol=1e-5, atol=1e-6)
    resid = np.linalg.norm(W @ expected + b - y) / np.linalg.norm(y)
    np.testing.assert_allclose(res.residual, resid, rtol=1e-5)
    assert float(res.residual) > 0.01


def test_underdetermined_minimum_norm_and_null_space():
    W = RNG.normal(size=(3, 6))
    b = RNG.normal(size=3)
    y = RNG.normal(size=3)
    res = affine_inverse(W, b, y)
    assert res.kind == "minimum_norm" and res.rank == 3
    np.testing.assert_allclose(res.x, np.linalg.pinv(W) @ (y - b), rtol=1e-5, atol=1e-6)
    N = np.asarray(res.null_space, np.float64)
    assert N.shape == (6, 3)
    np.testing.assert_allclose(N.T @ N, np.eye(3), atol=1e-6)  # orthonormal
    np.testing.assert_allclose(W @ N, 0.0, atol=1e-6)  # W N = 0
    # every x + N z solves the system equally well; x is the shortest one
    z = RNG.normal(size=3)
    other = np.asarray(res.x) + N @ z
    np.testing.assert_allclose(W @ other + b, y, atol=1e-5)
    assert np.linalg.norm(other) > np.linalg.norm(res.x)


def test_rank_deficient_square_and_batched_y():
    u = RNG.normal(size=(4, 2))
    W = u @ RNG.normal(size=(2, 4))  # rank 2
    ys = RNG.normal(size=(5, 4))
    res = affine_inverse(W, None, ys)
    assert res.rank == 2 and res.kind == "minimum_norm" and res.null_space.shape == (4, 2)
    assert res.x.shape == (5, 4) and res.residual.shape == (5,)
    np.testing.assert_allclose(res.x, ys @ np.linalg.pinv(W).T, rtol=1e-4, atol=1e-5)


def test_affine_inverse_rejects_bad_shapes_and_values():
    W = np.ones((3, 2))
    with pytest.raises(ValueError, match="y has shape"):
        affine_inverse(W, np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="b has shape"):
        affine_inverse(W, np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="matrix"):
        affine_inverse(np.ones(3), None, np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        affine_inverse(W, None, np.asarray([0.0, np.nan, 1.0]))


def test_activation_inverses_round_trip():
    x = jnp.linspace(-4.0, 4.0, 17)
    np.testing.assert_allclose(sigmoid_inverse(jax.nn.sigmoid(x)), x, atol=2e-4)
    np.testing.assert_allclose(tanh_inverse(jnp.tanh(x / 2)), x / 2, atol=2e-4)
    np.testing.assert_allclose(leaky_relu_inverse(jax.nn.leaky_relu(x, 0.1), 0.1), x, atol=1e-6)
    np.testing.assert_allclose(sigmoid_inverse(jnp.asarray(0.25)), np.log(1 / 3), rtol=1e-6)
    # under jit (no range check possible there) the values agree
    np.testing.assert_allclose(jax.jit(sigmoid_inverse)(jnp.asarray([0.25])), np.log(1 / 3),
                               rtol=1e-6)


def test_activation_inverses_reject_out_of_range():
    with pytest.raises(ValueError, match=r"\(0.0, 1.0\)"):
        sigmoid_inverse(jnp.asarray([0.5, 1.0]))
    with pytest.raises(ValueError, match="tanh_inverse"):
        tanh_inverse(jnp.asarray([-1.5]))
    with pytest.raises(ValueError, match="negative_slope"):
        leaky_relu_inverse(jnp.asarray([1.0]), 0.0)
