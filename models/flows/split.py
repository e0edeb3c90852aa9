"""Factor-out / skip: a bijector applied to some of the channels only (multi-scale flows)."""

from __future__ import annotations

import jax.numpy as jnp

from models.flows.bijector import Bijector, positive_int


class SplitChannels(Bijector):
    """``x = (x_k, x_r)`` (the first ``keep`` channels and the rest); ``y = (x_k, g(x_r))``.

        log|det ∂y/∂x| = log|det ∂g/∂x_r|,   inverse  x = (y_k, g⁻¹(y_r)).

    This is Glow's factor-out (``x_k`` leaves the flow at this scale, ``g`` is the coarser
    levels) and an invertible U-Net's skip (``x_k`` waits while ``g`` goes down and up).
    ``g`` must map ``channels − keep`` channels to as many at the same spatial size.
    """

    def __init__(self, channels: int, keep: int, inner: Bijector):
        self.channels = self.out_channels = positive_int("channels", channels)
        positive_int("keep", keep)
        if keep >= channels or inner.channels != channels - keep:
            raise ValueError(
                f"SplitChannels: inner must take the {channels} - {keep} remaining channels, "
                f"got an inner bijector of {inner.channels} (keep < channels required)"
            )
        if inner.out_channels != inner.channels or inner.downsampling != 1.0:
            raise ValueError("SplitChannels: inner must keep its input's shape")
        self.keep = keep
        self.inner = inner
        self.spatial_multiple = inner.spatial_multiple

    def _forward_and_log_det(self, x):
        y, logdet = self.inner._forward_and_log_det(x[..., self.keep :])
        return jnp.concatenate([x[..., : self.keep], y], axis=-1), logdet

    def _inverse_and_log_det(self, y):
        x, logdet = self.inner._inverse_and_log_det(y[..., self.keep :])
        return jnp.concatenate([y[..., : self.keep], x], axis=-1), logdet

    def _forward(self, x):
        return jnp.concatenate([x[..., : self.keep], self.inner._forward(x[..., self.keep :])], -1)

    def _inverse(self, y):
        return jnp.concatenate([y[..., : self.keep], self.inner._inverse(y[..., self.keep :])], -1)

    def _initialize(self, x):
        y = self.inner._initialize(x[..., self.keep :])
        return jnp.concatenate([x[..., : self.keep], y], axis=-1)
