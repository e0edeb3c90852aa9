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
EPS32, EPS64 = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)


def assert_rounded(got, ref, W):
    """affine_inverse solves in float64 (error ~ n cond(W) eps64 max|x|) and rounds the result
    once to float32 (<= eps32 / 2 relative per entry)."""
    s = np.linalg.svd(np.asarray(W, np.float64), compute_uv=False)
    s = s[s > s[0] * 1e-12]
    atol = 16 * max(np.shape(W)) * s[0] / s[-1] * EPS64 * np.abs(ref).max()
    np.testing.assert_allclose(got, ref, rtol=EPS32, atol=atol)


def test_square_invertible_is_exact():
    W = RNG.normal(size=(4, 4)) + 3 * np.eye(4)
    b = RNG.normal(size=4)
    x = RNG.normal(size=4)
    res = affine_inverse(W, b, W @ x + b)
    assert res.kind == "exact" and res.rank == 4 and res.null_space.shape == (4, 0)
    assert_rounded(res.x, x, W)
    # float64 backward error of the SVD solve: <= 16 n eps64 ||W|| ||x|| / ||y|| (measured 3e-15)
    scale = np.linalg.norm(W, 2) * np.linalg.norm(x) / np.linalg.norm(W @ x + b)
    assert float(res.residual) <= 16 * 4 * EPS64 * scale


def test_overdetermined_least_squares_matches_lstsq():
    W = RNG.normal(size=(7, 3))
    b = RNG.normal(size=7)
    y = RNG.normal(size=7)  # off the range: a true least-squares problem
    res = affine_inverse(W, b, y)
    expected = np.linalg.lstsq(W, y - b, rcond=None)[0]
    assert res.kind == "least_squares" and res.rank == 3
    assert_rounded(res.x, expected, W)
    resid = np.linalg.norm(W @ expected + b - y) / np.linalg.norm(y)
    np.testing.assert_allclose(res.residual, resid, rtol=EPS32)  # float64, rounded once
    assert float(res.residual) > 0.01


def test_underdetermined_minimum_norm_and_null_space():
    W = RNG.normal(size=(3, 6))
    b = RNG.normal(size=3)
    y = RNG.normal(size=3)
    res = affine_inverse(W, b, y)
    assert res.kind == "minimum_norm" and res.rank == 3
    assert_rounded(res.x, np.linalg.pinv(W) @ (y - b), W)
    N = np.asarray(res.null_space, np.float64)
    assert N.shape == (6, 3)
    # N is an orthonormal float64 basis rounded to float32 (|dN| <= u |N|, u = eps32 / 2):
    # |N^T N - I| <= 2 u sum_k |N_ki| |N_kj| <= eps32 and |W N| <= u ||W_i|| (Cauchy-Schwarz)
    np.testing.assert_allclose(N.T @ N, np.eye(3), rtol=0, atol=EPS32)  # orthonormal
    np.testing.assert_allclose(W @ N, 0.0, atol=EPS32 / 2 * np.linalg.norm(W, axis=1).max())
    # every x + N z solves the system equally well; x is the shortest one
    z = RNG.normal(size=3)
    other = np.asarray(res.x) + N @ z
    # the float32 roundings of x and N: <= u ||W_i|| (||x|| + sqrt(3) ||z||), plus float64
    atol = EPS32 * np.linalg.norm(W, axis=1).max() * (np.linalg.norm(res.x) + 2 * np.linalg.norm(z))
    np.testing.assert_allclose(W @ other + b, y, rtol=0, atol=atol)
    assert np.linalg.norm(other) > np.linalg.norm(res.x)


def test_rank_deficient_square_and_batched_y():
    u = RNG.normal(size=(4, 2))
    W = u @ RNG.normal(size=(2, 4))  # rank 2
    ys = RNG.normal(size=(5, 4))
    res = affine_inverse(W, None, ys)
    assert res.rank == 2 and res.kind == "minimum_norm" and res.null_space.shape == (4, 2)
    assert res.x.shape == (5, 4) and res.residual.shape == (5,)
    assert_rounded(res.x, ys @ np.linalg.pinv(W).T, W)  # cond of the rank-2 part: 2.4


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
    xn = np.asarray(x, np.float64)
    a = np.abs(xn)
    # y = f(x) is off by a few ulps (<= 2 eps32 |y| for sigmoid, tanh); the inverse amplifies
    # that by |y / f'(x)|: 1 + e^|x| for the logit, sinh|x| / 2 for artanh(tanh(x / 2)); plus
    # the inverse's own rounding (~eps32 |x|)
    err = np.abs(np.asarray(sigmoid_inverse(jax.nn.sigmoid(x)), np.float64) - xn)
    assert np.all(err <= 2 * EPS32 * (1 + np.exp(a) + a))  # measured <= 0.5 of it
    err = np.abs(np.asarray(tanh_inverse(jnp.tanh(x / 2)), np.float64) - xn / 2)
    assert np.all(err <= 2 * EPS32 * (1 + np.sinh(a) + a / 2))
    # leaky ReLU: a product then a quotient by the same float32 slope: two roundings
    np.testing.assert_allclose(
        leaky_relu_inverse(jax.nn.leaky_relu(x, 0.1), 0.1), x, rtol=EPS32, atol=0
    )
    # logit(0.25) = log(0.25 / 0.75): one rounded quotient (u / |log 1/3|) and a log (~u)
    np.testing.assert_allclose(sigmoid_inverse(jnp.asarray(0.25)), np.log(1 / 3), rtol=2 * EPS32)
    # under jit (no range check possible there) the values agree
    np.testing.assert_allclose(
        jax.jit(sigmoid_inverse)(jnp.asarray([0.25])), np.log(1 / 3), rtol=2 * EPS32
    )


def test_activation_inverses_reject_out_of_range():
    with pytest.raises(ValueError, match=r"\(0.0, 1.0\)"):
        sigmoid_inverse(jnp.asarray([0.5, 1.0]))
    with pytest.raises(ValueError, match="tanh_inverse"):
        tanh_inverse(jnp.asarray([-1.5]))
    with pytest.raises(ValueError, match="negative_slope"):
        leaky_relu_inverse(jnp.asarray([1.0]), 0.0)
