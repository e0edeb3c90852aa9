"""Activation normalisation (Glow, Kingma & Dhariwal 2018) with data-dependent init."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.flows.bijector import Bijector, positive_int


class ActNorm(Bijector):
    """Per-channel affine map; zeros at construction (the identity).

        y = (x − bias)·exp(log_scale),   x = y·exp(−log_scale) + bias,
        log|det ∂y/∂x| = H·W·Σ_c log_scale   (minus that for the inverse).

    Data-dependent init (:meth:`initialize` with a batch ``x``): ``bias = mean_c(x)``,
    ``log_scale = −log(std_c(x) + 1e-6)`` over batch and pixels, so the output of that batch
    has zero mean and unit variance per channel.

    Elementwise: a NaN or inf entry of ``x`` stays in that entry of ``y`` (not checked here);
    the log-det does not depend on ``x``. :meth:`initialize` refuses a batch with a NaN or inf
    entry, or whose statistics overflow (``ValueError``), rather than set NaN parameters.
    """

    def __init__(self, channels: int, *, rngs: nnx.Rngs | None = None):
        del rngs  # no random parameters; accepted for a uniform constructor signature
        self.channels = self.out_channels = positive_int("channels", channels)
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.log_scale = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def _log_det(self, x):
        b, h, w, _ = x.shape
        return jnp.full((b,), h * w * jnp.sum(self.log_scale[...]), x.dtype)

    def _forward_and_log_det(self, x):
        return (x - self.bias[...]) * jnp.exp(self.log_scale[...]), self._log_det(x)

    def _inverse_and_log_det(self, y):
        return y * jnp.exp(-self.log_scale[...]) + self.bias[...], -self._log_det(y)

    def _initialize(self, x):
        mean = jnp.mean(x, axis=(0, 1, 2))
        std = jnp.std(x, axis=(0, 1, 2))
        if not isinstance(std, jax.core.Tracer):
            bad = ~(np.isfinite(np.asarray(mean)) & np.isfinite(np.asarray(std)))
            if bad.any():  # e.g. an overflowing batch (its variance exceeds float32)
                raise ValueError(
                    f"ActNorm.initialize: the batch's mean or standard deviation is not finite "
                    f"in channels {np.nonzero(bad)[0].tolist()} (largest |x| "
                    f"{float(np.max(np.abs(np.asarray(x)))):.3g}); expected a batch whose "
                    "statistics are finite, or the parameters would be NaN or inf"
                )
        self.bias[...] = mean.astype(self.bias[...].dtype)
        self.log_scale[...] = -jnp.log(std + 1e-6).astype(self.log_scale[...].dtype)
        return self._forward_and_log_det(x)[0]
