"""The batched inversion step and the two loops that drive it, on a flat batch of ``B`` rows.

One row is one (target, start) pair; rows never interact, so a batch is the per-row problem
under ``jax.vmap``: the step is :func:`inversion.solve.advance` (the rules every driver
shares: the solver's step, ``tol``, divergence, frozen rows) vmapped over rows, and the result
of a row does not depend on the rest of the batch. (One batched backward pass of ``sum_r J_r``
and ``vmap(grad J)`` cost the same on the seed U-Net at batch 64: 20.1-23.5 ms vs 21.7-22.0
ms per value-and-gradient, two CPU devices, measured when the solvers were introduced.) So
both loops, any chunking and any batch size give the same per-row answer.

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

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from inversion.losses import LossFn
from inversion.objective import Objective
from inversion.solve import Row, advance, finish, start, strong
from inversion.solvers.base import RUNNING, Solver


class Problem(NamedTuple):
    """Static description of the per-row problem (closed over by the compiled step).

    ``loss`` is the loss as the user gave it (a name or a callable), ``solver`` an
    :class:`inversion.solvers.Solver`. Hashable when its parts are (functions hash by identity;
    scalar bounds are floats), which lets the engine reuse compiled programs across calls.
    """

    fn: Callable[[Array], Array]
    loss: str | LossFn
    regularizers: tuple[Callable[[Array], Array], ...]
    solver: Solver
    steps: int
    bounds: tuple[float | Array, float | Array] | None = None
    tol: float | None = None
    sharding: Any = None  # NamedSharding of the row axis, or None

    def objective(self, y: Array) -> Objective:
        """The :class:`inversion.Objective` of one row with target ``y``."""
        return Objective(
            self.fn, y, loss=self.loss, regularizers=self.regularizers, bounds=self.bounds
        )

    def value(self, x: Array, y: Array) -> Array:
        """``J(x) = L(fn(x), y) + sum_k R_k(x)`` for one row."""
        return self.objective(y).value(x)


class StepState(NamedTuple):
    """Everything a step carries besides ``x`` (optax style: explicit, no hidden state)."""

    i: Int[Array, ""]  # index of the next step
    x_prev: Float[Array, "B ..."]  # previous iterate, returned if the current one blows up
    solver_state: Any  # the solver's state, one per row (vmapped init)
    code: Int[Array, " B"]  # RUNNING (= MAX_STEPS) or a final status (inversion.result)
    n: Int[Array, " B"]  # solver steps applied to each row
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


def _pin(problem: Problem, x: Array, state: StepState) -> tuple[Array, StepState]:
    """Pin every per-row array to the row sharding, so that the step's input and output
    shardings agree (one compilation) and rows never move between devices."""
    rows = _constrain(problem, (x, state.x_prev, state.solver_state, state.code, state.n))
    x, x_prev, solver_state, code, n = rows
    history = _constrain(problem, state.history, axis=1)
    return x, state._replace(
        x_prev=x_prev, solver_state=solver_state, code=code, n=n, history=history
    )


def init_state(
    problem: Problem, x: Float[Array, "B ..."], targets: Array
) -> tuple[Array, StepState]:
    """``(P(x), state)`` for rows starting at ``x`` (projected onto the bounds here)."""
    rows = jax.vmap(lambda x, y: start(problem.objective(y), problem.solver, x))(x, targets)
    b = x.shape[0]
    state = StepState(
        i=jnp.zeros((), jnp.int32),
        x_prev=rows.x_prev,
        solver_state=strong(rows.state),
        code=rows.code,
        n=rows.n,
        history=jnp.zeros((problem.steps, b), rows.x.dtype),
        running=jnp.ones((), bool),
    )
    return _pin(problem, rows.x, state)


def make_step(problem: Problem) -> Callable[[Array, StepState, Array], tuple[Array, StepState]]:
    """The batched step ``step(x, state, targets) -> (x, state)`` (pure; jit it yourself)."""

    def one(x, x_prev, solver_state, code, n, y):
        row = Row(x, x_prev, solver_state, code, n)
        return advance(problem.objective(y), problem.solver, row, problem.tol)

    rows = jax.vmap(one)

    def step(x: Array, state: StepState, targets: Array) -> tuple[Array, StepState]:
        row, value = rows(x, state.x_prev, state.solver_state, state.code, state.n, targets)
        value = value.astype(state.history.dtype)  # an objective computed in another dtype
        history = lax.dynamic_update_index_in_dim(state.history, value, state.i, 0)
        state = StepState(
            i=state.i + 1,
            x_prev=row.x_prev,
            solver_state=strong(row.state),
            code=row.code,
            n=row.n,
            history=history,
            running=jnp.any(row.code == RUNNING),
        )
        return _pin(problem, row.x, state)

    return step


def python_loop(problem: Problem, *, check_every: int = 10):
    """``run(x, state, targets, on_check=None)``: a Python ``for`` over ONE jitted, donating step.

    The host reads ``state.running`` (one scalar) every ``check_every`` steps and stops when no row
    runs, or when ``time.perf_counter()`` has passed ``deadline``; ``on_check(steps_done,
    state)`` is called at the same moments (progress bars).
    """
    step = jax.jit(make_step(problem), donate_argnums=(0, 1))

    def run(
        x: Array,
        state: StepState,
        targets: Array,
        on_check: Callable[[int, StepState], None] | None = None,
        deadline: float | None = None,
    ) -> tuple[Array, StepState]:
        for i in range(problem.steps):
            x, state = step(x, state, targets)
            done = i + 1
            if done % check_every == 0 or done == problem.steps:
                if on_check is not None:
                    on_check(done, state)
                if not bool(state.running):
                    break
                if deadline is not None and time.perf_counter() >= deadline:
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
    """Final ``(x, history (B, steps), loss, residual, n, code)`` of every row
    (:func:`inversion.solve.finish`, vmapped)."""

    def one(x, x_prev, solver_state, code, n, history, y):
        row = Row(x, x_prev, solver_state, code, n)
        return finish(problem.objective(y), row, history, problem.tol)

    return jax.vmap(one)(
        x, state.x_prev, state.solver_state, state.code, state.n, state.history.T, targets
    )
