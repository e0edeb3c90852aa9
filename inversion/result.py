"""The result of an inversion: recovered input, loss trace, residual and status.

``Result`` is a pytree (a frozen dataclass registered with ``jax.tree_util.register_dataclass``;
``restarts`` is static metadata), so it can be returned from ``jax.jit``,
stacked, sliced with ``jax.tree.map`` and sharded like any other array container.

Layouts (``xs`` is one input's shape):

================  ==================  ======================  ============================
field             ``invert``          ``invert_batch``        ``invert_batch``, R restarts
================  ==================  ======================  ============================
``x``             ``xs``              ``(N, *xs)``            ``(N, R, *xs)``
``history``       ``(steps,)``        ``(N, steps)``          ``(N, R, steps)``
``loss``          ``()``              ``(N,)``                ``(N, R)``
``residual``      ``()``              ``(N,)``                ``(N, R)``
``steps``         ``()`` int32        ``(N,)``                ``(N, R)``
``status_code``   ``()`` int32        ``(N,)``                ``(N, R)``
================  ==================  ======================  ============================

History convention: ``history[..., j]`` is the objective (loss plus regularizers) at the j-th
iterate ``x_j`` for ``j < steps``; every entry from ``steps`` on holds the final ``loss``, so a
history is never NaN and never shorter than the requested number of steps.

Zero gradient at the start: when every entry of ``grad J(x_0)`` is exactly 0 (a saturated
sigmoid's probabilities, every ReLU dead), no gradient-based solver can leave ``x_0``. Such a
run stops at once: ``steps`` 0, ``x = x_0``, every ``history`` entry ``J(x_0)``, status
``'zero_gradient'`` (``'converged'`` if ``J(x_0) = 0``: the start already solves the problem).
Invert logits (pre-activation outputs) rather than saturated probabilities.

Non-finite objectives: a run stops with status ``'diverged'`` at its last finite iterate. When
the objective is not finite even at the start ``x0`` (e.g. ``fn(x0)`` is NaN), there is no
finite iterate to return: ``x`` is ``x0``, ``steps`` is 0, and ``loss`` and every ``history``
entry are ``+inf`` (``residual`` too when ``fn(x0)`` is not finite). No field is ever NaN.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float, Int

MAX_STEPS = 0
CONVERGED = 1
DIVERGED = 2
STALLED = 3
ZERO_GRADIENT = 4
STATIONARY = 5
STATUS_NAMES = ("max_steps", "converged", "diverged", "stalled", "zero_gradient", "stationary")
"""Status names by code: ``max_steps`` (ran out of steps), ``converged`` (the objective
reached ``tol``, or is exactly 0 with a zero gradient at the start: the problem is solved to
the asked accuracy), ``stationary`` (the solver's first-order test held: the projected
gradient norm fell to its ``gtol``; a stationary point, which need not solve the problem:
compare ``loss`` or ``residual``), ``diverged`` (a non-finite
objective or iterate), ``stalled`` (the solver can make no further progress, e.g. its trust
region collapsed), ``zero_gradient`` (every entry of ``grad J`` is exactly 0 at the start while
``J`` is not: no gradient-based solver can move, e.g. a saturated sigmoid; the run ends after
0 steps with ``x = P(x0)``)."""


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["x", "history", "loss", "residual", "steps", "status_code"],
    meta_fields=["restarts"],
)
@dataclasses.dataclass(frozen=True)
class Result:
    """Outcome of :func:`inversion.engine.invert` or :func:`inversion.engine.invert_batch`.

    Attributes:
        x: the recovered input(s); always finite (a diverged run returns its last finite iterate).
        history: objective per step, shape ``(..., steps)`` (see the module docstring).
        loss: final objective ``L(fn(x), y) + sum_k R_k(x)`` at the returned ``x`` (``+inf``,
            never NaN, when it is not finite there; see the module docstring).
        residual: relative error in target space ``||fn(x) - y|| / ||y||`` (absolute norm when
            ``y = 0``; ``+inf`` when ``fn(x)`` is not finite). Input-space error is not known
            to the engine and is never mixed in.
        steps: number of optimiser updates actually applied.
        status_code: ``0`` max_steps, ``1`` converged (objective <= tol), ``2`` diverged,
            ``3`` stalled, ``4`` zero_gradient, ``5`` stationary (the solver's gradient test;
            names in :data:`STATUS_NAMES`).
        restarts: number of restarts along axis 1 (``0`` when there is no restart axis).
    """

    x: Float[ArrayLike, "..."]
    history: Float[ArrayLike, "... steps"]
    loss: Float[ArrayLike, "..."]
    residual: Float[ArrayLike, "..."]
    steps: Int[ArrayLike, "..."]
    status_code: Int[ArrayLike, "..."]
    restarts: int = 0

    @property
    def status(self) -> str | np.ndarray:
        """``'max_steps'``, ``'converged'``, ``'diverged'``, ``'stalled'``, ``'zero_gradient'``
        or ``'stationary'``;
        a numpy string array for batches (reads the codes back to the host: not for use under ``jit``)."""
        codes = np.asarray(self.status_code)
        names = np.asarray(STATUS_NAMES)[codes]
        return str(names) if names.ndim == 0 else names

    @property
    def converged(self) -> jax.Array:
        """Boolean array: the objective reached ``tol`` (never set by a solver's gradient test:
        that is :attr:`stationary`)."""
        return self.status_code == CONVERGED

    @property
    def stationary(self) -> jax.Array:
        """Boolean array: the solver's gradient test (``gtol``) stopped the run."""
        return self.status_code == STATIONARY

    @property
    def diverged(self) -> jax.Array:
        """Boolean array: a non-finite objective or iterate stopped the run."""
        return self.status_code == DIVERGED

    @property
    def zero_gradient(self) -> jax.Array:
        """Boolean array: the gradient was exactly zero at the start (see the module docstring)."""
        return self.status_code == ZERO_GRADIENT

    def best(self) -> Result:
        """Per target, the restart with the lowest final loss (layout of a run without restarts).

        Returns ``self`` when there is no restart axis.
        """
        if self.restarts == 0:
            return self
        return Result(
            *_pick_best(
                self.x, self.history, self.loss, self.residual, self.steps, self.status_code
            ),
            restarts=0,
        )


@jax.jit
def _pick_best(*fields: jax.Array) -> tuple[jax.Array, ...]:
    """Select along axis 1 (restarts) the entry with the lowest loss (``fields[2]``)."""
    idx = jnp.argmin(fields[2], axis=1)  # (N,)

    def pick(a: jax.Array) -> jax.Array:
        sel = idx.reshape((-1,) + (1,) * (a.ndim - 1))
        return jnp.take_along_axis(a, sel, axis=1)[:, 0]

    return tuple(pick(a) for a in fields)
