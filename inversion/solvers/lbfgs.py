"""Projected L-BFGS: optax's L-BFGS direction, restricted to the free variables of the box, with a
projected backtracking (Armijo) line search."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jaxtyping import Array

from inversion.objective import Objective
from inversion.result import CONVERGED, STALLED
from inversion.solvers.base import RUNNING, Solver, inf_like


class LBFGSState(NamedTuple):
    memory: Any  # optax.scale_by_lbfgs state (past parameter and gradient differences)
    value: Array  # J at the last step's input (+inf before the first step)
    grad_norm: Array  # norm of the projected gradient there
    failed: Array  # the last line search found no decrease


def free_variables(objective: Objective, x: Array, direction: Array) -> Array:
    """Mask of the variables a move along ``direction`` may change: not at a bound it would
    cross (``x = lo`` with ``direction < 0``, or ``x = hi`` with ``direction > 0``)."""
    if objective.bounds is None:
        return jnp.ones(x.shape, bool)
    lo, hi = objective.bounds
    return ~(((x <= lo) & (direction < 0)) | ((x >= hi) & (direction > 0)))


def projected_gradient_norm(objective: Objective, x: Array, grad: Array) -> Array:
    """``||P(x - g) - x||``: zero exactly at a first-order stationary point of the box problem."""
    return jnp.sqrt(jnp.sum(jnp.square(objective.project(x - grad) - x)))


@dataclasses.dataclass(frozen=True)
class LBFGS(Solver):
    """Projected limited-memory BFGS.

    At ``x`` with gradient ``g``: the L-BFGS direction ``d = -H g`` (``optax.scale_by_lbfgs``,
    ``memory`` pairs), with the components that would leave the box set to zero; if it is not
    a descent direction (``g . d >= 0``) the projected steepest descent ``d = -g`` (masked the
    same way) is used. The step is ``x_t = P(x + t d)`` for the first ``t`` in
    ``1, 1/2, 1/4, ...`` (at most ``max_backtracks``) with the projected Armijo condition
    ``J(x_t) <= J(x) + c1 g . (x_t - x)``. Without bounds this is plain L-BFGS with a
    backtracking line search.

    Stops 'converged' when the projected gradient norm ``||P(x - g) - x||`` is at most
    ``gtol`` (off when ``None``) and 'stalled' when a line search finds no decrease.
    """

    memory: int = 10
    c1: float = 1e-4
    max_backtracks: int = 20
    gtol: float | None = None

    def __post_init__(self):
        if isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory < 1:
            raise ValueError(f"memory must be an int >= 1, got {self.memory!r}")
        if not 0 < self.c1 < 1:
            raise ValueError(f"c1 must lie in (0, 1), got {self.c1!r}")
        if not isinstance(self.max_backtracks, int) or self.max_backtracks < 1:
            raise ValueError(f"max_backtracks must be an int >= 1, got {self.max_backtracks!r}")

    def _direction(self):
        return optax.scale_by_lbfgs(memory_size=self.memory)

    def init(self, objective: Objective, x: Array) -> LBFGSState:
        return LBFGSState(
            memory=self._direction().init(x),
            value=inf_like(x),
            grad_norm=inf_like(x),
            failed=jnp.zeros((), bool),
        )

    def step(self, objective: Objective, x: Array, state: LBFGSState):
        value, grad = jax.value_and_grad(objective.value)(x)
        scaled, memory = self._direction().update(grad, state.memory, x)
        d = -scaled * free_variables(objective, x, -scaled)
        steepest = -grad * free_variables(objective, x, -grad)
        d = jnp.where(jnp.vdot(grad, d) < 0, d, steepest)

        def trial(t):
            x_t = objective.project(x + t * d)
            ok = objective.value(x_t) <= value + self.c1 * jnp.vdot(grad, x_t - x)
            return x_t, ok

        def cond(carry):
            k, _, _, ok = carry
            return (k < self.max_backtracks) & ~ok

        def body(carry):
            k, t, _, _ = carry
            t = 0.5 * t
            x_t, ok = trial(t)
            return k + 1, t, x_t, ok

        x_t, ok = trial(jnp.ones((), x.dtype))
        _, _, x_t, ok = lax.while_loop(
            cond, body, (jnp.ones((), jnp.int32), jnp.ones((), x.dtype), x_t, ok)
        )
        x_next = jnp.where(ok, x_t, x)
        return x_next, LBFGSState(
            memory=memory,
            value=value,
            grad_norm=projected_gradient_norm(objective, x, grad),
            failed=~ok,
        )

    def terminate(self, objective: Objective, x: Array, state: LBFGSState):
        converged = state.grad_norm <= self.gtol if self.gtol is not None else jnp.zeros((), bool)
        status = jnp.where(converged, CONVERGED, jnp.where(state.failed, STALLED, RUNNING))
        return converged | state.failed, status.astype(jnp.int32)
