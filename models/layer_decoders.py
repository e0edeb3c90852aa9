"""Learned inverses per layer (Dosovitskiy & Brox 2016): one decoder for each named activation.

For a frozen network ``Φ`` and each named intermediate ``Φ_l`` of shape ``(h, w, c)`` for inputs
of shape ``(H, W, C_in)``, a :class:`models.decoder.Decoder` ``g_l`` is trained on pairs
``(Φ_l(x_i), x_i)`` to minimise ``mean_i ‖g_l(Φ_l(x_i)) − x_i‖²`` (``models.train``,
``task='regression'``; the model cache trains each once). Its sizes are scaled to the layer:

    upsample = log2(H / h)                 (undoes the layer's 2x2 poolings)
    width    = clip(c, min_width, max_width)
    depth    = depth

so a 16-channel layer at full resolution gets a narrow decoder and the 64-channel bottleneck at
1/4 resolution a wide one with two transposed convolutions. Where ``Φ_l`` is not injective the
best ``g_l`` returns ``E[x | Φ_l(x)]``, an average over the layer's preimage (module
:mod:`models.decoder`).

>>> layer_decoder_arch((8, 8, 64), (32, 32, 1))
{'in_channels': 64, 'out_channels': 1, 'width': 64, 'depth': 2, 'upsample': 2}
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx

from models.decoder import Decoder
from models.layer_fns import activations_fn
from models.training import TrainConfig

__all__ = ["layer_decoder_arch", "train_layer_decoders"]


def layer_decoder_arch(
    activation_shape, input_shape, *, min_width: int = 16, max_width: int = 64, depth: int = 2
) -> dict:
    """The :class:`Decoder` arguments for a layer of ``activation_shape`` (h, w, c) of inputs
    of ``input_shape`` (H, W, C_in); ``ValueError`` when ``H / h`` is not a power of two."""
    h, w, c = (int(s) for s in activation_shape)
    big_h, big_w, c_in = (int(s) for s in input_shape)
    ratio = big_h / h
    up = round(math.log2(ratio)) if ratio >= 1 else -1
    if up < 0 or 2**up * h != big_h or 2**up * w != big_w:
        raise ValueError(
            f"activation_shape {tuple(activation_shape)} is not the input {tuple(input_shape)} "
            "pooled by a power of two"
        )
    width = min(max(c, min_width), max_width)
    return dict(in_channels=c, out_channels=c_in, width=width, depth=depth, upsample=up)


def train_layer_decoders(
    model,
    names,
    images,
    *,
    steps: int,
    model_key: dict,
    batch_size: int = 32,
    learning_rate: float = 5e-3,
    init_key: int = 0,
    cache_dir=None,
) -> dict[str, Decoder]:
    """``{name: g_l}``: a decoder per named layer of ``model``, trained on ``images`` (N, H, W,
    C_in) for ``steps`` Adam steps (cosine schedule), each through :func:`models.cached_train`
    keyed by ``model_key`` (what identifies the frozen network), the layer and the sizes."""
    from models import cached_train  # the package's name: its home module may move

    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, H, W, C) batch, got {images.shape}")
    features = jax.jit(activations_fn(model, list(names)))
    acts = [features(images[i : i + 256]) for i in range(0, images.shape[0], 256)]
    config = TrainConfig(
        task="regression",
        steps=int(steps),
        batch_size=batch_size,
        learning_rate=learning_rate,
        schedule="cosine",
        eval_every=int(steps),
    )
    decoders = {}
    for name in names:
        a = np.concatenate([np.asarray(part[name]) for part in acts])
        arch = layer_decoder_arch(a.shape[1:], images.shape[1:])
        decoders[name] = cached_train(
            lambda arch=arch: Decoder(**arch, rngs=nnx.Rngs(params=init_key)),
            {"model": "layer_decoder", "layer": name, "init_key": init_key, **model_key, **arch},
            (a, images),
            config=config,
            cache_dir=cache_dir,
            progress=False,
        ).model
    return decoders
