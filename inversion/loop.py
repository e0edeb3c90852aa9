"""The inversion step and the two loops that drive it, on a flat batch of ``B`` rows.

One row is one (target, start) pair; rows never interact, so a batch is the per-row problem
under ``jax.vmap`` and the result of a row does not depend on the rest of the batch. The
gradients of all rows come from one backward pass of ``sum_r J_r`` (rows are independent, so
``d/dx_r sum_s J_s = grad J_r``); the optimiser update is ``vmap``-ed, one state per row.

Per row, with objective ``J(x) = L(fn(x), y) + sum_k R_k(x)`` and projection ``P`` onto the
bounds (identity without bounds), step ``i`` of a running row does::

    v_i, g_i = J(x_i), grad J(x_i)
    if v_i is not finite:  stop 'diverged', return x_{i-1}          (the last finite iterate)
    elif v_i <= tol:       stop 'converged', return x_i
    else:                  u, s = optimizer.update(g_i, s, x_i, value=v_i, grad=g_i, value_fn=J)
                           x_{i+1} = P(x_i + u); if it is not finite: stop 'diverged', return x_i

A stopped row is frozen (its ``x`` and optimiser state no longer change), so extra steps are
no-ops and both loops, any chunking and any batch size give the same per-row answer.

* :func:`python_loop`: a Python ``for`` over ONE jitted, buffer-donating ``step(x, state)``;
  every ``check_every`` steps one scalar (``state.running``) is read back to stop early.
* :func:`compiled_loop`: the same step in ``lax.scan`` (no ``tol``) or ``lax.while_loop``.

On XLA:CPU the Python loop is the fast one (the engine's default there): the same step inside
``lax.while_loop`` took 380 ms instead of 59 ms (seed U-Net, batch 64, two CPU devices; 413
vs 95 ms on one; jaxlib 0.10, BENCHMARKS.md). Outside a loop XLA folds the transposed kernels
of the input-gradient convolutions into constants; inside one they are loop operands, which
is the likely cause.
Accelerators run the compiled loop (no per-step dispatch, no host round trip).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from inversion.result import CONVERGED, DIVERGED, MAX_STEPS

RUNNING = MAX_STEPS  # a row that is still running ends as 'max_steps'


class Problem(NamedTuple):
    """Static description of the per-row problem (closed over by the compiled step).

    Hashable when its parts are (functions hash by identity; scalar bounds are floats), which
    lets the engine reuse compiled programs across calls with the same problem.
    """

    fn: Callable[[Array], Array]
    loss: Callable[[Array, Array], Array]
    regularizers: tuple[Callable[[Array], Array], ...]
    optimizer: optax.GradientTransformation
    steps: int
    bounds: tuple[float | Array, float | Array] | None = None
    tol: float | None = None
    sharding: Any = None  # NamedSharding of the row axis, or None

    def objective(self, x: Array, y: Array) -> Array:
        """``J(x) = L(fn(x), y) + sum_k R_k(x)`` for one row."""
        value = self.loss(self.fn(x), y)
        for r in self.regularizers:
            value = value + r(x)
        return value

    def project(self, x: Array) -> Array:
        """Clip onto ``[lo, hi]`` (identity without bounds)."""
        if self.bounds is None:
            return x
        return jnp.clip(x, self.bounds[0], self.bounds[1])


class StepState(NamedTuple):
    """Everything a step carries besides ``x`` (optax style: explicit, no hidden state)."""

    i: Int[Array, ""]  # index of the next step
    x_prev: Float[Array, "B ..."]  # previous iterate, returned if the current one blows up
    opt_state: Any  # optimiser state, one per row (vmapped init)
    code: Int[Array, " B"]  # RUNNING (= MAX_STEPS), CONVERGED or DIVERGED
    n: Int[Array, " B"]  # optimiser updates applied to each row
    history: Float[Array, "steps B"]  # objective per step, preallocated
    running: Bool[Array, ""]  # any row still running (the one value the host reads)


def _constrain(problem: Problem, tree: Any, axis: int = 0) -> Any:
    """Pin the row axis of every array in ``tree`` to the mesh (no-op without a mesh)."""
    if problem.sharding is None:
        return tree
    mesh, names = problem.sharding.mesh, problem.sharding.spec[0]
    spec = jax.sharding.PartitionSpec(*([None] * axis), names)
    sharding = jax.sharding.NamedSharding(mesh, spec)
    return jax.tree.map(lambda a: lax.with_sharding_constraint(a, sharding), tree)


def _strong(tree: Any) -> Any:
    """Drop weak types so the carried state has one fixed signature (no recompilation)."""
    return jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.result_type(a)), tree)


def _pin(problem: Problem, x: Array, state: StepState) -> tuple[Array, StepState]:
    """Pin every per-row array to the row sharding, so that the step's input and output
    shardings agree (one compilation) and rows never move between devices."""
    rows = _constrain(problem, (x, state.x_prev, state.opt_state, state.code, state.n))
    x, x_prev, opt_state, code, n = rows
    history = _constrain(problem, state.history, axis=1)
    return x, state._replace(x_prev=x_prev, opt_state=opt_state, code=code, n=n, history=history)


def init_state(problem: Problem, x: Float[Array, "B ..."]) -> StepState:
    """Initial state for rows starting at ``x`` (already projected)."""
    b = x.shape[0]
    state = StepState(
        i=jnp.zeros((), jnp.int32),
        x_prev=x,
        opt_state=_strong(jax.vmap(problem.optimizer.init)(x)),
        code=jnp.full((b,), RUNNING, jnp.int32),
        n=jnp.zeros((b,), jnp.int32),
        history=jnp.zeros((problem.steps, b), x.dtype),
        running=jnp.ones((), bool),
    )
    return _pin(problem, x, state)[1]


def _row_update(problem: Problem, x, x_prev, opt_state, code, n, y, value, grad):
    """The update of one row given its objective value and gradient (see the module docstring)."""
    objective = lambda z: problem.objective(z, y)  # noqa: E731
    active = code == RUNNING
    finite_v = jnp.isfinite(value)
    conv = finite_v & (value <= problem.tol) if problem.tol is not None else jnp.zeros((), bool)
    if isinstance(problem.optimizer, optax.GradientTransformationExtraArgs):
        updates, new_opt = problem.optimizer.update(
            grad, opt_state, x, value=value, grad=grad, value_fn=objective
        )
    else:
        updates, new_opt = problem.optimizer.update(grad, opt_state, x)
    x_new = problem.project(optax.apply_updates(x, updates))
    finite_x = jnp.all(jnp.isfinite(x_new))
    move = active & finite_v & ~conv & finite_x
    bad_v = active & ~finite_v
    bad_x = active & finite_v & ~conv & ~finite_x
    x_out = jnp.where(move, x_new, jnp.where(bad_v, x_prev, x))
    x_prev_out = jnp.where(move, x, x_prev)
    opt_out = jax.tree.map(lambda new, old: jnp.where(move, new, old), new_opt, opt_state)
    code_out = jnp.where(active & conv, CONVERGED, jnp.where(bad_v | bad_x, DIVERGED, code))
    n_out = jnp.where(move, n + 1, jnp.where(bad_v, jnp.maximum(n - 1, 0), n))
    return x_out, x_prev_out, opt_out, code_out, n_out, jnp.where(finite_v, value, 0.0)


def make_step(problem: Problem) -> Callable[[Array, StepState, Array], tuple[Array, StepState]]:
    """The batched step ``step(x, state, targets) -> (x, state)`` (pure; jit it yourself)."""
    row = jax.vmap(lambda *a: _row_update(problem, *a))

    def total(x: Array, targets: Array) -> tuple[Array, Array]:
        values = jax.vmap(problem.objective)(x, targets)
        return jnp.sum(values), values

    # Rows are independent, so the gradient of the sum is every row's own gradient; one batched
    # backward pass is markedly faster than vmap(grad) (measured on the seed U-Net, XLA:CPU).
    value_and_grad = jax.value_and_grad(total, has_aux=True)

    def step(x: Array, state: StepState, targets: Array) -> tuple[Array, StepState]:
        (_, values), grads = value_and_grad(x, targets)
        x, x_prev, opt_state, code, n, value = row(
            x, state.x_prev, state.opt_state, state.code, state.n, targets, values, grads
        )
        value = value.astype(state.history.dtype)  # an objective computed in another dtype
        history = lax.dynamic_update_index_in_dim(state.history, value, state.i, 0)
        state = StepState(
            i=state.i + 1,
            x_prev=x_prev,
            opt_state=_strong(opt_state),
            code=code,
            n=n,
            history=history,
            running=jnp.any(code == RUNNING),
        )
        return _pin(problem, x, state)

    return step


def python_loop(problem: Problem, *, check_every: int = 10):
    """``run(x, state, targets, on_check=None)``: a Python ``for`` over ONE jitted, donating step.

    The host reads ``state.running`` (one scalar) every ``check_every`` steps and stops when no row
    runs; ``on_check(steps_done, state)`` is called at the same moments (progress bars).
    """
    step = jax.jit(make_step(problem), donate_argnums=(0, 1))

    def run(
        x: Array,
        state: StepState,
        targets: Array,
        on_check: Callable[[int, StepState], None] | None = None,
    ) -> tuple[Array, StepState]:
        for i in range(problem.steps):
            x, state = step(x, state, targets)
            done = i + 1
            if done % check_every == 0 or done == problem.steps:
                if on_check is not None:
                    on_check(done, state)
                if not bool(state.running):
                    break
        return x, state

    return run


def compiled_loop(problem: Problem) -> Callable[[Array, StepState, Array], tuple[Array, StepState]]:
    """``run(x, state, targets)``: the whole loop as one program (``lax.scan`` without ``tol``,
    ``lax.while_loop`` stopping when no row runs otherwise)."""
    step = make_step(problem)

    def loop(x, state, targets):
        if problem.tol is None:

            def body(carry, _):
                return step(*carry, targets), None

            (x, state), _ = lax.scan(body, (x, state), None, length=problem.steps)
            return x, state

        def cond(carry):
            return (carry[1].i < problem.steps) & carry[1].running

        return lax.while_loop(cond, lambda c: step(*c, targets), (x, state))

    return jax.jit(loop, donate_argnums=(0, 1))


def finalize(problem: Problem, x: Array, state: StepState, targets: Array):
    """Final objective, residual, status and filled history for every row.

    A row still running whose last iterate has a non-finite objective is reverted to its previous
    iterate and marked 'diverged'. History entries ``j >= n`` are set to the final objective.
    A NaN final objective or residual (only possible when the objective is not finite even at
    the start: such a row is 'diverged' with ``n = 0``) is reported as ``+inf``, so no output
    is NaN. Returns ``(x, history (B, steps), loss, residual, n, code)``.
    """
    objective = jax.vmap(problem.objective)
    bad = ~jnp.isfinite(objective(x, targets)) & (state.code == RUNNING)
    sel = bad.reshape((-1,) + (1,) * (x.ndim - 1))
    x = jnp.where(sel, state.x_prev, x)
    n = jnp.where(bad, jnp.maximum(state.n - 1, 0), state.n)
    code = jnp.where(bad, DIVERGED, state.code)
    pred = jax.vmap(problem.fn)(x)
    loss = jax.vmap(problem.loss)(pred, targets)
    for r in problem.regularizers:
        loss = loss + jax.vmap(r)(x)
    if problem.tol is not None:
        code = jnp.where((code == RUNNING) & (loss <= problem.tol), CONVERGED, code)
    axes = tuple(range(1, targets.ndim))
    err = jnp.sqrt(jnp.sum(jnp.square(pred - targets), axis=axes))
    ref = jnp.sqrt(jnp.sum(jnp.square(targets), axis=axes))
    residual = err / jnp.where(ref > 0, ref, 1.0)
    loss = jnp.where(jnp.isnan(loss), jnp.inf, loss)
    residual = jnp.where(jnp.isnan(residual), jnp.inf, residual)
    history = state.history.T
    history = jnp.where(jnp.arange(problem.steps)[None, :] >= n[:, None], loss[:, None], history)
    return x, history, loss, residual, n, code
