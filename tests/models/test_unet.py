"""U-Net structure: the seed network exactly, every configuration, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models

SEED_SHAPES = {  # for a 32×32×1 input, batch 2
    "enc1": (2, 32, 32, 16),
    "pool1": (2, 16, 16, 16),
    "enc2": (2, 16, 16, 32),
    "pool2": (2, 8, 8, 32),
    "bottleneck": (2, 8, 8, 64),
    "up2": (2, 16, 16, 32),
    "cat2": (2, 16, 16, 64),
    "dec2": (2, 16, 16, 32),
    "up1": (2, 32, 32, 16),
    "cat1": (2, 32, 32, 32),
    "out": (2, 32, 32, 1),
}
SEED_PARAM_SHAPES = [  # (kernel HWIO, bias) per layer, forward order
    ((3, 3, 1, 16), (16,)),
    ((3, 3, 16, 32), (32,)),
    ((3, 3, 32, 64), (64,)),
    ((2, 2, 64, 32), (32,)),
    ((3, 3, 64, 32), (32,)),
    ((2, 2, 32, 16), (16,)),
    ((3, 3, 32, 1), (1,)),
]


def test_seed_unet_parameter_count_and_layer_shapes():
    model = models.seed_unet(0)
    assert models.count_parameters(model) == models.SEED_UNET_PARAMETERS == 52_337
    assert models.layer_names(model) == list(SEED_SHAPES)
    shapes = jax.eval_shape(model.features, jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32))
    assert {k: v.shape for k, v in shapes.items()} == SEED_SHAPES
    named = model.conv_layers()
    assert list(named) == [
        "enc1.conv1",
        "enc2.conv1",
        "bottleneck.conv1",
        "up2",
        "dec2.conv1",
        "up1",
        "out",
    ]
    convs = list(named.values())
    assert [(c.kernel.shape, c.bias.shape) for c in convs] == SEED_PARAM_SHAPES
    assert model.decoders[1] is None  # the top level goes straight to the output conv


def test_seed_unet_forward_matches_hand_written_simple_unet():
    from models import layers as L

    model = models.seed_unet(3)
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1))
    e1c, e2c, bc = model.encoders[0].convs[0], model.encoders[1].convs[0], model.bottleneck.convs[0]
    u2, d2c, u1, oc = model.ups[0], model.decoders[0].convs[0], model.ups[1], model.out

    def conv(c, x):
        return L.conv2d(x, c.kernel[...], c.bias[...])

    def up(u, x):
        return L.conv_transpose2d(x, u.kernel[...], u.bias[...])

    e1 = L.relu(conv(e1c, x))
    e2 = L.relu(conv(e2c, L.max_pool2d(e1)))
    b = L.relu(conv(bc, L.max_pool2d(e2)))
    d2 = L.relu(conv(d2c, jnp.concatenate([up(u2, b), e2], -1)))
    out = conv(oc, jnp.concatenate([up(u1, d2), e1], -1))
    np.testing.assert_array_equal(model(x), out)  # the same layer calls on the same arrays


@pytest.mark.parametrize(
    "config",
    [
        dict(convs_per_block=2, pool="avg", up="bilinear"),
        dict(pool="stride", skips=False),
        dict(features=(4, 8, 8, 16), in_channels=3, out_channels=2),
        dict(features=(4, 8), skips=False, up="bilinear"),
    ],
)
def test_unet_configurations(config):
    model = models.UNet(**config, rngs=nnx.Rngs(0))
    c_in = config.get("in_channels", 1)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, c_in))
    acts = model.features(x)
    names = models.layer_names(model)
    assert list(acts) == names and names[-1] == "out"
    assert acts["out"].shape == (2, 16, 16, config.get("out_channels", 1))
    assert ("pool1" in names) == (config.get("pool", "max") != "stride")
    assert ("cat1" in names) == config.get("skips", True)
    assert ("dec1" in names) == (config.get("convs_per_block", 1) == 2)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in acts.values())


def test_unet_bad_input_and_config():
    model = models.seed_unet()
    with pytest.raises(ValueError, match="rank 4"):
        model(jnp.ones((32, 32, 1)))
    with pytest.raises(ValueError, match="input channels"):
        model(jnp.ones((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="divisible by 2"):
        model(jnp.ones((1, 30, 30, 1)))
    with pytest.raises(ValueError, match="floating"):
        model(jnp.ones((1, 32, 32, 1), jnp.int32))
    for bad, match in [
        (dict(pool="median"), "unknown pool 'median'"),
        (dict(up="nearest"), "unknown up 'nearest'"),
        (dict(convs_per_block=3), "convs_per_block"),
        (dict(features=(16,)), "features"),
        (dict(in_channels=0), "in_channels"),
    ]:
        with pytest.raises(ValueError, match=match):
            models.UNet(**bad, rngs=nnx.Rngs(0))
