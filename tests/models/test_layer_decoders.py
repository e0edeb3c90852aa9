"""models.layer_decoders: decoder sizes scaled to each layer."""

from __future__ import annotations

import doctest

import pytest

from models import layer_decoders
from models.layer_decoders import layer_decoder_arch, train_layer_decoders


def test_doctest():
    result = doctest.testmod(layer_decoders)
    assert result.attempted >= 1 and result.failed == 0


def test_sizes_follow_the_layer():
    assert layer_decoder_arch((32, 32, 16), (32, 32, 1))["upsample"] == 0
    assert layer_decoder_arch((16, 16, 32), (32, 32, 1))["width"] == 32
    assert layer_decoder_arch((32, 32, 1), (32, 32, 1))["width"] == 16  # floored at min_width
    assert layer_decoder_arch((4, 4, 128), (16, 16, 3))["upsample"] == 2


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="pooled by a power of two"):
        layer_decoder_arch((12, 12, 8), (32, 32, 1))
    with pytest.raises(ValueError, match="images must be a non-empty"):
        train_layer_decoders(None, ["enc1"], [[1.0]], steps=1, model_key={})


def test_stacked_decoders_are_the_decoders_side_by_side():
    import jax
    import numpy as np
    from flax import nnx

    from models.decoder import Decoder
    from models.layer_decoders import StackedDecoders

    shapes = [(4, 4, 2), (2, 2, 3)]
    stacked = StackedDecoders(shapes, (4, 4, 1), min_width=2, max_width=4, depth=0)
    acts = [jax.random.normal(jax.random.key(i), (3, *s)) for i, s in enumerate(shapes)]
    out = stacked(np.concatenate([np.reshape(a, (3, -1)) for a in acts], axis=1))
    assert out.shape == (3, 4, 4, 2)
    for i, (s, a) in enumerate(zip(shapes, acts, strict=True)):
        alone = Decoder(
            **layer_decoder_arch(s, (4, 4, 1), min_width=2, max_width=4, depth=0),
            rngs=nnx.Rngs(params=0),
        )  # each starts from the weights it has alone
        np.testing.assert_allclose(out[..., i : i + 1], alone(a), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="flat must have 44 features"):
        stacked(np.zeros((3, 45), np.float32))


def test_joint_training_is_per_layer_training(tmp_path):
    """One stacked run trains each decoder as a run of its own would (Adam removes the 1/L),
    the cache restores it, and decode_layers returns clipped images of the input's shape."""
    import jax
    import numpy as np
    from flax import nnx

    import models
    from models.decoder import Decoder
    from models.layer_decoders import decode_layers, fold_scale, input_scale

    unet = models.UNet(features=(2, 4), rngs=nnx.Rngs(params=0))
    x = jax.random.uniform(jax.random.key(1), (8, 4, 4, 1))
    names = models.layer_names(unet)
    sizes = dict(min_width=2, max_width=4, depth=0)
    kw = dict(steps=3, batch_size=4, model_key={"net": "tiny"}, cache_dir=tmp_path, **sizes)
    decoders = train_layer_decoders(unet, names, x, **kw)
    assert list(decoders) == names
    name = "bottleneck" if "bottleneck" in names else names[1]
    a = models.activations(unet, x)[name]
    alone = Decoder(
        **layer_decoder_arch(a.shape[1:], x.shape[1:], **sizes), rngs=nnx.Rngs(params=0)
    )
    config = models.TrainConfig(
        task="regression",
        steps=3,
        batch_size=4,
        learning_rate=5e-3,
        schedule="cosine",
        eval_every=3,
    )
    scale = input_scale(a)  # trained on the scaled activation, the scale then folded in
    alone = models.train(alone, (scale * a, x), config=config, progress=False).model
    alone = fold_scale(alone, scale)
    for got, want in zip(
        jax.tree.leaves(nnx.state(decoders[name])), jax.tree.leaves(nnx.state(alone)), strict=True
    ):
        # up to Adam's eps, which the 1/L-scaled gradients feel: < 3 % of one step's 5e-3
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1.5e-4)
    again = train_layer_decoders(unet, names, x, **kw)  # restored from the cache
    np.testing.assert_array_equal(again[name].out.kernel[...], decoders[name].out.kernel[...])
    decoded = decode_layers(decoders, unet, x[:2])
    assert set(decoded) == set(names)
    for image in decoded.values():
        assert image.shape == (2, 4, 4, 1) and image.min() >= 0 and image.max() <= 1


def test_fold_scale_is_exact():
    import jax
    import numpy as np
    from flax import nnx

    from models.decoder import Decoder
    from models.layer_decoders import fold_scale

    a = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    decoder = Decoder(3, width=4, depth=1, rngs=nnx.Rngs(params=0))
    scaled = decoder(7.5 * a)
    np.testing.assert_allclose(fold_scale(decoder, 7.5)(a), scaled, rtol=1e-5, atol=1e-5)
