"""models.per_example (the map of one example of a batch-first model) and models.jitted."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models

X = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 8, 8, 1)), jnp.float32)


def test_per_example_is_the_batch_of_one():
    net = models.MLP(6, (5, 4), "tanh", rngs=nnx.Rngs(0))
    apply_fn, params = models.split(net)
    fn = models.per_example(apply_fn, params)
    X = jnp.asarray(np.random.default_rng(1).normal(size=(3, 6)), jnp.float32)
    assert fn(X[0]).shape == (4,)
    # same program on a batch of one: bitwise equal
    np.testing.assert_array_equal(fn(X[1]), apply_fn(params, X[1:2])[0])
    # vmap over examples = the batch, up to float32 reassociation of the matrix products
    np.testing.assert_allclose(jax.vmap(fn)(X), apply_fn(params, X), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(jax.jit(fn)(X[2]), fn(X[2]))
    with pytest.raises(TypeError, match="apply_fn must be callable"):
        models.per_example(None, params)


def test_jitted_calls_the_named_method_with_the_weights_as_constants():
    flow = models.Flow(1, 4, 2, rngs=nnx.Rngs(0))
    forward, inverse = models.jitted(flow), models.jitted(flow, "inverse")
    np.testing.assert_array_equal(forward(X), jax.jit(flow.forward)(X))
    np.testing.assert_allclose(inverse(forward(X)), X, rtol=0, atol=1e-6)  # float32 round trip
    with pytest.raises(ValueError, match="no method 'invert'"):
        models.jitted(flow, "invert")
