"""Active-set polish: the exact least-squares step of the affine piece a ReLU network is on."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array
from matfree import lstsq

from inversion.objective import Objective
from inversion.result import STALLED, STATIONARY
from inversion.solvers.base import RUNNING, Solver, all_zero, inf_like
from inversion.solvers.lbfgs import free_variables, projected_gradient_norm
from inversion.solvers.linesearch import (
    MIN_SCALE,
    check_step_sizes,
    next_scale,
    projected_search,
)


class ActiveSetState(NamedTuple):
    value: Array  # J at the last step's input (+inf before the first step)
    grad_zero: Array  # grad J was exactly zero there (False before the first step)
    grad_norm: Array  # projected gradient norm there
    failed: Array  # the last step did not lower J
    scale: Array  # the trial lengths' scale (shrinks after a failure)


def fixed_iterations(iterations: int, unroll: int = 1):
    """A ``while_loop(cond, body, init)`` for matfree that runs exactly ``iterations`` bodies
    (a ``lax.fori_loop``, ``unroll`` bodies per loop trip), each applied only while ``cond``
    holds: the same iterates as the ``lax.while_loop`` it replaces, capped at ``iterations``,
    with a trip count that does not depend on the data (one program for every row of a
    ``vmap``)."""

    def while_loop(cond, body, init):
        def one(_, state):
            go = cond(state)
            return jax.tree.map(lambda new, old: jnp.where(go, new, old), body(state), state)

        return lax.fori_loop(0, iterations, one, init, unroll=unroll)

    return while_loop


@dataclasses.dataclass(frozen=True)
class ActiveSetPolish(Solver):
    """Freeze the activation pattern at ``x`` and solve the local linear least-squares problem.

    A network made of affine maps, ReLUs and max pools is affine on each activation region
    (fixed ReLU signs and pooling switches): there ``r(x + p) = r(x) + A p`` exactly, with
    ``r`` the least-squares residual of :meth:`inversion.Objective.least_squares_residual` and
    ``A = dr/dx`` its Jacobian at ``x``, which ``jax.linearize`` gives for the frozen pattern
    (and ``jax.linear_transpose`` its transpose). The step solves

        min_p ||A_F p + r(x)||^2 + damping^2 ||p||^2

    over the free variables ``F`` of the box (those not held at a bound by the gradient ``g
    = A^T r``; the others get ``p = 0``) with ``iterations`` steps of LSMR (Fong & Saunders
    2011, matfree's ``lstsq.lsmr``: it converges like CG on ``A^T A`` but in ``kappa(A)``
    rather than ``kappa(A)^2``-conditioned arithmetic). The new point is the best ``x_t =
    P(x + s t p)``, ``t`` in ``step_sizes``, by the TRUE objective, accepted only if it
    drops (the projected Armijo condition ``J(x_t) <= J(x) + c1 g . (x_t - x)``,
    :mod:`inversion.solvers.linesearch`); then the pattern is frozen again at the new point.

    If the solution of the local problem lies inside the region, one step with enough
    iterations (``n`` in exact arithmetic for ``n`` free variables) lands on it; otherwise
    the step crosses into other regions, where the true objective decides. A failed step
    keeps ``x`` and shrinks ``s``.

    Stops 'stationary' at projected gradient norm ``<= gtol`` (off when ``None``), 'stalled'
    when ``s`` falls below ``1e-12``. Needs a least-squares loss and no regularizers.
    """

    iterations: int = 20
    damping: float = 0.0
    step_sizes: tuple[float, ...] = (1.0, 0.3, 0.1)
    c1: float = 1e-4
    gtol: float | None = None
    unroll: int = 1

    def __post_init__(self):
        for name in ("iterations", "unroll"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not self.damping >= 0:
            raise ValueError(f"damping must be >= 0, got {self.damping!r}")
        if not 0 < self.c1 < 1:
            raise ValueError(f"c1 must lie in (0, 1), got {self.c1!r}")
        if self.gtol is not None and not self.gtol >= 0:
            raise ValueError(f"gtol must be None or >= 0, got {self.gtol!r}")
        object.__setattr__(self, "step_sizes", check_step_sizes(self.step_sizes))

    def check(self, objective: Objective) -> None:
        if not objective.has_least_squares_form:
            raise ValueError(
                "ActiveSetPolish needs a least-squares loss ('mse' or 'normalized'), "
                f"got loss={objective.loss_name or objective.loss!r}"
            )
        if objective.regularizers:
            raise ValueError(
                "ActiveSetPolish solves the network's own least-squares problem and takes no "
                f"regularizers, got {len(objective.regularizers)}"
            )

    def init(self, objective: Objective, x: Array) -> ActiveSetState:
        one = jnp.ones((), jnp.result_type(x))
        no = jnp.zeros((), bool)
        return ActiveSetState(inf_like(x), no, inf_like(x), no, one)

    def local_step(self, objective: Objective, x: Array) -> tuple[Array, Array, Array]:
        """``(p, J(x), g)``: the LSMR step of the frozen affine model over the free variables."""
        self.check(objective)
        r, jvp = jax.linearize(objective.least_squares_residual, x)
        vjp = jax.linear_transpose(jvp, x)
        (g,) = vjp(r)
        m = free_variables(objective, x, -g).astype(g.dtype)
        solve = lstsq.lsmr(
            atol=0.0,
            btol=0.0,
            ctol=0.0,
            while_loop=fixed_iterations(self.iterations, self.unroll),
            custom_vjp=False,
        )
        p, _ = solve(lambda u: m * vjp(u)[0], -r, damp=self.damping)
        return m * p, 0.5 * jnp.sum(jnp.square(r)), g

    def step(self, objective: Objective, x: Array, state: ActiveSetState):
        p, value, g = self.local_step(objective, x)
        x_next, ok = projected_search(
            objective, x, value, g, p, self.step_sizes, self.c1, state.scale
        )
        return x_next, ActiveSetState(
            value,
            all_zero(g),
            projected_gradient_norm(objective, x, g),
            ~ok,
            next_scale(ok, state.scale, self.step_sizes),
        )

    def terminate(self, objective: Objective, x: Array, state: ActiveSetState):
        converged = state.grad_norm <= self.gtol if self.gtol is not None else jnp.zeros((), bool)
        stalled = state.scale < MIN_SCALE
        status = jnp.where(converged, STATIONARY, jnp.where(stalled, STALLED, RUNNING))
        return converged | stalled, status.astype(jnp.int32)
