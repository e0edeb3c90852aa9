"""The inversion problem for ONE target as a pytree: ``J(x) = L(fn(x), y) + sum_k R_k(x)``.

:class:`Objective` holds ``fn``, the target ``y``, the loss ``L``, the regularizers ``R_k`` and
optional box bounds ``lo <= x <= hi``. The target and array bounds are pytree leaves; ``fn``,
the loss, the regularizers and scalar bounds are static (they are part of the tree structure and
compared by identity/value). So an objective built inside ``jax.jit``/``jax.vmap`` from a traced
target is an ordinary traced value, and a new target of the same shape reuses the same compiled
program::

    solve_many = jax.jit(jax.vmap(
        lambda y, x0: inversion.solve(inversion.Objective(fn, y, bounds=(0.0, 1.0)),
                                      solver, x0, max_steps=100)))

Nothing here reads a value back to the host, so every method is traceable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from inversion import checks
from inversion.losses import LossFn, get_loss


def _is_static_bound(b: Any) -> bool:
    return isinstance(b, int | float) and not isinstance(b, bool)


@jax.tree_util.register_pytree_node_class
class Objective:
    """``J(x) = L(fn(x), target) + sum_k R_k(x)`` over ``lo <= x <= hi`` for one target.

    Args:
        fn: pure map from one input to one output (close over the weights).
        target: the output ``y`` to match (an array, possibly traced).
        loss: ``'mse'``, ``'normalized'``, ``'cosine'`` or a callable ``(pred, target) -> scalar``.
        regularizers: ``None``, a callable ``x -> penalty`` or a tuple of them.
        bounds: ``None`` or ``(lo, hi)``: Python numbers (static) or arrays broadcastable to one
            input (leaves), with ``lo < hi`` and no NaN (checked where concrete);
            ``-inf``/``inf`` leave a side open.

    The least-squares form used by Gauss-Newton solvers exists for ``'mse'`` and
    ``'normalized'``: ``L(fn(x), y) = 1/2 ||r(x)||^2`` with ``r(x) = c (fn(x) - y)``, ``c =
    sqrt(2/m)`` (``m`` output entries) for ``'mse'`` and ``c = sqrt(2) / ||y||`` for
    ``'normalized'`` (see :meth:`least_squares_residual`).
    """

    def __init__(
        self,
        fn: Callable[[Array], Array],
        target: Float[Array, "..."],
        *,
        loss: str | LossFn = "mse",
        regularizers: Any = (),
        bounds: tuple[Any, Any] | None = None,
    ):
        checks.check_callable("fn", fn)
        checks.check_bounds_values(bounds)
        self.fn = fn
        self.target = target
        self.loss_name = loss if isinstance(loss, str) else None
        self.loss = get_loss(loss)
        self.regularizers = checks.as_regularizers(regularizers)
        self.bounds = None if bounds is None else tuple(bounds)

    # -- pytree ---------------------------------------------------------------------------
    def tree_flatten(self):
        lo, hi = (None, None) if self.bounds is None else self.bounds
        static_lo, static_hi = _is_static_bound(lo), _is_static_bound(hi)
        leaves = (
            self.target,
            None if static_lo else lo,
            None if static_hi else hi,
        )
        aux = (
            self.fn,
            self.loss_name if self.loss_name is not None else self.loss,
            self.regularizers,
            self.bounds is not None,
            float(lo) if static_lo else None,
            float(hi) if static_hi else None,
        )
        return leaves, aux

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        fn, loss, regularizers, has_bounds, static_lo, static_hi = aux
        target, lo, hi = leaves
        obj = object.__new__(cls)
        obj.fn, obj.target = fn, target
        obj.loss_name = loss if isinstance(loss, str) else None
        obj.loss = get_loss(loss)
        obj.regularizers = regularizers
        if has_bounds:
            obj.bounds = (static_lo if lo is None else lo, static_hi if hi is None else hi)
        else:
            obj.bounds = None
        return obj

    def __repr__(self) -> str:
        shape = getattr(self.target, "shape", None)
        return (
            f"Objective(fn={getattr(self.fn, '__name__', self.fn)!r}, target shape {shape}, "
            f"loss={self.loss_name or self.loss!r}, {len(self.regularizers)} regularizers, "
            f"bounds={'none' if self.bounds is None else 'box'})"
        )

    # -- maths ----------------------------------------------------------------------------
    def value(self, x: Array) -> Array:
        """``J(x) = L(fn(x), target) + sum_k R_k(x)``."""
        value = self.loss(self.fn(x), self.target)
        for r in self.regularizers:
            value = value + r(x)
        return value

    def penalty(self, x: Array) -> Array:
        """``sum_k R_k(x)`` (zero without regularizers)."""
        value = jnp.zeros((), jnp.result_type(x))
        for r in self.regularizers:
            value = value + r(x)
        return value

    def project(self, x: Array) -> Array:
        """Euclidean projection onto the box: ``clip(x, lo, hi)`` (identity without bounds)."""
        if self.bounds is None:
            return x
        return jnp.clip(x, self.bounds[0], self.bounds[1])

    def relative_residual(self, x: Array) -> Array:
        """``||fn(x) - y|| / ||y||`` (the absolute norm when ``y = 0``)."""
        pred = self.fn(x)
        err = jnp.sqrt(jnp.sum(jnp.square(pred - self.target)))
        ref = jnp.sqrt(jnp.sum(jnp.square(self.target)))
        return err / jnp.where(ref > 0, ref, 1.0)

    @property
    def has_least_squares_form(self) -> bool:
        """Whether the loss is ``1/2 ||r(x)||^2`` for a known residual ``r`` (see the class)."""
        return self.loss_name in ("mse", "normalized")

    def least_squares_residual(self, x: Array) -> Array:
        """``r(x) = c (fn(x) - y)`` with ``L(fn(x), y) = 1/2 ||r(x)||^2`` (see the class).

        Raises ``ValueError`` for a loss without that form (``'cosine'`` or a callable).
        """
        if not self.has_least_squares_form:
            raise ValueError(
                "this solver needs a least-squares loss ('mse' or 'normalized'), got "
                f"loss={self.loss_name or self.loss!r}"
            )
        pred = self.fn(x)
        diff = pred - self.target
        if self.loss_name == "mse":
            scale = math.sqrt(2.0 / max(diff.size, 1))
        else:
            den = jnp.sqrt(jnp.sum(jnp.square(self.target)))
            scale = jnp.sqrt(2.0) / jnp.where(den > 0, den, 1.0)
        return scale * diff
