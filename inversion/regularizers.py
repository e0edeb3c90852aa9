"""Image priors added to the inversion objective: each is a callable ``x -> scalar penalty``.

The objective minimised by the engine is ``L(fn(x), y) + sum_k R_k(x)``; pass the ``R_k`` as a
tuple, e.g. ``regularizers=(tv(1e-2), alpha_norm(1e-5))``. Any callable ``x -> scalar`` works;
the classes below are ``NamedTuple``s, hence hashable, printable and free of hidden state.

* ``tv(weight, beta=2)``: ``weight * sum_{i,j,c} ((x[i,j+1,c] - x[i,j,c])^2
  + (x[i+1,j,c] - x[i,j,c])^2)^(beta/2)`` over ``i < H-1, j < W-1`` (Mahendran & Vedaldi's
  V^beta, per channel, summed over channels and images), on ``HW``, ``HWC`` or ``NHWC`` arrays.
  For ``beta < 2`` a small ``eps`` is added inside the power so the gradient is finite at flat
  regions; for ``beta = 2`` nothing is added.
* ``alpha_norm(weight, alpha=6)``: ``weight * sum |x|^alpha``.
* ``l2_prior(weight, prior)``: ``weight * ||x - prior||^2``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from inversion import checks

Regularizer = Callable[[Array], Array]


def _check_weight(weight: float) -> float:
    if not isinstance(weight, int | float) or isinstance(weight, bool):
        raise TypeError(f"weight must be a real number, got {type(weight).__name__}")
    if not weight >= 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    return float(weight)


class TotalVariation(NamedTuple):
    """``weight * sum ((dx_h)^2 + (dx_w)^2 + eps)^(beta/2)`` (Mahendran & Vedaldi V^beta)."""

    weight: float
    beta: float = 2.0
    eps: float = 1e-8

    def __call__(self, x: Float[ArrayLike, "..."]) -> Float[ArrayLike, ""]:
        if x.ndim == 2:
            x = x[None, :, :, None]
        elif x.ndim == 3:
            x = x[None]
        elif x.ndim != 4:
            raise ValueError(f"tv expects an HW, HWC or NHWC image, got shape {x.shape}")
        dw = x[:, :-1, 1:, :] - x[:, :-1, :-1, :]
        dh = x[:, 1:, :-1, :] - x[:, :-1, :-1, :]
        sq = jnp.square(dw) + jnp.square(dh)
        if self.beta == 2.0:
            return self.weight * jnp.sum(sq)
        return self.weight * jnp.sum((sq + self.eps) ** (self.beta / 2.0))


class AlphaNorm(NamedTuple):
    """``weight * sum |x|^alpha``."""

    weight: float
    alpha: float = 6.0

    def __call__(self, x: Float[ArrayLike, "..."]) -> Float[ArrayLike, ""]:
        return self.weight * jnp.sum(jnp.abs(x) ** self.alpha)


class L2Prior(NamedTuple):
    """``weight * ||x - prior||^2``."""

    weight: float
    prior: Array

    # Identity semantics (the prior is an array): hashable, so programs can be cached.
    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other

    def __call__(self, x: Float[ArrayLike, "..."]) -> Float[ArrayLike, ""]:
        return self.weight * jnp.sum(jnp.square(x - self.prior))


def tv(weight: float, beta: float = 2.0, *, eps: float = 1e-8) -> TotalVariation:
    """Total-variation prior ``V^beta`` (see module docstring); ``beta >= 1``."""
    weight = _check_weight(weight)
    if not beta >= 1.0:
        raise ValueError(f"tv beta must be >= 1, got {beta}")
    return TotalVariation(weight, float(beta), float(eps))


def alpha_norm(weight: float, alpha: float | int = 6.0) -> AlphaNorm:
    """``alpha``-norm prior ``weight * sum |x|^alpha``; ``alpha >= 1``."""
    weight = _check_weight(weight)
    if not alpha >= 1.0:
        raise ValueError(f"alpha must be >= 1, got {alpha}")
    return AlphaNorm(weight, float(alpha))


def l2_prior(weight: float, prior: Array) -> L2Prior:
    """Quadratic pull towards ``prior`` (same shape as one input): ``weight * ||x - prior||^2``."""
    weight = _check_weight(weight)
    prior = jnp.asarray(prior)
    if not bool(jnp.all(jnp.isfinite(prior))):
        raise ValueError("l2_prior: prior contains non-finite values; expected finite entries")
    return L2Prior(weight, prior)


def as_tuple(regularizers: Regularizer | Sequence[Regularizer] | None) -> tuple[Regularizer, ...]:
    """Normalise ``None``, one callable or a sequence of callables to a tuple, checking types
    (:func:`inversion.checks.as_regularizers`)."""
    return checks.as_regularizers(regularizers)


def total(regularizers: Sequence[Regularizer], x: Array) -> Array:
    """``sum_k R_k(x)`` (``0.0`` for an empty tuple)."""
    out = jnp.zeros((), dtype=x.dtype)
    for r in regularizers:
        out = out + r(x)
    return out
