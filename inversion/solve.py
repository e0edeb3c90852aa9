"""``solve(objective, solver, x0, *, max_steps)``: one pure, traceable inversion.

The per-row rules every driver shares (this function, and the batched engine in
:mod:`inversion.loop`, which ``vmap``s :func:`advance` and :func:`finish`). With ``P`` the
projection onto the bounds, the start is ``x_0 = P(x0)`` and step ``i`` of a running row does::

    x_new, state = solver.step(objective, x_i, state)      # state.value = J(x_i)
    if J(x_i) is not finite:   stop 'diverged', return x_{i-1}          (last finite iterate)
    elif J(x_i) <= tol:        stop 'converged', return x_i
    elif i == 0 and grad J(x_0) == 0 (every entry, exactly; state.grad_zero):
                               stop 'converged' if J(x_0) == 0 else 'zero_gradient', return x_0
    elif x_new is not finite:  stop 'diverged', return x_i
    else:                      x_{i+1} = x_new; stop if solver.terminate(...) says so

A gradient that is exactly zero at the start (a saturated sigmoid's probabilities, all ReLUs
dead) leaves every gradient-based solver where it is, so the row ends at once, after 0 steps,
rather than running ``max_steps`` at an unchanged ``x``; invert logits (pre-activation outputs)
rather than saturated probabilities. The test reads a flag the solver computes from the
gradient it has already evaluated: one reduction per step. A zero gradient reached later is
left to the solver (momentum, for one, may carry the iterate on).

A stopped row is frozen (its ``x`` and solver state no longer change), so extra steps are
no-ops: any batch size, chunking or loop gives the same per-row answer.

``solve`` never reads a value back to the host: wrap it in ``jax.jit``, ``jax.vmap`` or
``shard_map`` yourself. The loop is a ``lax.while_loop`` that stops when the row stops.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from inversion.objective import Objective
from inversion.result import CONVERGED, DIVERGED, ZERO_GRADIENT, Result
from inversion.solvers.base import RUNNING, Solver


class Row(NamedTuple):
    """The driver's carry for one row (besides the history)."""

    x: Array  # current iterate
    x_prev: Array  # previous iterate, returned if the current one has a non-finite objective
    state: Any  # the solver's state
    code: Array  # RUNNING (= MAX_STEPS), CONVERGED, DIVERGED, STALLED or ZERO_GRADIENT
    n: Array  # solver steps applied


def start(objective: Objective, solver: Solver, x0: Array) -> Row:
    """The carry before the first step: ``x = P(x0)``, the solver initialised there."""
    x = objective.project(x0)
    return Row(
        x=x,
        x_prev=x,
        state=strong(solver.init(objective, x)),
        code=jnp.asarray(RUNNING, jnp.int32),
        n=jnp.zeros((), jnp.int32),
    )


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


def advance(objective: Objective, solver: Solver, row: Row, tol: float | None) -> tuple[Row, Array]:
    """One step of one row by the rules of the module docstring.

    Returns ``(row, value)`` with ``value = J(x_i)`` (``0`` where it is not finite).
    """
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
    return Row(x, x_prev, state, code, n), jnp.where(finite_v, value, 0.0)


def finish(objective: Objective, row: Row, history: Array, tol: float | None) -> tuple:
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
    history = jnp.where(jnp.arange(history.shape[0]) >= n, loss.astype(history.dtype), history)
    return x, history, loss, residual, n, code.astype(jnp.int32)


def solve(
    objective: Objective,
    solver: Solver,
    x0: Array,
    *,
    max_steps: int,
    tol: float | None = None,
) -> Result:
    """Minimise ``objective`` from ``x0`` with ``solver`` for at most ``max_steps`` steps.

    Pure and traceable: ``jax.jit(jax.vmap(lambda y, x0: solve(Objective(fn, y), solver, x0,
    max_steps=100)))`` inverts many targets in one program. The row stops early when its
    objective reaches ``tol``, when it diverges, when the gradient is exactly zero at the start
    (status ``'zero_gradient'``, see the module docstring), or when ``solver.terminate`` says so.

    Returns a :class:`inversion.Result` for one target: ``x`` (the input's shape),
    ``history`` ``(max_steps,)``, and scalar ``loss``, ``residual``, ``steps`` and
    ``status_code``.
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be an inversion.Objective, got {type(objective).__name__}")
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be an inversion.solvers.Solver, got {type(solver).__name__}")
    x0 = jnp.asarray(x0)
    row = start(objective, solver, x0)
    history = jnp.zeros((max_steps,), jnp.result_type(row.x))

    def cond(carry):
        i, row, _ = carry
        return (i < max_steps) & (row.code == RUNNING)

    def body(carry):
        i, row, history = carry
        row, value = advance(objective, solver, row, tol)
        history = lax.dynamic_update_index_in_dim(history, value.astype(history.dtype), i, 0)
        return i + 1, row, history

    _, row, history = lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), row, history))
    return Result(*finish(objective, row, history, tol))
