"""Learned inverses: a convolutional decoder trained to map a network's activation back to its input.

A decoder ``g`` is fitted on pairs ``(Φ(x), x)`` of a fixed network ``Φ`` (its output, or any
named intermediate) by minimising ``E ‖g(Φ(x)) − x‖²`` over training inputs; at test time
``g(Φ(x₀))`` is one forward pass, with no per-target optimisation. Where ``Φ`` is not injective
the best ``g`` in this sense returns the conditional mean ``E[x | Φ(x)]``: an average over the
preimage, never a single exact input, so a learned inverse approximates even with unlimited
data (contrast with :mod:`models.flows`, whose inverse is exact by construction).

Structure, for an activation of shape ``(b, h, w, c_in)``:

    stem  = relu(conv3×3(a, c_in → width))
    up_k  = relu(convT 2×2/2(·, width → width))            k = 1 … upsample  (×2 each)
    body  = depth × relu(conv3×3(·, width → width))
    out   = conv3×3(·, width → out_channels)              (b, h·2^upsample, w·2^upsample, c_out)

so ``upsample`` undoes that many 2×2 poolings (e.g. 2 for the seed U-Net's bottleneck).

:func:`learned_inverse` trains one on ``(Φ(x_i), x_i)`` through the model cache.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flax import nnx

from models import layers
from models.unet import _Conv, _ConvTranspose


class Decoder(nnx.Module):
    """Convolutional learned inverse; see the module docstring for the structure."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        *,
        width: int = 32,
        depth: int = 3,
        upsample: int = 0,
        rngs: nnx.Rngs,
    ):
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("width", width, 1),
            ("depth", depth, 0),
            ("upsample", upsample, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.in_channels = in_channels
        self.stem = _Conv(in_channels, width, 3, rngs=rngs)
        self.ups = nnx.List([_ConvTranspose(width, width, rngs=rngs) for _ in range(upsample)])
        self.body = nnx.List([_Conv(width, width, 3, rngs=rngs) for _ in range(depth)])
        self.out = _Conv(width, out_channels, 3, rngs=rngs)

    def __call__(self, a):
        layers._check_image(a, "activation")
        if a.shape[-1] != self.in_channels:
            raise ValueError(
                f"activation must have {self.in_channels} channels (last axis), got shape "
                f"{tuple(a.shape)}"
            )
        h = layers.relu(self.stem(a))
        for up in self.ups:
            h = layers.relu(up(h))
        for conv in self.body:
            h = layers.relu(conv(h))
        return self.out(h)


def learned_inverse(
    forward: Callable,
    inputs,
    *,
    name: str,
    config,
    width: int = 32,
    depth: int = 3,
    upsample: int = 0,
    init_key: int = 0,
    cache_dir=None,
    progress: bool = False,
) -> Decoder:
    """A :class:`Decoder` ``g`` fitted to invert ``forward`` (``Φ``) on ``inputs``:

        g ≈ argmin_g  mean_i ‖g(Φ(x_i)) − x_i‖²,

    trained by :func:`models.train` with ``config`` (a ``TrainConfig`` with
    ``task='regression'``) from the weights of ``nnx.Rngs(params=init_key)``, through the
    model cache (:func:`models.cache.cached_train`, keyed by ``{"model": name, "init_key",
    in/out channels, width, depth, upsample}``, the config and the data): callers that use the
    same ``name``, sizes and data share one training run. ``forward`` maps a batch of inputs
    to a batch of activations (e.g. :func:`models.jitted` of a network); the decoder's input
    channels are the activation's, its output channels the inputs'.
    """
    from models.cache import cached_train

    if getattr(config, "task", None) != "regression":
        raise ValueError(
            f"config must be a TrainConfig with task='regression', got {config!r:.200}"
        )
    inputs = np.asarray(inputs)
    outputs = np.asarray(forward(inputs))
    arch = dict(
        in_channels=int(outputs.shape[-1]),
        out_channels=int(inputs.shape[-1]),
        width=width,
        depth=depth,
        upsample=upsample,
    )
    return cached_train(
        lambda: Decoder(**arch, rngs=nnx.Rngs(params=init_key)),
        {"model": name, "init_key": init_key, **arch},
        (outputs, inputs),
        config=config,
        cache_dir=cache_dir,
        progress=progress,
    ).model
