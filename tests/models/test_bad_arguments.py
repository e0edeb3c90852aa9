"""Bad arguments to models.layers, models.seed_unet and inversion.cpu_devices: errors that name
the argument, the value and what was expected (conv2d(stride=0) used to be an MLIR verifier
error, seed_unet('abc') an nnx 'Invalid rng value', INVERSION_CPU_DEVICES=0 an unnamed count)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
from inversion import cpu_devices
from models import layers

X = jnp.ones((1, 4, 4, 1))


@pytest.mark.parametrize("stride", [0, -1, 1.5, True, "2"])
def test_conv_strides_must_be_positive_ints(stride):
    with pytest.raises(ValueError, match=rf"stride must be a positive int, got {stride!r}"):
        layers.conv2d(X, jnp.ones((3, 3, 1, 2)), stride=stride)
    with pytest.raises(ValueError, match=rf"stride must be a positive int, got {stride!r}"):
        layers.conv_transpose2d(X, jnp.ones((2, 2, 1, 2)), stride=stride)


def test_numpy_int_stride_still_works():
    y = layers.conv2d(X, jnp.ones((3, 3, 1, 2)), stride=np.int64(2), padding="VALID")
    assert y.shape == (1, 1, 1, 2)


@pytest.mark.parametrize(
    "key, error, match",
    [
        ("abc", TypeError, r"key must be an int seed or a jax.random key.*got str 'abc'"),
        (1.5, TypeError, r"key must be an int seed.*got float 1.5"),
        (True, TypeError, r"key must be an int seed.*bool True"),
        (jnp.zeros(2), TypeError, r"key must be .*got an array of dtype float32 and shape \(2,\)"),
        (jax.random.split(jax.random.key(0), 2), ValueError, r"key must be ONE.*shape \(2,\)"),
    ],
)
def test_seed_unet_names_a_bad_key(key, error, match):
    with pytest.raises(error, match=match):
        models.seed_unet(key)


def test_seed_unet_accepts_int_numpy_int_and_keys():
    def first(model):
        return np.asarray(jax.tree.leaves(nnx.state(model))[0])

    ref = first(models.seed_unet(3))
    for key in (np.int64(3), jax.random.key(3)):
        np.testing.assert_array_equal(first(models.seed_unet(key)), ref)
    models.seed_unet(jax.random.PRNGKey(3))  # a raw key is accepted as nnx accepts it


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_inversion_cpu_devices_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(cpu_devices.ENV, value)
    with pytest.raises(ValueError, match=rf"{cpu_devices.ENV} must be a positive int.*{value!r}"):
        cpu_devices.requested()
    with pytest.raises(ValueError, match=cpu_devices.ENV):
        cpu_devices.configure()


def test_good_inversion_cpu_devices(monkeypatch):
    monkeypatch.setenv(cpu_devices.ENV, " 3 ")
    assert cpu_devices.requested() == 3
    monkeypatch.setenv(cpu_devices.ENV, "")
    assert cpu_devices.requested() is None


def test_bad_count_names_the_argument():
    with pytest.raises(ValueError, match=r"n \(the number of CPU devices\) must be a positive int"):
        cpu_devices.configure(0)
