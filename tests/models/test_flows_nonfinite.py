"""One NaN pixel in a flow's input: Flow raises at its public entry; the single layers spread it
as their docstrings state (coupling: the 7x7 neighbourhood and that sample's log-det)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.flows import ActNorm, AffineCoupling, Chain, Flow

X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 12, 12, 1)), jnp.float32)
BAD = X.at[0, 6, 6, 0].set(jnp.nan)


def _perturbed(module):
    """A coupling whose conditioner is not zero (a fresh one is the identity)."""
    for layer in [module] if isinstance(module, AffineCoupling) else module.layers:
        if isinstance(layer, AffineCoupling):
            shape = layer.net.out.kernel[...].shape
            layer.net.out.kernel[...] = 0.1 * jax.random.normal(jax.random.key(1), shape)
    return module


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_flow_rejects_a_non_finite_pixel(value):
    flow = _perturbed(Flow(1, 8, 2, rngs=nnx.Rngs(0)))
    bad = X.at[0, 6, 6, 0].set(value)
    for method, name in [
        (flow.forward_and_log_det, "x"),
        (flow.inverse_and_log_det, "y"),
        (flow.forward, "x"),
        (flow.inverse, "y"),
        (flow.log_prob, "x"),
    ]:
        with pytest.raises(
            ValueError, match=rf"{name} has 1 NaN or inf entries \(in samples \[0\]\)"
        ):
            method(bad)
    y, logdet = flow.forward_and_log_det(X)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(logdet))


def test_under_jit_the_flow_propagates_nan_over_the_sample():
    flow = _perturbed(Flow(1, 8, 2, rngs=nnx.Rngs(0)))
    jitted = nnx.jit(lambda f, x: f.forward_and_log_det(x))
    y, logdet = jitted(flow, BAD)
    assert not np.any(np.isfinite(np.asarray(y[0])[3:10, 3:10]))  # spread around the pixel
    assert np.isnan(logdet[0])
    np.testing.assert_array_equal(y[1], jitted(flow, X)[0][1])  # the other sample is untouched


def test_layers_document_how_nan_spreads():
    coupling = _perturbed(AffineCoupling(1, 8, 0, rngs=nnx.Rngs(0)))
    y, logdet = coupling.forward_and_log_det(BAD)
    bad = ~np.isfinite(np.asarray(y[0, ..., 0]))
    rows, cols = np.nonzero(bad)
    assert bad.sum() == 49 and (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 9, 3, 9)
    assert np.isnan(logdet[0]) and np.isfinite(logdet[1])
    y, logdet = ActNorm(1).forward_and_log_det(BAD)
    assert (~np.isfinite(np.asarray(y))).sum() == 1 and np.all(np.isfinite(logdet))


def test_an_overflowing_inverse_is_refused_eagerly_and_inf_under_jit():
    """A finite y of 3e38 overflows float32 in the inverse x = y·exp(−log_scale) + bias with
    log_scale = −1 (e·3e38 > 3.4e38): eagerly a ValueError naming y (every network is a
    Chain, which checks), under jit the documented inf."""
    act = ActNorm(1)
    act.log_scale[...] = jnp.full((1,), -1.0)
    chain = Chain([act])
    huge = jnp.full((1, 4, 4, 1), 3e38, jnp.float32)
    for method in (chain.inverse, chain.inverse_and_log_det):
        with pytest.raises(ValueError, match=r"Chain.inverse: the result for the finite y has 16"):
            method(huge)
    assert np.all(np.isinf(np.asarray(jax.jit(lambda y: chain.inverse(y))(huge))))
    np.testing.assert_allclose(chain.inverse(huge / 10), np.e * 3e37, rtol=1e-6)


def test_initialize_refuses_a_batch_with_a_nan_and_keeps_its_parameters():
    for module in (ActNorm(1), Chain([ActNorm(1), ActNorm(1)])):
        before = [np.asarray(a) for a in jax.tree.leaves(nnx.state(module))]
        with pytest.raises(ValueError, match=r"initialize: x has 1 NaN or inf entries"):
            module.initialize(BAD)
        after = [np.asarray(a) for a in jax.tree.leaves(nnx.state(module))]
        for a, b in zip(before, after, strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="ActNorm.initialize: the batch's mean or standard"):
        ActNorm(1).initialize(jnp.full((2, 4, 4, 1), 3e38, jnp.float32).at[0].set(-3e38))
