"""Linear segmentation probes (models.probes): known answers, chance on constant input, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
from inversion import metrics
from models.probes import ProbeParams, evaluate_probe, probe_predict, train_probe


def _scenes(n, key):
    data = models.data.synthetic_scenes(jax.random.key(key), n, size=16)
    return data.images, data.masks


def test_probe_on_a_coarse_mask_feature_recovers_the_mask():
    """Known answer: channel 0 is the mask at half resolution (2x2 average, in [-1, 1]); a
    probe reading it and upsampling bilinearly segments held-out images almost perfectly (the
    only errors are on the 1-pixel boundary band the 2x2 average blurs), the noise channel gets
    a small weight."""
    _, masks = _scenes(96, 0)
    coarse = masks.reshape(96, 8, 2, 8, 2, 1).mean(axis=(2, 4))
    noise = jax.random.normal(jax.random.key(1), coarse.shape)
    feats = jnp.concatenate([2 * coarse - 1, noise], axis=-1)
    params = train_probe(feats[:64], masks[:64], steps=300, learning_rate=0.05)
    result = evaluate_probe(params, feats[64:], masks[64:])
    assert result["dice"].shape == (32,) and result["iou"].shape == (32,)
    assert result["dice_mean"] > 0.9, result["dice_mean"]
    assert abs(float(params.w[1] / params.w[0])) < 0.1  # the noise channel is ignored
    # same values as inversion.metrics at threshold 0.5 on sigmoid(z)
    z = probe_predict(params, feats[64:], (16, 16))
    p = jax.nn.sigmoid(z)
    np.testing.assert_allclose(result["dice"], metrics.dice(p, masks[64:], reduce=False), atol=1e-6)
    np.testing.assert_allclose(result["iou"], metrics.iou(p, masks[64:], reduce=False), atol=1e-6)


def test_probe_on_a_trained_models_logits_reaches_its_own_dice():
    """A probe on the output logits of a briefly trained small U-Net can at least copy them
    (w = 1, b = 0 is a probe): its held-out dice is within 0.02 of the model's own."""
    x, y = _scenes(160, 2)
    model = models.UNet(features=(4, 8), rngs=nnx.Rngs(0))
    config = models.TrainConfig(steps=60, learning_rate=1e-2, eval_every=60)
    models.train(model, (x[:128], y[:128]), config=config, progress=False)
    fn, params = models.feature_fn(model, "out")
    logits = jax.jit(fn)(params, x)
    own = float(np.mean(np.asarray(models.dice(logits[128:], y[128:]))))
    probe = train_probe(logits[:128], y[:128], steps=300, learning_rate=0.05)
    got = evaluate_probe(probe, logits[128:], y[128:])["dice_mean"]
    assert own > 0.5, own  # the model learned something
    assert got >= own - 0.02, (got, own)


def test_probe_on_a_constant_input_does_no_better_than_all_foreground():
    """Constant features give a constant logit, so the probe predicts all foreground or all
    background; its dice is at most that of the all-foreground prediction, 2|T| / (HW + |T|)
    per image (all background scores 0 on a non-empty mask)."""
    _, masks = _scenes(48, 3)
    feats = jnp.ones((48, 16, 16, 3))
    params = train_probe(feats[:32], masks[:32], steps=100)
    result = evaluate_probe(params, feats[32:], masks[32:])
    t = np.asarray(masks[32:]).reshape(16, -1).sum(axis=1)
    all_foreground = 2 * t / (256 + t)
    assert np.all(result["dice"] <= all_foreground + 1e-6)
    assert result["dice_mean"] <= all_foreground.mean() + 1e-6


def test_shapes_and_upsampling():
    params = ProbeParams(jnp.ones(3), jnp.zeros(()), jnp.zeros(3), jnp.ones(3))
    z = probe_predict(params, jnp.ones((2, 4, 4, 3)), (16, 16))
    assert z.shape == (2, 16, 16, 1)
    np.testing.assert_allclose(z, 3.0, rtol=1e-6)
    params, history = train_probe(
        jnp.ones((2, 4, 4, 3)), jnp.ones((2, 16, 16, 1)), steps=5, return_history=True
    )
    assert history.shape == (5,) and params.w.shape == (3,)
    # jit = eager
    f = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3) / 10
    eager = probe_predict(params, f, (8, 8))
    jitted = jax.jit(lambda p, f: probe_predict(p, f, (8, 8)))(params, f)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)


@pytest.mark.parametrize(
    ("features", "masks", "kwargs", "message"),
    [
        (np.ones((2, 4, 4)), np.ones((2, 8, 8, 1)), {}, r"features must be .*\(N, h, w, C\)"),
        (np.ones((2, 4, 4, 3)), np.ones((2, 8, 8)), {}, r"masks must have shape \(N, H, W, 1\)"),
        (np.ones((2, 4, 4, 3)), np.ones((3, 8, 8, 1)), {}, "differ in length: 2 vs 3"),
        (np.ones((2, 4, 4, 3)), np.full((2, 8, 8, 1), 0.5), {}, "masks must be 0 or 1"),
        (np.full((2, 4, 4, 3), np.nan), np.ones((2, 8, 8, 1)), {}, "non-finite"),
        (np.ones((2, 4, 4, 3)), np.ones((2, 8, 8, 1)), {"steps": 0}, "steps must be a positive"),
        (
            np.ones((2, 4, 4, 3)),
            np.ones((2, 8, 8, 1)),
            {"learning_rate": -1.0},
            "learning_rate must be",
        ),
    ],
)
def test_bad_arguments(features, masks, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_probe(features, masks, **kwargs)


def test_predict_rejects_wrong_channels_and_size():
    params = ProbeParams(jnp.ones(3), jnp.zeros(()), jnp.zeros(3), jnp.ones(3))
    with pytest.raises(ValueError, match="reads 3 channels, the features have 2"):
        probe_predict(params, jnp.ones((1, 4, 4, 2)), (8, 8))
    with pytest.raises(ValueError, match="out_size must be"):
        probe_predict(params, jnp.ones((1, 4, 4, 3)), (8,))
