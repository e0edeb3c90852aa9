"""The inverse penalty of models.training (TrainConfig.inverse_penalty): models.inverse_gain
against its closed form for a diagonal affine map, batch_loss = task loss + the stated term,
clear errors for bad settings, and that training with it keeps the inverse's gain lower."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
from models import flows
from models.data.scenes import synthetic_scenes
from models.training import PROBE_SEED, TrainConfig, batch_loss, train

EPS32 = float(np.finfo(np.float32).eps)


def test_inverse_gain_of_a_diagonal_affine_map_matches_its_closed_form():
    """f(x) = d ⊙ x + b: J_{f⁻¹} = diag(1/d), so r = ‖v/d‖ ‖f(x)‖ / (‖v‖ ‖x‖) (float64
    reference; float32 norms of 2·16 entries round at ~16 u relative)."""
    rng = np.random.default_rng(0)
    d = rng.uniform(0.1, 3.0, (1, 4, 4, 2))
    b = rng.normal(size=(1, 4, 4, 2))
    x = rng.normal(size=(3, 4, 4, 2))
    v = rng.normal(size=(3, 4, 4, 2))
    y = d * x + b
    got = models.inverse_gain(
        lambda t: (t - jnp.asarray(b, jnp.float32)) / jnp.asarray(d, jnp.float32),
        jnp.asarray(x, jnp.float32),
        jnp.asarray(y, jnp.float32),
        jnp.asarray(v, jnp.float32),
    )

    def norm(a):
        return np.sqrt(np.sum(a**2, axis=(1, 2, 3)))

    want = norm(v / d) * norm(y) / (norm(v) * norm(x))
    np.testing.assert_allclose(got, want, rtol=64 * EPS32)


def test_batch_loss_adds_the_stated_penalty():
    flow = flows.IRevNet(1, hidden=4, levels=1, depth=2, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(flow, nnx.Param, ...)
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(1)  # off the identity, so the inverse's gain is not 1
    leaves = [a + jnp.asarray(0.3 * rng.normal(size=a.shape), jnp.float32) for a in leaves]
    flow = nnx.merge(graphdef, jax.tree.unflatten(tree, leaves), rest)
    data = synthetic_scenes(jax.random.key(0), 4, size=16)
    x, t = data.images, data.masks
    plain = TrainConfig(steps=1)
    penalised = TrainConfig(steps=1, inverse_penalty=0.5, inverse_gain=2.0)
    step = 7
    v = jax.random.normal(jax.random.fold_in(jax.random.key(PROBE_SEED), step), x.shape)
    r = models.inverse_gain(flow.inverse, x, flow(x), v)
    term = 0.5 * float(jnp.mean((r / 2.0) ** 2))
    assert term > 1e-3  # not vanishing: the comparison below tests something
    got = float(batch_loss(flow, x, t, penalised, step)) - float(batch_loss(flow, x, t, plain, 0))
    np.testing.assert_allclose(got, term, rtol=1e-4, atol=16 * EPS32)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"inverse_penalty": -1.0}, ValueError),
        ({"inverse_penalty": float("inf")}, ValueError),
        ({"inverse_gain": 0.0}, ValueError),
        ({"inverse_gain": "big"}, TypeError),
    ],
)
def test_config_rejects_bad_penalty_settings(fields, error):
    with pytest.raises(error, match=next(iter(fields))):
        TrainConfig(**fields)


def test_a_model_without_an_inverse_is_refused():
    model = models.MLP(4, (8, 4), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="inverse_penalty=1.0 needs an invertible model"):
        train(
            model,
            (jnp.zeros((4, 4)), jnp.zeros((4, 4))),
            config=TrainConfig(steps=1, batch_size=2, task="regression", inverse_penalty=1.0),
            progress=False,
        )


def test_training_with_the_penalty_keeps_the_inverse_gain_lower():
    """The same IRevNet trained 40 steps to segment, with and without the penalty (gain
    scale 1, so that it bites at this size): the mean relative gain of the inverse on held-out
    scenes ends lower with it."""
    train_set = synthetic_scenes(jax.random.key(0), 64, size=16)
    test_set = synthetic_scenes(jax.random.key(1), 16, size=16)
    v = jax.random.normal(jax.random.key(5), test_set.images.shape)
    gains = []
    for penalty in (0.0, 10.0):
        flow = flows.IRevNet(1, hidden=4, levels=1, depth=2, rngs=nnx.Rngs(0))
        config = TrainConfig(
            steps=40,
            batch_size=16,
            learning_rate=2e-2,
            eval_every=40,
            inverse_penalty=penalty,
            inverse_gain=1.0,
        )
        trained = train(flow, train_set, config=config, progress=False).model
        x = test_set.images
        gains.append(float(jnp.mean(models.inverse_gain(trained.inverse, x, trained(x), v))))
    assert gains[1] < gains[0], gains
