"""Losses and regularizers against hand-computed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inversion import losses, regularizers
from inversion.regularizers import alpha_norm, l2_prior, tv

PRED = jnp.asarray([1.0, 2.0, -1.0, 0.5])
TARGET = jnp.asarray([0.5, 2.0, 1.0, 0.0])
EPS32 = float(np.finfo(np.float32).eps)
# Hand-computed values that are dyadic (sums of squares of halves, integers) are exact in
# float32 in any summation order, so they are compared with ==.


def test_mse_hand_computed():
    # diffs 0.5, 0, -2, 0.5 -> squares 0.25, 0, 4, 0.25 -> mean 1.125 (exact)
    assert float(losses.get_loss("mse")(PRED, TARGET)) == 1.125


def test_normalized_hand_computed():
    # ||d||^2 = 4.5, ||target||^2 = 0.25 + 4 + 1 = 5.25: exact sums, one rounded quotient
    np.testing.assert_allclose(losses.get_loss("normalized")(PRED, TARGET), 4.5 / 5.25, rtol=EPS32)
    # zero target: the denominator falls back to 1
    assert float(losses.normalized(PRED, jnp.zeros(4))) == 1 + 4 + 1 + 0.25


def test_cosine_hand_computed_and_scale_invariant():
    p, t = np.asarray(PRED, np.float64), np.asarray(TARGET, np.float64)
    expected = 1 - p @ t / (np.linalg.norm(p) * np.linalg.norm(t))
    # cos from a 4-term dot, two 4-term norms, sqrt and a quotient: |d cos| <= 16 u |cos| (u =
    # eps32 / 2); 1 - cos keeps that absolute error (|cos| <= 1)
    atol = 8 * EPS32
    np.testing.assert_allclose(losses.get_loss("cosine")(PRED, TARGET), expected, rtol=0, atol=atol)
    np.testing.assert_allclose(losses.cosine(3.0 * PRED, TARGET), expected, rtol=0, atol=atol)
    # images: all entries count, not only the last axis
    img_p, img_t = PRED.reshape(2, 2), TARGET.reshape(2, 2)
    np.testing.assert_allclose(losses.cosine(img_p, img_t), expected, rtol=0, atol=atol)
    # finite gradient at the zero vector
    assert np.all(np.isfinite(jax.grad(losses.cosine)(jnp.zeros(4), TARGET)))


def test_callable_loss_and_unknown_name():
    def l1(p, t):
        return jnp.sum(jnp.abs(p - t))

    assert losses.get_loss(l1) is l1
    with pytest.raises(ValueError, match=r"'cosine', 'mse', 'normalized'"):
        losses.get_loss("huber")
    with pytest.raises(TypeError):
        losses.get_loss(3)


def test_tv_beta2_hand_computed_hw_hwc_nhwc():
    x = jnp.asarray([[0.0, 1.0, 3.0], [2.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    # over i, j < 2: (x[i,j+1]-x[i,j])^2 + (x[i+1,j]-x[i,j])^2
    # (0,0): 1 + 4 = 5; (0,1): 4 + 1 = 5; (1,0): 0 + 1 = 1; (1,1): 4 + 4 = 8 -> 19
    r = tv(0.5)
    assert float(r(x)) == 0.5 * 19  # integer squares: exact
    assert float(r(x[:, :, None])) == 0.5 * 19  # HWC
    two_channels = jnp.stack([x, 2 * x], axis=-1)[None]  # NHWC: channel 2 has 4x the penalty
    assert float(r(two_channels)) == 0.5 * 19 * 5


def test_tv_beta1_and_flat_gradient():
    x = jnp.asarray([[0.0, 3.0], [4.0, 0.0]])
    # single site: sqrt(3^2 + 4^2) = 5, as (25 + eps)^0.5 by pow = exp(0.5 log 25):
    # <= (2 + 0.5 ln 25) eps32 relative
    np.testing.assert_allclose(tv(1.0, beta=1.0)(x), 5.0, rtol=(2 + 0.5 * np.log(25)) * EPS32)
    g = jax.grad(tv(1.0, beta=1.0))(jnp.zeros((3, 3)))
    assert np.all(np.isfinite(g))
    with pytest.raises(ValueError, match="HW, HWC or NHWC"):
        tv(1.0)(jnp.ones(5))


def test_alpha_norm_and_l2_prior_hand_computed():
    x = jnp.asarray([1.0, -2.0, 0.5])
    # |x|^6 by float32 pow (exp(6 log|x|)): <= (2 + 6 ln 2) eps32 per (positive) term, then
    # a 3-term sum and the weight: 2 more roundings
    np.testing.assert_allclose(
        alpha_norm(0.1, alpha=6)(x), 0.1 * (1 + 64 + 0.5**6), rtol=(3 + 6 * np.log(2)) * EPS32
    )
    np.testing.assert_allclose(
        alpha_norm(1.0, alpha=2)(x), 1 + 4 + 0.25, rtol=(3 + 2 * np.log(2)) * EPS32
    )
    prior = jnp.asarray([1.0, 0.0, 0.0])
    assert float(l2_prior(2.0, prior)(x)) == 2.0 * (0 + 4 + 0.25)  # dyadic: exact


def test_composition_and_validation():
    x = jnp.ones((4, 4))
    regs = regularizers.as_tuple((tv(1.0), alpha_norm(0.5, alpha=2)))
    # tv of a constant is exactly 0; pow(1, 2) = exp(2 log 1) = 1 exactly
    assert float(regularizers.total(regs, x)) == 0.0 + 0.5 * 16
    assert regularizers.as_tuple(tv(1.0)) == (tv(1.0),)  # one prior alone is accepted
    assert regularizers.as_tuple(None) == ()
    with pytest.raises(TypeError):
        regularizers.as_tuple((tv(1.0), "tv"))
    with pytest.raises(ValueError, match="weight"):
        tv(-1.0)
    with pytest.raises(ValueError, match="alpha"):
        alpha_norm(1.0, alpha=0.5)
    with pytest.raises(ValueError, match="prior"):
        l2_prior(1.0, jnp.asarray([np.nan]))


def test_regularizers_under_jit_equal_eager():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 5, 2)), jnp.float32)
    for r in (tv(0.3), tv(0.3, beta=1.5), alpha_norm(0.2), l2_prior(0.7, jnp.zeros_like(x))):
        # fused vs op by op: the sum of <= 50 non-negative terms may be reordered
        # (<= 50 u relative each way, u = eps32 / 2)
        np.testing.assert_allclose(jax.jit(lambda z, r=r: r(z))(x), r(x), rtol=x.size * EPS32)
