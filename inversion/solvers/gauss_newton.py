"""Matrix-free truncated Gauss-Newton with a projected line search."""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array

from inversion import checks
from inversion.objective import Objective
from inversion.result import STALLED, STATIONARY
from inversion.solvers.base import RUNNING, Solver, all_zero, inf_like
from inversion.solvers.lbfgs import free_variables, projected_gradient_norm
from inversion.solvers.levenberg_marquardt import (
    damped_step,
    gauss_newton_model,
    gradient_curvature,
)
from inversion.solvers.linesearch import (
    MIN_SCALE,
    check_step_sizes,
    next_scale,
    projected_search,
)


class GaussNewtonState(NamedTuple):
    value: Array  # J at the last step's input (+inf before the first step)
    grad_zero: Array  # grad J was exactly zero there (False before the first step)
    grad_norm: Array  # projected gradient norm there
    failed: Array  # the last line search found no decrease
    scale: Array  # the line search's scale (shrinks after a failure)


@dataclasses.dataclass(frozen=True)
class GaussNewton(Solver):
    """Truncated Gauss-Newton: ``cg_steps`` CG iterations on ``(A^T A + H_R + lam I) p = -g``
    over the free variables (the model of :mod:`inversion.solvers.levenberg_marquardt`, with a
    small fixed ``lam = damping * (A g . A g) / (g . g)`` that keeps CG well defined), then
    the best ``x_t = P(x + t p)``, ``t`` in ``step_sizes``, with ``J(x_t) <= J(x) + c1 g .
    (x_t - x)`` (:mod:`inversion.solvers.linesearch`).

    CG started from zero gives a descent direction after any number of iterations (each
    iterate decreases the model), so truncating it is safe. For a piecewise-affine ``fn``
    (ReLU, max-pool, convolutions) the model is exact within the current activation region:
    one step with enough CG iterations lands on the solution when it lies in that region.
    Stops 'stationary' at projected gradient norm ``<= gtol`` (off when ``None``), 'stalled'
    when the line search's scale falls below ``1e-12``. Needs a least-squares loss.
    """

    cg_steps: int = 10
    damping: float = 1e-6
    step_sizes: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    c1: float = 1e-4
    gtol: float | None = None

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        set_("cg_steps", checks.check_int("cg_steps", self.cg_steps, minimum=1, maximum=10_000))
        set_("damping", checks.check_real("damping", self.damping))
        set_("c1", checks.check_unit_interval("c1", self.c1))
        set_("step_sizes", check_step_sizes(self.step_sizes))
        set_("gtol", checks.check_tol("gtol", self.gtol))

    def check(self, objective: Objective) -> None:
        if not objective.has_least_squares_form:
            raise ValueError(
                "GaussNewton needs a least-squares loss ('mse' or 'normalized'), "
                f"got loss={objective.loss_name or objective.loss!r}"
            )

    def init(self, objective: Objective, x: Array) -> GaussNewtonState:
        one = jnp.ones((), jnp.result_type(x))
        no = jnp.zeros((), bool)
        return GaussNewtonState(inf_like(x), no, inf_like(x), no, one)

    def step(self, objective: Objective, x: Array, state: GaussNewtonState):
        model = gauss_newton_model(objective, x)
        g = model.grad
        lam = self.damping * gradient_curvature(model)
        lam = jnp.maximum(lam, jnp.finfo(jnp.result_type(x)).tiny)
        p = damped_step(model, free_variables(objective, x, -g), lam, self.cg_steps)
        x_next, ok = projected_search(
            objective, x, model.value, g, p, self.step_sizes, self.c1, state.scale
        )
        return x_next, GaussNewtonState(
            model.value,
            all_zero(g),
            projected_gradient_norm(objective, x, g),
            ~ok,
            next_scale(ok, state.scale, self.step_sizes),
        )

    def terminate(self, objective: Objective, x: Array, state: GaussNewtonState):
        converged = state.grad_norm <= self.gtol if self.gtol is not None else jnp.zeros((), bool)
        stalled = state.scale < MIN_SCALE
        status = jnp.where(converged, STATIONARY, jnp.where(stalled, STALLED, RUNNING))
        return converged | stalled, status.astype(jnp.int32)
