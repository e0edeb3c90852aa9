"""Projected L-BFGS with one value-and-gradient per step: the accepted trial point's gradient is
carried into the next step instead of being computed again."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array

from inversion.objective import Objective
from inversion.result import STALLED, STATIONARY
from inversion.solvers.base import RUNNING, Solver, all_zero, inf_like
from inversion.solvers.lbfgs import free_variables, projected_gradient_norm
from inversion.solvers.linesearch import MIN_SCALE


class CachedLBFGSState(NamedTuple):
    memory: Any  # optax.scale_by_lbfgs state (past parameter and gradient differences)
    x_value: Array  # J at the current iterate (cached: computed when it was a trial point)
    x_grad: Array  # grad J at the current iterate (cached likewise)
    value: Array  # J at the last step's input (+inf before the first step)
    grad_zero: Array  # grad J was exactly zero there (False before the first step)
    grad_norm: Array  # norm of the projected gradient there
    failed: Array  # the last trial was rejected
    scale: Array  # the trial's step length (shrinks after a rejection, grows after a success)


@dataclasses.dataclass(frozen=True)
class CachedLBFGS(Solver):
    """Projected L-BFGS whose line search is one trial point, evaluated with its gradient.

    The direction is :class:`inversion.solvers.LBFGS`'s: at ``x`` with gradient ``g``, the
    variables held by a bound are fixed, ``g_F`` (their entries zeroed) feeds optax's L-BFGS
    (``optax.scale_by_lbfgs``, ``memory`` pairs) and ``d = -H g_F`` on the free variables
    (``-g_F`` when that is not a descent direction). The step tries ONE point ``x_t = P(x + s
    d)`` and evaluates ``J(x_t)`` and ``grad J(x_t)`` together. It is accepted when the
    projected Armijo condition ``J(x_t) <= J(x) + c1 g . (x_t - x)`` holds; then ``s <-
    min(grow s, 1)`` and ``(J(x_t), grad J(x_t))`` become the next step's ``(J(x), g)``.
    Otherwise ``x`` and the memory are kept and ``s <- shrink s``.

    So every step costs one value-and-gradient, where :class:`~inversion.solvers.LBFGS` spends
    one value-and-gradient plus one forward pass per trial length: the same iterates as a
    backtracking search that stops at the first acceptable length, in fewer passes when the
    unit step is accepted (the usual case for L-BFGS). ``init`` evaluates ``J`` and its
    gradient at the start once.

    Stops 'stationary' when the projected gradient norm ``||P(x - g) - x||`` is at most
    ``gtol`` (off when ``None``) and 'stalled' when ``s`` falls below ``1e-12``.
    """

    memory: int = 20
    c1: float = 1e-4
    shrink: float = 0.25
    grow: float = 4.0
    gtol: float | None = None

    def __post_init__(self):
        if isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory < 1:
            raise ValueError(f"memory must be an int >= 1, got {self.memory!r}")
        if not 0 < self.c1 < 1:
            raise ValueError(f"c1 must lie in (0, 1), got {self.c1!r}")
        if not 0 < self.shrink < 1:
            raise ValueError(f"shrink must lie in (0, 1), got {self.shrink!r}")
        if not self.grow >= 1:
            raise ValueError(f"grow must be >= 1, got {self.grow!r}")
        if self.gtol is not None and not self.gtol >= 0:
            raise ValueError(f"gtol must be None or >= 0, got {self.gtol!r}")

    def _direction(self):
        return optax.scale_by_lbfgs(memory_size=self.memory)

    def init(self, objective: Objective, x: Array) -> CachedLBFGSState:
        value, grad = jax.value_and_grad(objective.value)(x)
        return CachedLBFGSState(
            memory=self._direction().init(x),
            x_value=value,
            x_grad=grad,
            value=inf_like(x),
            grad_zero=jnp.zeros((), bool),
            grad_norm=inf_like(x),
            failed=jnp.zeros((), bool),
            scale=jnp.ones((), jnp.result_type(x)),
        )

    def step(self, objective: Objective, x: Array, state: CachedLBFGSState):
        value, grad = state.x_value, state.x_grad
        free = free_variables(objective, x, -grad)
        steepest = -grad * free
        scaled, memory = self._direction().update(-steepest, state.memory, x)
        d = -scaled * free_variables(objective, x, -scaled) * free
        d = jnp.where(jnp.vdot(grad, d) < 0, d, steepest)
        x_t = objective.project(x + state.scale * d)
        v_t, g_t = jax.value_and_grad(objective.value)(x_t)
        ok = jnp.isfinite(v_t) & (v_t <= value + self.c1 * jnp.vdot(grad, x_t - x))
        ok = ok & jnp.all(jnp.isfinite(g_t))
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        scale = jnp.where(
            ok, jnp.minimum(self.grow * state.scale, 1.0), self.shrink * state.scale
        ).astype(state.scale.dtype)
        return keep(x_t, x), CachedLBFGSState(
            memory=jax.tree.map(keep, memory, state.memory),
            x_value=keep(v_t, value),
            x_grad=keep(g_t, grad),
            value=value,
            grad_zero=all_zero(grad),
            grad_norm=projected_gradient_norm(objective, x, grad),
            failed=~ok,
            scale=scale,
        )

    def terminate(self, objective: Objective, x: Array, state: CachedLBFGSState):
        converged = state.grad_norm <= self.gtol if self.gtol is not None else jnp.zeros((), bool)
        stalled = state.scale < MIN_SCALE
        status = jnp.where(converged, STATIONARY, jnp.where(stalled, STALLED, RUNNING))
        return converged | stalled, status.astype(jnp.int32)
