"""Space-to-depth (the squeeze of RealNVP and Glow)."""

from __future__ import annotations

import jax.numpy as jnp

from models.flows.bijector import Bijector, positive_int


def space_to_depth(x):
    """``(b, h, w, c) -> (b, h/2, w/2, 4c)``, channel index ``(2·di + dj)·c + k``."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // 2, w // 2, 4 * c)


def depth_to_space(y):
    """Inverse of :func:`space_to_depth`."""
    b, h, w, c4 = y.shape
    c = c4 // 4
    y = y.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, 2 * h, 2 * w, c)


class Squeeze(Bijector):
    """Space-to-depth: each 2×2 block of pixels becomes one pixel with 4× the channels,

        y[i, j, (2·di + dj)·c + k] = x[2i + di, 2j + dj, k],   di, dj ∈ {0, 1},

    a permutation of the entries, so ``log|det| = 0`` and the inverse (depth-to-space) is exact.
    Height and width must be even (``ValueError`` otherwise). Entries are moved, not mixed: a
    NaN stays a single NaN.
    """

    downsampling = 2.0
    spatial_multiple = 2

    def __init__(self, channels: int):
        self.channels = positive_int("channels", channels)
        self.out_channels = 4 * channels

    def _forward_and_log_det(self, x):
        return space_to_depth(x), jnp.zeros((x.shape[0],), x.dtype)

    def _inverse_and_log_det(self, y):
        return depth_to_space(y), jnp.zeros((y.shape[0],), y.dtype)
