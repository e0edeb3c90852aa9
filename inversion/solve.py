"""The per-row rules every driver shares: the carry of one row, one step, and the finish.

:mod:`inversion.driver` starts rows (``x_0 = P(x0)``, the solver initialised there), and
runs :func:`advance` under ``jax.vmap`` in its loops, and :func:`inversion.solve` runs it on
one row. With ``P`` the projection onto the bounds, step ``i`` of a running row does::

    x_new, state = solver.step(objective, x_i, state)      # state.value = J(x_i)
    if J(x_i) is not finite:   stop 'diverged', return x_{i-1}          (last finite iterate)
    elif J(x_i) <= tol:        stop 'converged', return x_i
    elif i == 0 and grad J(x_0) == 0 (every entry, exactly; state.grad_zero):
                               stop 'converged' if J(x_0) == 0 else 'zero_gradient', return x_0
    elif x_new is not finite:  stop 'diverged', return x_i
    else:                      x_{i+1} = x_new; stop if solver.terminate(...) says so
                               ('stationary' at a small projected gradient, 'stalled', ...)

A gradient that is exactly zero at the start (a saturated sigmoid's probabilities, all ReLUs
dead) leaves every gradient-based solver where it is, so the row ends at once, after 0 steps,
rather than running ``max_steps`` at an unchanged ``x``; invert logits (pre-activation outputs)
rather than saturated probabilities. The test reads a flag the solver computes from the
gradient it has already evaluated: one reduction per step. A zero gradient reached later is
left to the solver (momentum, for one, may carry the iterate on).

A stopped row is frozen (its ``x`` and solver state no longer change), so extra steps are
no-ops: any batch size, chunking or loop gives the same per-row answer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from inversion.objective import Objective
from inversion.result import CONVERGED, DIVERGED, ZERO_GRADIENT
from inversion.solvers.base import RUNNING, Solver


class Carry(NamedTuple):
    """Everything one row carries from step to step (optax style: explicit, no hidden state).

    A batch of rows is the same type with a leading row axis on every field (``jax.vmap``).
    """

    x: Array  # current iterate
    x_prev: Array  # previous iterate, returned if the current one has a non-finite objective
    state: Any  # the solver's state
    code: Array  # RUNNING (= MAX_STEPS) or a final status (inversion.result)
    n: Array  # solver steps applied
    history: Array  # (steps,): the objective at every iterate, filled as the steps run


def strong(tree: Any) -> Any:
    """Drop weak types, so a carried state keeps one signature (no recompilation, and
    ``lax.while_loop`` accepts it)."""
    return jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.result_type(a)), tree)


def _select(pred: Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _grad_zero(solver: Solver, state: Any) -> Array:
    try:
        return state.grad_zero
    except AttributeError:
        raise TypeError(
            f"{type(solver).__name__}.step returned a {type(state).__name__} without the field "
            "grad_zero (whether grad J is exactly zero at the step's input; see "
            "inversion.solvers.base)"
        ) from None


def advance(objective: Objective, solver: Solver, row: Carry, i: Array, tol: float | None) -> Carry:
    """Step ``i`` of one row by the rules of the module docstring; ``history[i]`` becomes
    ``J(x_i)`` (``0`` where it is not finite)."""
    x_new, new_state = solver.step(objective, row.x, row.state)
    value = new_state.value
    active = row.code == RUNNING
    finite_v = jnp.isfinite(value)
    conv = (finite_v & (value <= tol)) if tol is not None else jnp.zeros((), bool)
    # n is 0 only at a running row's first step (every later one follows a move)
    flat = finite_v & ~conv & (row.n == 0) & _grad_zero(solver, new_state)
    conv = conv | (flat & (value == 0))
    flat = flat & ~conv
    finite_x = jnp.all(jnp.isfinite(x_new))
    move = active & finite_v & ~conv & ~flat & finite_x
    bad_v = active & ~finite_v
    bad_x = active & finite_v & ~conv & ~flat & ~finite_x
    x = jnp.where(move, x_new, jnp.where(bad_v, row.x_prev, row.x))
    x_prev = jnp.where(move, row.x, row.x_prev)
    state = strong(_select(move, new_state, row.state))
    code = jnp.where(active & conv, CONVERGED, jnp.where(bad_v | bad_x, DIVERGED, row.code))
    code = jnp.where(active & flat, ZERO_GRADIENT, code)
    n = jnp.where(move, row.n + 1, jnp.where(bad_v, jnp.maximum(row.n - 1, 0), row.n))
    done, status = solver.terminate(objective, x, state)
    code = jnp.where(move & done, status, code).astype(jnp.int32)
    value = jnp.where(finite_v, value, 0.0).astype(row.history.dtype)
    history = lax.dynamic_update_index_in_dim(row.history, value, i, 0)
    return Carry(x, x_prev, state, code, n, history)


def finish(objective: Objective, row: Carry, tol: float | None) -> tuple:
    """Final ``(x, history, loss, residual, steps, code)`` of one row.

    A row still running whose last iterate has a non-finite objective is reverted to its
    previous iterate and marked 'diverged'. History entries ``j >= steps`` hold the final
    objective. A NaN objective or residual (possible only when the objective is not finite even
    at the start) is reported as ``+inf``, so no output is NaN.
    """
    bad = ~jnp.isfinite(objective.value(row.x)) & (row.code == RUNNING)
    x = jnp.where(bad, row.x_prev, row.x)
    n = jnp.where(bad, jnp.maximum(row.n - 1, 0), row.n)
    code = jnp.where(bad, DIVERGED, row.code)
    loss = objective.value(x)
    if tol is not None:
        code = jnp.where((code == RUNNING) & (loss <= tol), CONVERGED, code)
    residual = objective.relative_residual(x)
    loss = jnp.where(jnp.isnan(loss), jnp.inf, loss)
    residual = jnp.where(jnp.isnan(residual), jnp.inf, residual)
    history = row.history
    history = jnp.where(jnp.arange(history.shape[0]) >= n, loss.astype(history.dtype), history)
    return x, history, loss, residual, n, code.astype(jnp.int32)
