"""Losses in target space: ``loss(pred, target) -> scalar`` for one target.

* ``'mse'``: ``mean((Phi(x) - Phi_0)^2)``.
* ``'normalized'`` (Mahendran & Vedaldi 2015): ``||Phi(x) - Phi_0||^2 / ||Phi_0||^2``; the
  denominator is replaced by 1 when ``Phi_0 = 0``.
* ``'cosine'``: ``1 - <Phi(x), Phi_0> / (||Phi(x)|| ||Phi_0||)`` over all entries, computed by
  ``optax.losses.cosine_distance`` with a small epsilon so that a zero vector has a finite
  gradient. Insensitive to the scale of ``Phi(x)``.

Any callable ``loss(pred, target) -> scalar`` is accepted as well.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import optax
from jaxtyping import Array, Float

LossFn = Callable[[Array, Array], Array]

COSINE_EPS = 1e-12


def mse(pred: Float[Array, "..."], target: Float[Array, "..."]) -> Float[Array, ""]:
    """Mean squared error ``mean((pred - target)^2)``."""
    return jnp.mean(optax.losses.squared_error(pred, target))


def normalized(pred: Float[Array, "..."], target: Float[Array, "..."]) -> Float[Array, ""]:
    """Normalised squared error ``||pred - target||^2 / ||target||^2`` (Mahendran & Vedaldi)."""
    num = jnp.sum(optax.losses.squared_error(pred, target))
    den = jnp.sum(jnp.square(target))
    return num / jnp.where(den > 0, den, 1.0)


def cosine(pred: Float[Array, "..."], target: Float[Array, "..."]) -> Float[Array, ""]:
    """Cosine distance ``1 - cos(pred, target)`` over all entries."""
    return optax.losses.cosine_distance(jnp.ravel(pred), jnp.ravel(target), epsilon=COSINE_EPS)


LOSSES: dict[str, LossFn] = {"mse": mse, "normalized": normalized, "cosine": cosine}


def get_loss(loss: str | LossFn) -> LossFn:
    """Resolve a loss name or callable; unknown names raise ``ValueError`` listing the names."""
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(
                f"unknown loss {loss!r}; expected one of {sorted(LOSSES)} or a callable"
            )
        return LOSSES[loss]
    if not callable(loss):
        raise TypeError(
            f"loss must be a name in {sorted(LOSSES)} or a callable (pred, target) -> scalar, "
            f"got {type(loss).__name__}"
        )
    return loss
