"""Matrix-free Gauss-Newton with a projected backtracking line search."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from inversion.objective import Objective
from inversion.result import CONVERGED, STALLED
from inversion.solvers.base import RUNNING, Solver, inf_like
from inversion.solvers.lbfgs import free_variables, projected_gradient_norm
from inversion.solvers.levenberg_marquardt import damped_step, gauss_newton_model


class GaussNewtonState(NamedTuple):
    value: Array  # J at the last step's input (+inf before the first step)
    grad_norm: Array  # projected gradient norm there
    failed: Array  # the last line search found no decrease


@dataclasses.dataclass(frozen=True)
class GaussNewton(Solver):
    """Truncated Gauss-Newton: ``cg_steps`` CG iterations on ``(A^T A + H_R + lam I) p = -g``
    over the free variables (the model of :mod:`inversion.solvers.levenberg_marquardt`, with a
    small fixed ``lam = damping * (A g . A g) / (g . g)`` that keeps CG well defined), then
    ``x_t = P(x + t p)`` for the first ``t`` in ``1, 1/2, ...`` (at most ``max_backtracks``)
    with ``J(x_t) <= J(x) + c1 g . (x_t - x)``.

    CG started from zero gives a descent direction after any number of iterations (each
    iterate decreases the model), so truncating it is safe. For a piecewise-affine ``fn``
    (ReLU, max-pool, convolutions) the model is exact within the current activation region:
    one step with enough CG iterations lands on the solution when it lies in that region.
    Stops 'converged' at projected gradient norm ``<= gtol`` (off when ``None``), 'stalled'
    when the line search finds no decrease. Needs a least-squares loss.
    """

    cg_steps: int = 20
    damping: float = 1e-6
    c1: float = 1e-4
    max_backtracks: int = 20
    gtol: float | None = None

    def __post_init__(self):
        if isinstance(self.cg_steps, bool) or not isinstance(self.cg_steps, int):
            raise ValueError(f"cg_steps must be an int >= 1, got {self.cg_steps!r}")
        if self.cg_steps < 1:
            raise ValueError(f"cg_steps must be an int >= 1, got {self.cg_steps!r}")
        if not self.damping >= 0:
            raise ValueError(f"damping must be >= 0, got {self.damping!r}")
        if not 0 < self.c1 < 1:
            raise ValueError(f"c1 must lie in (0, 1), got {self.c1!r}")

    def check(self, objective: Objective) -> None:
        if not objective.has_least_squares_form:
            raise ValueError(
                "GaussNewton needs a least-squares loss ('mse' or 'normalized'), "
                f"got loss={objective.loss_name or objective.loss!r}"
            )

    def init(self, objective: Objective, x: Array) -> GaussNewtonState:
        return GaussNewtonState(inf_like(x), inf_like(x), jnp.zeros((), bool))

    def step(self, objective: Objective, x: Array, state: GaussNewtonState):
        model = gauss_newton_model(objective, x)
        g = model.grad
        ag = model.jvp(g)
        gg = jnp.vdot(g, g)
        lam = self.damping * jnp.vdot(ag, ag) / jnp.where(gg > 0, gg, 1.0)
        lam = jnp.maximum(lam, jnp.finfo(jnp.result_type(x)).tiny)
        p = damped_step(model, free_variables(objective, x, -g), lam, self.cg_steps)

        def trial(t):
            x_t = objective.project(x + t * p)
            ok = objective.value(x_t) <= model.value + self.c1 * jnp.vdot(g, x_t - x)
            return x_t, ok

        def cond(carry):
            k, _, _, ok = carry
            return (k < self.max_backtracks) & ~ok

        def body(carry):
            k, t, _, _ = carry
            t = 0.5 * t
            x_t, ok = trial(t)
            return k + 1, t, x_t, ok

        one = jnp.ones((), jnp.result_type(x))
        x_t, ok = trial(one)
        _, _, x_t, ok = lax.while_loop(cond, body, (jnp.ones((), jnp.int32), one, x_t, ok))
        return jnp.where(ok, x_t, x), GaussNewtonState(
            model.value, projected_gradient_norm(objective, x, g), ~ok
        )

    def terminate(self, objective: Objective, x: Array, state: GaussNewtonState):
        converged = state.grad_norm <= self.gtol if self.gtol is not None else jnp.zeros((), bool)
        status = jnp.where(converged, CONVERGED, jnp.where(state.failed, STALLED, RUNNING))
        return converged | state.failed, status.astype(jnp.int32)
