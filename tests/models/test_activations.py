"""models.activations: every named intermediate from one forward pass, in forward order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models


def test_activations_match_feature_fn_on_seed_unet():
    model = models.seed_unet(0)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    acts = models.activations(model, x)
    assert list(acts) == models.layer_names(model)
    assert list(acts)[-1] == "out"
    for name, value in acts.items():
        fn, params = models.feature_fn(model, name)
        np.testing.assert_allclose(value, fn(params, x), rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(acts["out"], model(x), rtol=1e-5, atol=1e-6)
    # cat2 = concat(up2, enc2) along channels: up-path first, then the skip
    c = acts["up2"].shape[-1]
    np.testing.assert_array_equal(acts["cat2"][..., :c], acts["up2"])
    np.testing.assert_array_equal(acts["cat2"][..., c:], acts["enc2"])


@pytest.mark.parametrize(
    "model",
    [
        models.MLP(4, (8, 6, 2), "relu", rngs=nnx.Rngs(1)),
        models.Linear(4, 3, rngs=nnx.Rngs(0)),
    ],
    ids=["mlp", "linear"],
)
def test_activations_dense_models(model):
    x = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    acts = models.activations(model, x)
    assert list(acts) == models.layer_names(model)
    for name, value in acts.items():
        fn, params = models.feature_fn(model, name)
        np.testing.assert_allclose(value, fn(params, x), rtol=1e-6, err_msg=name)


def test_activations_bad_model_and_input():
    with pytest.raises(TypeError, match="features"):
        models.activations(lambda x: x, jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="channels"):
        models.activations(models.seed_unet(0), jnp.ones((1, 8, 8, 3)))
