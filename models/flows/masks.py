"""The two masks of the couplings: which entries pass through (the conditioner's input) and
which are transformed.

* ``'checkerboard'``: ``m[i, j] = (i + j + parity) mod 2`` (broadcast over channels); 1 where an
  entry passes through. Works for any channel count.
* ``'channel'``: the passive part is ``c // 2`` channels, the first ones for parity 0 and the
  last ones for parity 1; the other ``c − c // 2`` are transformed. Needs ``c >= 2``.
"""

from __future__ import annotations

import jax.numpy as jnp

MASKS = ("checkerboard", "channel")


def check_mask(mask: str, channels: int, parity: int) -> None:
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    if parity not in (0, 1) or isinstance(parity, bool):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")
    if mask == "channel" and channels < 2:
        raise ValueError(f"a channel mask needs at least 2 channels, got {channels}")


def widths(mask: str, channels: int, parity: int) -> tuple[int, int]:
    """``(c_in, c_act)`` after :func:`check_mask`: the conditioner's input channels and the
    transformed channels (all ``channels`` both for a checkerboard, whose mask is spatial)."""
    check_mask(mask, channels, parity)
    if mask == "checkerboard":
        return channels, channels
    c_in = passive_width(channels)
    return c_in, channels - c_in


def checkerboard(height: int, width: int, parity: int, dtype=jnp.float32):
    """``(h, w, 1)``: 1 where entries pass through unchanged."""
    i = jnp.arange(height)[:, None]
    j = jnp.arange(width)[None, :]
    return ((i + j + parity) % 2).astype(dtype)[..., None]


def passive_width(channels: int) -> int:
    return channels // 2


def split(x, parity: int):
    """``(passive, active)`` channels of ``x`` for a channel mask."""
    c = x.shape[-1]
    p = passive_width(c)
    if parity == 0:
        return x[..., :p], x[..., p:]
    return x[..., c - p :], x[..., : c - p]


def merge(passive, active, parity: int):
    """Inverse of :func:`split`."""
    parts = (passive, active) if parity == 0 else (active, passive)
    return jnp.concatenate(parts, axis=-1)
