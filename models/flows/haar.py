"""Orthogonal Haar downsampling (i-RevNet / iUNets' invertible downsampling)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from models.flows.bijector import Bijector, positive_int
from models.flows.squeeze import depth_to_space, space_to_depth

#: Rows: the low-pass (LL) and the three detail filters (LH, HL, HH) on the block
#: (a, b, c, d) = (x[2i, 2j], x[2i, 2j+1], x[2i+1, 2j], x[2i+1, 2j+1]).
HAAR = 0.5 * np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], np.float32)


class HaarDownsampling(Bijector):
    """One level of the 2-D Haar transform per channel: each 2×2 block ``(a, b, c, d)`` of
    channel ``k`` becomes

        LL = (a + b + c + d)/2,  LH = (a − b + c − d)/2,  HL = (a + b − c − d)/2,
        HH = (a − b − c + d)/2,

    stored as channels ``[LL of all c, LH of all c, HL of all c, HH of all c]`` (the low-pass
    first, so a channel split keeps the coarse image together). The 4×4 matrix ``H`` is
    orthogonal and symmetric (``H Hᵀ = I``), so ``log|det| = 0`` and the inverse applies ``Hᵀ``.
    Height and width must be even (``ValueError`` otherwise). A NaN spreads over the four
    outputs of its block.
    """

    downsampling = 2.0
    spatial_multiple = 2

    def __init__(self, channels: int):
        self.channels = positive_int("channels", channels)
        self.out_channels = 4 * channels

    def _forward_and_log_det(self, x):
        b, h2, w2, _ = (s := space_to_depth(x)).shape
        blocks = s.reshape(b, h2, w2, 4, self.channels)  # (di, dj) major: a, b, c, d
        y = jnp.einsum("kq,bhwqc->bhwkc", jnp.asarray(HAAR, x.dtype), blocks)
        return y.reshape(b, h2, w2, 4 * self.channels), jnp.zeros((b,), x.dtype)

    def _inverse_and_log_det(self, y):
        b, h2, w2, _ = y.shape
        coeffs = y.reshape(b, h2, w2, 4, self.channels)
        blocks = jnp.einsum("kq,bhwkc->bhwqc", jnp.asarray(HAAR, y.dtype), coeffs)
        x = depth_to_space(blocks.reshape(b, h2, w2, 4 * self.channels))
        return x, jnp.zeros((b,), y.dtype)
