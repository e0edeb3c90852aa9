"""Additive (volume-preserving) coupling (NICE, Dinh et al. 2015; the i-RevNet block)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from models.flows import masks
from models.flows.bijector import Bijector, positive_int
from models.flows.conditioner import ConvNet


class AdditiveCoupling(Bijector):
    """Additive coupling; the identity at init (the conditioner's last conv is zero).

    Channel mask (``x = (x_p, x_a)``, see :mod:`models.flows.masks`):

        y_p = x_p,   y_a = x_a + NN(x_p),        inverse  x_a = y_a − NN(y_p),

    checkerboard mask ``m``: ``y = x + (1−m)⊙NN(m⊙x)``, inverse ``x = y − (1−m)⊙NN(m⊙y)``.
    The Jacobian is unit lower-triangular after ordering the passive entries first, so
    ``log|det ∂y/∂x| = 0`` both ways. The inverse subtracts what the forward added, computed
    from the same passive entries: exact up to the rounding of one addition.

    ``lipschitz = L`` (optional, :class:`~models.flows.conditioner.ConvNet`) spectrally
    normalises the conditioner so that ``Lip(NN) ≤ L``; then the coupling and its inverse are
    both ``(1 + L)``-Lipschitz, so an error ``δ`` in the input of the inverse reaches its output
    as at most ``(1 + L)·‖δ‖`` (a bi-Lipschitz coupling: the remedy of Behrmann et al. 2021 for
    inverses that explode after training). Unconstrained (``None``), a trained conditioner's
    slope multiplies every upstream rounding error in the inverse.

    Non-finite input is not checked here: a NaN or inf passive entry spreads through the
    conditioner's three 3×3 convs to the 7×7 neighbourhood of the active entries; an active one
    stays where it is. The log-det is 0 whatever the input.
    """

    def __init__(
        self,
        channels: int,
        hidden: int,
        parity: int,
        *,
        mask: str = "channel",
        lipschitz: float | None = None,
        rngs: nnx.Rngs,
    ):
        self.channels = self.out_channels = positive_int("channels", channels)
        positive_int("hidden", hidden)
        c_in, c_act = masks.widths(mask, channels, parity)
        self.parity = parity
        self.mask_kind = mask
        self.net = ConvNet(c_in, hidden, c_act, lipschitz=lipschitz, rngs=rngs)

    def lipschitz_bound(self):
        """A certified upper bound on the conditioner's Lipschitz constant ``Lip(NN)``."""
        return self.net.lipschitz_bound()

    def _shift(self, x):
        """``(shift, passive, active)``: the added term and the two parts of ``x``."""
        if self.mask_kind == "checkerboard":
            m = masks.checkerboard(*x.shape[1:3], self.parity, x.dtype)
            return (1 - m) * self.net(m * x), None, None
        passive, active = masks.split(x, self.parity)
        return self.net(passive), passive, active

    def _forward_and_log_det(self, x):
        shift, passive, active = self._shift(x)
        zero = jnp.zeros((x.shape[0],), x.dtype)
        if passive is None:
            return x + shift, zero
        return masks.merge(passive, active + shift, self.parity), zero

    def _inverse_and_log_det(self, y):
        shift, passive, active = self._shift(y)
        zero = jnp.zeros((y.shape[0],), y.dtype)
        if passive is None:
            return y - shift, zero
        return masks.merge(passive, active - shift, self.parity), zero
