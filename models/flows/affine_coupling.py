"""Affine coupling (RealNVP, Dinh et al. 2017) with a checkerboard or a channel mask."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from models.flows import masks
from models.flows.bijector import Bijector, positive_int
from models.flows.conditioner import ConvNet


class AffineCoupling(Bijector):
    """Affine coupling; the identity at init.

    Checkerboard mask ``m`` (see :mod:`models.flows.masks`) and conditioner ``NN``
    (:class:`~models.flows.conditioner.ConvNet`: three 3×3 convs, ReLU between, the last zero
    at init):

        (s_raw, t) = NN(m⊙x),   s = scale · tanh(s_raw)        (learnable per-channel scale)
        y = m⊙x + (1−m)⊙(x⊙exp(s) + t)
        log|det ∂y/∂x| = Σ_{h,w,c} (1−m)⊙s

    Channel mask (``mask='channel'``, ``x = (x_p, x_a)`` passive and active channels):

        (s_raw, t) = NN(x_p),   y_p = x_p,   y_a = x_a⊙exp(s) + t,   log|det| = Σ s.

    The passive entries pass through unchanged and ``s, t`` depend on them only, so after
    ordering the passive entries first the Jacobian is block lower-triangular with blocks I and
    diag(exp(s)): its log-determinant is the sum of the active ``s``. The inverse recomputes
    the same ``s, t`` from the unchanged passive entries and undoes the affine map exactly:

        x_a = (y_a − t)⊙exp(−s),   log|det ∂x/∂y| = −Σ s.

    ``|s| ≤ scale`` bounds how much one coupling can stretch (``exp(±scale)``).

    Non-finite input is not checked here: a NaN or inf entry, passive or not (``0 · NaN = NaN``
    in the checkerboard form), reaches the conditioner and spreads through its three 3×3 convs
    to the 7×7 neighbourhood in ``y`` (all active channels) and to that sample's log-det; other
    samples are unaffected.
    """

    def __init__(
        self,
        channels: int,
        hidden: int,
        parity: int,
        *,
        mask: str = "checkerboard",
        rngs: nnx.Rngs,
    ):
        self.channels = self.out_channels = positive_int("channels", channels)
        positive_int("hidden", hidden)
        c_in, c_act = masks.widths(mask, channels, parity)
        self.parity = parity
        self.mask_kind = mask
        self.net = ConvNet(c_in, hidden, 2 * c_act, rngs=rngs)
        self.scale = nnx.Param(jnp.ones((c_act,), jnp.float32))

    def mask(self, height: int, width: int):
        """The checkerboard ``m[i, j] = (i + j + parity) mod 2`` ``(h, w, 1)``: 1 where entries
        pass through unchanged."""
        return masks.checkerboard(height, width, self.parity)

    def _shift_and_log_scale(self, passive):
        s_raw, t = jnp.split(self.net(passive), 2, axis=-1)
        return self.scale[...] * jnp.tanh(s_raw), t

    def _forward_and_log_det(self, x):
        if self.mask_kind == "checkerboard":
            m = self.mask(*x.shape[1:3]).astype(x.dtype)
            s, t = self._shift_and_log_scale(m * x)
            y = m * x + (1 - m) * (x * jnp.exp(s) + t)
            return y, jnp.sum((1 - m) * s, axis=(1, 2, 3))
        passive, active = masks.split(x, self.parity)
        s, t = self._shift_and_log_scale(passive)
        y = masks.merge(passive, active * jnp.exp(s) + t, self.parity)
        return y, jnp.sum(s, axis=(1, 2, 3))

    def _inverse_and_log_det(self, y):
        if self.mask_kind == "checkerboard":
            m = self.mask(*y.shape[1:3]).astype(y.dtype)
            s, t = self._shift_and_log_scale(m * y)
            x = m * y + (1 - m) * ((y - t) * jnp.exp(-s))
            return x, -jnp.sum((1 - m) * s, axis=(1, 2, 3))
        passive, active = masks.split(y, self.parity)
        s, t = self._shift_and_log_scale(passive)
        x = masks.merge(passive, (active - t) * jnp.exp(-s), self.parity)
        return x, -jnp.sum(s, axis=(1, 2, 3))
