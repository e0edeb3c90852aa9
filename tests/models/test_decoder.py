"""The learned-inverse decoder: shapes, clear errors, and what a learned inverse can reach."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import TrainConfig, layers, train
from models.decoder import Decoder


def _images(n, size, seed):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 1)).astype(np.float32)


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def test_shapes_follow_upsampling():
    dec = Decoder(64, 1, width=8, depth=1, upsample=2, rngs=nnx.Rngs(0))
    assert dec(jnp.zeros((2, 8, 8, 64))).shape == (2, 32, 32, 1)
    assert Decoder(3, 2, width=4, depth=0, rngs=nnx.Rngs(0))(jnp.zeros((1, 5, 7, 3))).shape == (
        1,
        5,
        7,
        2,
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_channels=0), "in_channels.*>= 1.*0"),
        (dict(in_channels=1, upsample=-1), "upsample"),
        (dict(in_channels=1, width=True), "width"),
        (dict(in_channels=1, depth=1.5), "depth"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Decoder(**kwargs, rngs=nnx.Rngs(0))


def test_bad_activations_raise():
    dec = Decoder(4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="4 channels.*got shape \\(1, 8, 8, 3\\)"):
        dec(jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="rank 4"):
        dec(jnp.zeros((8, 8, 4)))


CONFIG = TrainConfig(
    task="regression", steps=300, batch_size=32, learning_rate=1e-2, eval_every=300
)


def test_learns_an_injective_map():
    """phi(x) = 3x - 1 per pixel: the decoder learns its inverse, far better than the best
    constant guess (the training mean)."""
    x_train, x_test = _images(128, 8, 0), _images(32, 8, 1)
    dec = Decoder(1, 1, width=8, depth=1, rngs=nnx.Rngs(0))
    config = TrainConfig(
        task="regression", steps=600, batch_size=32, learning_rate=1e-2, eval_every=600
    )
    train(dec, (3 * x_train - 1, x_train), config=config, progress=False)
    constant = _rel(np.full_like(x_test, x_train.mean()), x_test)
    assert _rel(dec(jnp.asarray(3 * x_test - 1)), x_test) < 0.25 * constant


def test_cannot_beat_the_conditional_mean_of_a_lossy_map():
    """phi = 2x2 average pooling of i.i.d. uniform pixels: by symmetry E[x | phi(x)] repeats each
    window's mean, the best any learned inverse can do. The trained decoder gets close to that
    error and not below it."""
    x_train, x_test = _images(256, 8, 0), _images(64, 8, 1)
    pooled_train = np.asarray(layers.avg_pool2d(jnp.asarray(x_train)))
    pooled_test = layers.avg_pool2d(jnp.asarray(x_test))
    dec = Decoder(1, 1, width=8, depth=1, upsample=1, rngs=nnx.Rngs(0))
    train(dec, (pooled_train, x_train), config=CONFIG, progress=False)
    optimum = _rel(jnp.repeat(jnp.repeat(pooled_test, 2, axis=1), 2, axis=2), x_test)
    learned = _rel(dec(pooled_test), x_test)
    assert 0.95 * optimum <= learned <= 1.3 * optimum, (learned, optimum)


def test_learned_inverse_trains_once_through_the_cache(tmp_path):
    from models.decoder import learned_inverse

    inputs = _images(8, 8, 0)
    forward = lambda x: 2.0 * x  # noqa: E731  (a toy Φ: the decoder should learn x = y / 2)
    config = TrainConfig(task="regression", steps=2, batch_size=4, eval_every=2)
    kwargs = dict(name="toy", config=config, width=4, depth=0, cache_dir=tmp_path)
    first = learned_inverse(forward, inputs, **kwargs)
    assert isinstance(first, Decoder) and first(jnp.asarray(inputs)).shape == inputs.shape
    again = learned_inverse(forward, inputs, **kwargs)  # restored from the cache entry
    for a, b in zip(
        jax.tree.leaves(nnx.state(first)), jax.tree.leaves(nnx.state(again)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert len(list(tmp_path.iterdir())) == 1
    with pytest.raises(ValueError, match="task='regression'"):
        learned_inverse(forward, inputs, name="toy", config=TrainConfig(steps=2))
