"""Dense models and the pure forms (split, feature_fn, layer_names)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models

EPS32 = float(np.finfo(np.float32).eps)


def assert_rounding_close(a, b, terms):
    """Two float32 programs of one network (jit or vmap vs op by op) may round each layer's
    K-term sums differently; carried forward without growth (weights at init): |a - b| <=
    (sum of K over the layers) eps32 max|b|."""
    np.testing.assert_allclose(a, b, rtol=0, atol=terms * EPS32 * float(np.abs(b).max()))


def conv_terms(model, n_convs=None):
    """Sum over the first n convolutions (all: None) of the products per output entry."""
    convs = list(model.conv_layers().values())[:n_convs]
    return sum(int(np.prod(c.kernel.shape[:-1])) for c in convs)


def test_linear_is_affine():
    model = models.Linear(3, 2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (5, 3))
    w, b = np.asarray(model.kernel[...]), np.asarray(model.bias[...])
    expected = np.asarray(x, np.float64) @ w + b
    # one 3-term float32 dot product plus the bias: <= 4 u (|x| |w| + |b|), u = eps32 / 2
    bound = 2 * EPS32 * (np.abs(np.asarray(x)) @ np.abs(w) + np.abs(b))
    assert np.all(np.abs(np.asarray(model(x), np.float64) - expected) <= bound)
    assert models.layer_names(model) == ["out"]


@pytest.mark.parametrize("activation", ["linear", "sigmoid", "tanh", "relu", "leaky_relu"])
def test_mlp_layers_and_activations(activation):
    model = models.MLP(4, (8, 6, 2), activation, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(1), (3, 4))
    acts = model.features(x)
    assert list(acts) == models.layer_names(model) == ["dense1", "act1", "dense2", "act2", "out"]
    act = models.layers.activation(activation)
    # the same function on the same array: bitwise
    np.testing.assert_array_equal(acts["act1"], act(acts["dense1"]))
    np.testing.assert_array_equal(acts["out"], model.dense[2](acts["act2"]))


def test_single_sigmoid_unit():
    model = models.MLP(1, (1,), "sigmoid", activate_output=True, rngs=nnx.Rngs(0))
    x = jnp.array([[0.3]])
    z = model.features(x)["dense1"]
    np.testing.assert_array_equal(model(x), jax.nn.sigmoid(z))  # same ops, same input


def test_dense_bad_input():
    with pytest.raises(ValueError, match="unknown activation 'softplusy'"):
        models.MLP(2, (3,), "softplusy", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        models.Linear(3, 1, rngs=nnx.Rngs(0))(jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="features"):
        models.MLP(2, (), rngs=nnx.Rngs(0))


def test_split_is_pure_and_composes_with_jit_vmap_grad():
    model = models.UNet(features=(4, 8), rngs=nnx.Rngs(0))
    apply_fn, params = models.split(model)
    x = jax.random.normal(jax.random.key(2), (3, 8, 8, 1))
    ref = model(x)
    np.testing.assert_array_equal(apply_fn(params, x), ref)  # the same eager ops
    terms = conv_terms(model)
    assert_rounding_close(jax.jit(apply_fn)(params, x), ref, terms)
    per_sample = jax.vmap(lambda xi: apply_fn(params, xi[None])[0])(x)
    assert_rounding_close(per_sample, ref, terms)
    g = jax.grad(lambda x: jnp.sum(apply_fn(params, x) ** 2))(x)
    assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))
    # Changing params changes the output: the function really depends on them.
    doubled = jax.tree.map(lambda p: 2 * p, params)
    assert not np.allclose(apply_fn(doubled, x), apply_fn(params, x))


def test_feature_fn_returns_each_named_activation():
    model = models.seed_unet(1)
    x = jax.random.normal(jax.random.key(3), (1, 16, 16, 1))
    acts = model.features(x)
    convs_before = {"enc1": 1, "pool2": 2, "bottleneck": 3, "dec2": 5, "out": 7}
    for name in ("enc1", "pool2", "bottleneck", "dec2", "out"):
        fn, params = models.feature_fn(model, name)
        terms = conv_terms(model, convs_before[name])
        assert_rounding_close(jax.jit(fn)(params, x), acts[name], terms)
    with pytest.raises(ValueError, match="unknown layer 'enc9'"):
        models.feature_fn(model, "enc9")
    with pytest.raises(TypeError, match="callable flax.nnx.Module.*function"):
        models.split(lambda x: x)


def test_split_and_count_accept_any_callable_module():
    flow = models.Flow(channels=1, hidden=4, couplings=2, rngs=nnx.Rngs(0))
    apply_fn, params = models.split(flow)
    x = jnp.linspace(0.0, 1.0, 32).reshape(2, 4, 4, 1)
    np.testing.assert_array_equal(apply_fn(params, x), flow(x))  # the same eager ops
    assert models.count_parameters(flow) == sum(
        leaf.size for leaf in jax.tree.leaves(nnx.state(flow, nnx.Param))
    )
    assert models.count_parameters(models.Decoder(2, width=3, depth=0, rngs=nnx.Rngs(0))) == (
        3 * 3 * 2 * 3 + 3 + 3 * 3 * 3 * 1 + 1
    )
