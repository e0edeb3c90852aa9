"""Projected L-BFGS: optax's L-BFGS direction, restricted to the free variables of the box, with a
projected Armijo line search over a fixed set of step lengths."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array

from inversion import checks
from inversion.objective import Objective
from inversion.result import STALLED, STATIONARY
from inversion.solvers.base import RUNNING, Solver, all_zero, inf_like
from inversion.solvers.linesearch import (
    MIN_SCALE,
    check_step_sizes,
    next_scale,
    projected_search,
)


class LBFGSState(NamedTuple):
    memory: Any  # optax.scale_by_lbfgs state (past parameter and gradient differences)
    value: Array  # J at the last step's input (+inf before the first step)
    grad_zero: Array  # grad J was exactly zero there (False before the first step)
    grad_norm: Array  # norm of the projected gradient there
    failed: Array  # the last line search found no decrease
    scale: Array  # the line search's scale (shrinks after a failure)


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

    At ``x`` with gradient ``g``: the variables held by a bound (``x = lo`` with ``g > 0`` or
    ``x = hi`` with ``g < 0``) are fixed and ``g_F``, the gradient with those entries zeroed,
    feeds optax's L-BFGS (``optax.scale_by_lbfgs``, ``memory`` pairs), so its curvature pairs
    describe the free subspace; the direction is ``d = -H g_F`` on the free variables, or
    ``d = -g_F`` when that is not a descent direction (``g . d >= 0``). The step is the best
    of ``x_t = P(x + t d)``, ``t`` in ``step_sizes``, that satisfies the projected Armijo
    condition ``J(x_t) <= J(x) + c1 g . (x_t - x)``
    (:mod:`inversion.solvers.linesearch`). After a failed search the memory is kept as it was
    and the next step searches at a smaller scale. Without bounds this is plain L-BFGS.

    Stops 'stationary' when the projected gradient norm ``||P(x - g) - x||`` is at most
    ``gtol`` (off when ``None``) and 'stalled' when the line search's scale falls below
    ``1e-12`` (no decrease along the direction at any length tried).
    """

    memory: int = 10
    step_sizes: tuple[float, ...] = (1.0, 0.25)
    c1: float = 1e-4
    gtol: float | None = None

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        set_("memory", checks.check_int("memory", self.memory, minimum=1, maximum=10_000))
        set_("c1", checks.check_unit_interval("c1", self.c1))
        set_("step_sizes", check_step_sizes(self.step_sizes))
        set_("gtol", checks.check_tol("gtol", self.gtol))

    def _direction(self):
        return optax.scale_by_lbfgs(memory_size=self.memory)

    def init(self, objective: Objective, x: Array) -> LBFGSState:
        return LBFGSState(
            memory=self._direction().init(x),
            value=inf_like(x),
            grad_zero=jnp.zeros((), bool),
            grad_norm=inf_like(x),
            failed=jnp.zeros((), bool),
            scale=jnp.ones((), jnp.result_type(x)),
        )

    def step(self, objective: Objective, x: Array, state: LBFGSState):
        value, grad = jax.value_and_grad(objective.value)(x)
        free = free_variables(objective, x, -grad)
        steepest = -grad * free
        scaled, memory = self._direction().update(-steepest, state.memory, x)
        d = -scaled * free_variables(objective, x, -scaled) * free
        d = jnp.where(jnp.vdot(grad, d) < 0, d, steepest)
        x_next, ok = projected_search(
            objective, x, value, grad, d, self.step_sizes, self.c1, state.scale
        )
        return x_next, LBFGSState(
            memory=jax.tree.map(lambda new, old: jnp.where(ok, new, old), memory, state.memory),
            value=value,
            grad_zero=all_zero(grad),
            grad_norm=projected_gradient_norm(objective, x, grad),
            failed=~ok,
            scale=next_scale(ok, state.scale, self.step_sizes),
        )

    def terminate(self, objective: Objective, x: Array, state: LBFGSState):
        converged = state.grad_norm <= self.gtol if self.gtol is not None else jnp.zeros((), bool)
        stalled = state.scale < MIN_SCALE
        status = jnp.where(converged, STATIONARY, jnp.where(stalled, STALLED, RUNNING))
        return converged | stalled, status.astype(jnp.int32)
