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

All decoders of a network train as ONE model, :class:`StackedDecoders`: its input is the
concatenation of the flattened activations, its output the channel concatenation of the
reconstructions, its target the input repeated once per layer. The loss is then
``(1/L) Σ_l mean_i ‖g_l(Φ_l(x_i)) − x_i‖²`` and the decoders share no parameter, so every
``g_l`` gets exactly its own gradient (scaled by ``1/L``, which Adam's normalisation removes up
to its ``ε``) on the same minibatches: the same training as one run per layer, but one compiled
step instead of ``L`` and one cache entry.

Each layer's activation enters its decoder scaled by ``s_l = 1 / std(Φ_l(x_train))`` (one
number per layer): the seed U-Net's logits have a standard deviation of ~18 where its first
layer's is ~0.6, and unscaled inputs that large leave a short training far from its optimum.
The scale is a reparametrisation only: after training it is folded into the stem's kernel
(``conv(s a, K) = conv(a, s K)``), so the returned decoders take the raw activation.

>>> layer_decoder_arch((8, 8, 64), (32, 32, 1))
{'in_channels': 64, 'out_channels': 1, 'width': 64, 'depth': 2, 'upsample': 2}
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.decoder import Decoder
from models.layer_fns import activations_fn
from models.training import TrainConfig

__all__ = [
    "StackedDecoders",
    "decode_layers",
    "fold_scale",
    "input_scale",
    "layer_decoder_arch",
    "train_layer_decoders",
]


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


class StackedDecoders(nnx.Module):
    """One :class:`Decoder` per activation shape, as one model (module docstring).

    ``__call__(flat)``: ``flat`` is ``(b, Σ_l h_l w_l c_l)``, the activations flattened per
    example and concatenated in the order of ``shapes``; returns ``(b, H, W, L · C_in)``, decoder
    ``l``'s reconstruction in channels ``l · C_in … (l + 1) · C_in − 1``. Decoder ``l`` is built
    from ``nnx.Rngs(params=init_key)`` on its own, so it starts from the weights a decoder of
    that layer trained alone would. ``scales``: per layer, the factor its activation is
    multiplied by before its decoder (default 1).
    """

    def __init__(
        self,
        shapes,
        input_shape,
        *,
        scales=None,
        init_key: int = 0,
        min_width: int = 16,
        max_width: int = 64,
        depth: int = 2,
    ):
        self.shapes = tuple(tuple(int(d) for d in s) for s in shapes)
        if not self.shapes:
            raise ValueError("shapes must name at least one activation shape")
        self.scales = tuple(float(v) for v in (scales or [1.0] * len(self.shapes)))
        if len(self.scales) != len(self.shapes):
            raise ValueError(f"scales must have one entry per shape, got {len(self.scales)}")
        self.decoders = nnx.List(
            [
                Decoder(
                    **layer_decoder_arch(
                        s, input_shape, min_width=min_width, max_width=max_width, depth=depth
                    ),
                    rngs=nnx.Rngs(params=init_key),
                )
                for s in self.shapes
            ]
        )

    def __call__(self, flat):
        outs, start = [], 0
        for shape, scale, decoder in zip(self.shapes, self.scales, self.decoders, strict=True):
            size = math.prod(shape)
            outs.append(decoder(scale * flat[:, start : start + size].reshape(-1, *shape)))
            start += size
        if start != flat.shape[-1]:
            raise ValueError(f"flat must have {start} features per example, got {flat.shape}")
        return jnp.concatenate(outs, axis=-1)


def input_scale(activation) -> float:
    """``1 / std`` of an activation (1 where it is constant): the decoder's input scale."""
    std = float(np.std(np.asarray(activation, np.float64)))
    return 1.0 / std if std > 0 else 1.0


def fold_scale(decoder: Decoder, scale: float) -> Decoder:
    """``decoder`` changed in place to take the raw activation ``a`` where it took
    ``scale · a``: the stem's kernel times ``scale``. Returns it."""
    decoder.stem.kernel[...] = decoder.stem.kernel[...] * scale
    return decoder


def _activations(model, names, images, batch: int = 256) -> dict[str, np.ndarray]:
    features = jax.jit(activations_fn(model, list(names)))
    parts = [features(images[i : i + batch]) for i in range(0, images.shape[0], batch)]
    return {name: np.concatenate([np.asarray(part[name]) for part in parts]) for name in names}


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
    min_width: int = 16,
    max_width: int = 64,
    depth: int = 2,
    cache_dir=None,
) -> dict[str, Decoder]:
    """``{name: g_l}``: a decoder per named layer of ``model`` (sizes from
    :func:`layer_decoder_arch`), trained on ``images`` (N, H, W, C_in) for ``steps`` Adam steps
    (cosine schedule, minibatches of ``batch_size``) on the activation times
    :func:`input_scale` (folded into the returned decoder's stem: it takes the raw activation),
    all as one :class:`StackedDecoders`
    through :func:`models.cached_train`, keyed by ``model_key`` (what identifies the frozen
    network), the layers, their sizes and the data: a second call restores them."""
    from models import cached_train  # the package's name: its home module may move

    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, H, W, C) batch, got {images.shape}")
    names = list(names)
    acts = _activations(model, names, images)
    shapes = [acts[name].shape[1:] for name in names]
    scales = [input_scale(acts[name]) for name in names]
    flat = np.concatenate([acts[name].reshape(images.shape[0], -1) for name in names], axis=1)
    sizes = dict(min_width=min_width, max_width=max_width, depth=depth)
    archs = {
        name: layer_decoder_arch(s, images.shape[1:], **sizes)
        for name, s in zip(names, shapes, strict=True)
    }
    config = TrainConfig(
        task="regression",
        steps=int(steps),
        batch_size=batch_size,
        learning_rate=learning_rate,
        schedule="cosine",
        eval_every=int(steps),
    )
    stacked = cached_train(
        lambda: StackedDecoders(
            shapes, images.shape[1:], scales=scales, init_key=init_key, **sizes
        ),
        {
            "model": "layer_decoders",
            "layers": archs,
            "input_scale": "1/std per layer, folded into the stem",
            "init_key": init_key,
            **model_key,
        },
        (flat, np.tile(images, (1, 1, 1, len(names)))),
        config=config,
        cache_dir=cache_dir,
        progress=False,
    ).model
    return {
        name: fold_scale(decoder, scale)
        for name, decoder, scale in zip(names, stacked.decoders, scales, strict=True)
    }


def decode_layers(
    decoders: dict[str, Decoder], model, images, *, clip=(0.0, 1.0)
) -> dict[str, np.ndarray]:
    """``{name: g_l(Φ_l(x))}`` for a batch ``images`` (N, H, W, C_in): each layer's activation
    of the frozen ``model`` decoded by its learned inverse, clipped to ``clip`` (the input's
    range; ``None``: not clipped). One compiled program for the forward pass and all decoders."""
    images = np.asarray(images, np.float32)
    names = list(decoders)
    features = activations_fn(model, names)
    graphdefs, states = {}, {}
    for name in names:
        graphdefs[name], states[name] = nnx.split(decoders[name])

    @jax.jit
    def run(states, x):
        acts = features(x)
        return {n: nnx.merge(graphdefs[n], states[n])(acts[n]) for n in names}

    out = jax.device_get(run(states, images))
    return {n: out[n] if clip is None else np.clip(out[n], *clip) for n in names}
