"""The batched driver: start rows, run them in a loop, and hand back every row's result.

One row is one (target, start) pair; rows never interact, so a batch is the per-row problem
under ``jax.vmap``: a step is :func:`inversion.solve.advance` (the rules every driver shares:
the solver's step, ``tol``, divergence, frozen rows) vmapped over rows, and the result of a
row does not depend on the rest of the batch. Two loops drive that step:

* the Python loop: a ``for`` over ONE jitted, buffer-donating step; every ``check_every``
  steps one scalar (any row still running) is read back to stop early, and the clock is
  checked against a deadline. The fast one on XLA:CPU (the default there): the same step
  inside ``lax.while_loop`` took 380 ms instead of 59 ms (seed U-Net, batch 64, two CPU
  devices; jaxlib 0.10, BENCHMARKS.md); outside a loop XLA folds the transposed kernels of the
  input-gradient convolutions into constants, inside one they are loop operands.
* the compiled loop: the same step in one ``lax.while_loop`` program (no per-step dispatch,
  no host round trip); the default on accelerators, and what :func:`solve` runs for one row.

Rows are split into equal chunks (``ceil(B / n)`` rows for the fewest ``n`` chunks within the
limit) and padded (by repeating the last row) to whole chunks whose size is a multiple of the
mesh's device count, so every chunk reuses one compiled program; padded rows are dropped.
Without an explicit chunk size, XLA:CPU runs at most :data:`CPU_CHUNK_ROWS` rows per device at
once: the per-row cost of a step stays within 1.57-1.78 ms from 4 to 64 rows on one core and
is 2.10 ms at 128 rows (seed U-Net Adam step, BENCHMARKS.md), so chunking keeps the cost per
target flat and the memory bounded. Accelerators take all rows at once unless told otherwise.
Compiled programs are cached per :class:`Plan` (see :func:`programs`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array
from tqdm.auto import tqdm

from inversion import checks
from inversion.losses import LossFn
from inversion.objective import Objective
from inversion.result import Result
from inversion.solve import Carry, advance, finish, strong
from inversion.solvers.base import RUNNING, Solver

CPU_CHUNK_ROWS = 64  # rows per chunk on XLA:CPU when no chunk size is given (see module doc)


class Plan(NamedTuple):
    """The validated per-row problem the driver runs (made by :mod:`inversion.engine`).

    Hashable when its parts are (functions hash by identity; scalar bounds are floats), which
    lets the driver reuse compiled programs across calls.
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


def start(objective: Objective, solver: Solver, x0: Array, steps: int) -> Carry:
    """One row before its first step: ``x = P(x0)``, the solver initialised there."""
    x = objective.project(x0)
    return Carry(
        x=x,
        x_prev=x,
        state=strong(solver.init(objective, x)),
        code=jnp.asarray(RUNNING, jnp.int32),
        n=jnp.zeros((), jnp.int32),
        history=jnp.zeros((steps,), jnp.result_type(x)),
    )


def while_loop(step: Callable, carry: Any, steps: int) -> Any:
    """``step(i, carry) -> (carry, running)`` until ``steps`` steps ran or nothing runs, as
    one ``lax.while_loop``."""

    def body(c):
        i, carry, _ = c
        carry, running = step(i, carry)
        return i + 1, carry, running

    def cond(c):
        i, _, running = c
        return (i < steps) & running

    _, carry, _ = lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), carry, jnp.ones((), bool)))
    return carry


def solve(
    objective: Objective, solver: Solver, x0: Array, *, max_steps: int, tol: float | None = None
) -> Result:
    """Minimise ``objective`` from ``x0`` with ``solver`` for at most ``max_steps`` steps.

    Pure and traceable: ``jax.jit(jax.vmap(lambda y, x0: solve(Objective(fn, y), solver, x0,
    max_steps=100)))`` inverts many targets in one program. The row stops early when its
    objective reaches ``tol`` ('converged'), when it diverges, when the gradient is exactly
    zero at the start ('zero_gradient'), or when ``solver.terminate`` says so ('stationary',
    'stalled'); :mod:`inversion.solve` states the rules. It never reads a value back to the
    host: the loop is one ``lax.while_loop`` that stops when the row stops.

    ``x0`` is checked like :func:`inversion.invert`'s (shapes and dtypes through
    ``jax.eval_shape``, so also on traced values; NaN where concrete): it must be a real array
    that ``objective.fn`` maps to ``objective.target``'s shape; an integer ``x0`` is float32, a
    bfloat16/float16 ``x0`` with a float32 ``fn`` is float32. ``max_steps`` is an int (Python or
    NumPy) in ``[1, 2**31 - 1]``; ``tol`` ``None`` or a finite number ``>= 0``.

    Returns a :class:`inversion.Result` for one target: ``x`` (the input's shape),
    ``history`` ``(max_steps,)``, and scalar ``loss``, ``residual``, ``steps`` and
    ``status_code``.
    """
    x0, max_steps, tol = checks.solve_arguments(objective, solver, x0, max_steps, tol)

    def step(i, row):
        row = advance(objective, solver, row, i, tol)
        return row, row.code == RUNNING

    row = while_loop(step, start(objective, solver, x0, max_steps), max_steps)
    return Result(*finish(objective, row, tol))


# -- the batched step and its loops ----------------------------------------------------------


def _pin(plan: Plan, carry: Carry) -> Carry:
    """Pin the row axis of every array in ``carry`` to the mesh (no-op without a mesh), so
    that the step's input and output shardings agree (one compilation) and rows never move
    between devices."""
    if plan.sharding is None:
        return carry
    return jax.tree.map(lambda a: lax.with_sharding_constraint(a, plan.sharding), carry)


def make_step(plan: Plan) -> Callable[[Array, Carry, Array], tuple[Carry, Array]]:
    """The batched step ``step(i, carry, targets) -> (carry, any row still running)`` (pure;
    jit it yourself)."""

    def step(i: Array, carry: Carry, targets: Array) -> tuple[Carry, Array]:
        # i is shared by every row (not vmapped): history[:, i] is one slice update
        rows = jax.vmap(lambda row, y: advance(plan.objective(y), plan.solver, row, i, plan.tol))
        carry = _pin(plan, rows(carry, targets))
        return carry, jnp.any(carry.code == RUNNING)

    return step


def layout(flat: tuple, group: int | str | None) -> tuple:
    """Rows to the user's layout: ``None`` keeps ``(B, ...)``; ``'single'`` drops the row axis;
    an int ``R`` reshapes ``(N * R, ...)`` to ``(N, R, ...)`` (targets, restarts)."""
    if group is None:
        return flat
    if group == "single":
        return tuple(a[0] for a in flat)
    return tuple(a.reshape((-1, group, *a.shape[1:])) for a in flat)


class Programs(NamedTuple):
    """The jitted pieces of one plan: ``start`` (:func:`start` on every row), one ``step``,
    the whole ``loop`` and ``finish``."""

    start: Callable
    step: Callable
    loop: Callable
    finish: Callable


def _build(plan: Plan) -> Programs:
    step = make_step(plan)

    def loop(carry, targets):
        return while_loop(lambda i, c: step(i, c, targets), carry, plan.steps)

    def finish_rows(carry, targets, group):
        rows = jax.vmap(lambda row, y: finish(plan.objective(y), row, plan.tol))
        return layout(rows(carry, targets), group)

    return Programs(
        start=jax.jit(
            jax.vmap(lambda x, y: start(plan.objective(y), plan.solver, x, plan.steps)),
            out_shardings=plan.sharding,  # the row axis on the mesh, as the step keeps it
        ),
        step=jax.jit(step, donate_argnums=(1,)),
        loop=jax.jit(loop, donate_argnums=(0,)),
        finish=jax.jit(finish_rows, static_argnums=2),
    )


_build_cached = functools.lru_cache(maxsize=16)(_build)


def programs(plan: Plan) -> Programs:
    """Jitted programs for ``plan``, reused across calls when ``plan`` is hashable (the 16
    most recent plans are kept, with the functions and weights they close over)."""
    try:
        hash(plan)
    except TypeError:  # e.g. array bounds or a regularizer holding an array
        return _build(plan)
    return _build_cached(plan)


def python_loop(
    prog: Programs,
    carry: Carry,
    targets: Array,
    *,
    steps: int,
    check_every: int,
    deadline: float | None = None,
    on_check: Callable[[int, Carry], None] | None = None,
) -> Carry:
    """Run ``prog.step`` from Python; every ``check_every`` steps read back whether any row
    runs (stop when none does, or when ``time.perf_counter()`` has passed ``deadline``) and
    call ``on_check(steps_done, carry)`` (progress bars)."""
    for i in range(steps):
        carry, running = prog.step(jnp.asarray(i, jnp.int32), carry, targets)
        done = i + 1
        if done % check_every == 0 or done == steps:
            if on_check is not None:
                on_check(done, carry)
            if not bool(running):
                break
            if deadline is not None and time.perf_counter() >= deadline:
                break
    return carry


# -- chunks, placement and the whole run ------------------------------------------------------


def _place(plan: Plan, a: jax.Array | np.ndarray) -> jax.Array:
    """Put ``a`` on the device(s): rows sharded over the mesh (any number of processes)."""
    if plan.sharding is None:
        return jnp.asarray(a)
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, plan.sharding, lambda idx: host[idx])


@functools.partial(jax.jit, static_argnums=(1, 2))
def _assemble(outs: list[tuple], rows: int, group: int | str | None) -> tuple:
    """Concatenate per-chunk outputs, drop padding rows and apply the layout (one program)."""
    flat = tuple(jnp.concatenate(parts, axis=0)[:rows] for parts in zip(*outs, strict=True))
    return layout(flat, group)


def _pad_host(a: np.ndarray, rows: int) -> np.ndarray:
    """Pad the leading axis to ``rows`` by repeating the last row (on host)."""
    extra = rows - a.shape[0]
    return a if extra <= 0 else np.concatenate([a, np.repeat(a[-1:], extra, axis=0)], axis=0)


def _platform(plan: Plan, a) -> str:
    """The platform the rows run on: the mesh's, else that of the device holding ``a``."""
    if plan.sharding is not None:
        return plan.sharding.mesh.devices.flat[0].platform
    devices = getattr(a, "devices", None)
    if callable(devices):
        return next(iter(devices())).platform
    return jax.devices()[0].platform


def chunking(plan: Plan, x_rows: jax.Array, chunk_rows: int | None) -> tuple[int, int]:
    """``(rows per chunk, number of chunks)`` for ``x_rows`` at most ``chunk_rows`` rows at a
    time (see the module docstring)."""
    b = x_rows.shape[0]
    ndev = 1 if plan.sharding is None else plan.sharding.mesh.devices.size
    if chunk_rows is None and _platform(plan, x_rows) == "cpu":
        chunk_rows = CPU_CHUNK_ROWS * ndev
    size = b if chunk_rows is None else math.ceil(b / math.ceil(b / chunk_rows))
    size = math.ceil(size / ndev) * ndev
    return size, math.ceil(b / size)


def run(
    plan: Plan,
    x0: jax.Array,
    targets: jax.Array,
    *,
    loop: str,
    chunk_rows: int | None,
    check_every: int,
    progress: bool,
    group: int | str | None = None,
    deadline: float | None = None,
) -> tuple:
    """Solve every row; returns ``(x, history, loss, residual, steps, status_code)`` in the
    layout given by ``group`` (see :func:`layout`).

    ``x0`` and ``targets`` hold one row each along the leading axis. One chunk without padding
    (the common case) runs on the arrays as given. Otherwise rows are padded and sliced on host
    and each chunk is moved to the devices in turn, so device memory holds one chunk of inputs
    and state at a time. ``deadline`` (a ``time.perf_counter()`` value; Python loop only) stops
    every running row at the first check after it.
    """
    b = x0.shape[0]
    size, n_chunks = chunking(plan, x0, chunk_rows)
    whole = n_chunks == 1 and size == b
    if not whole:
        x0 = _pad_host(np.asarray(x0), n_chunks * size)
        targets = _pad_host(np.asarray(targets), n_chunks * size)

    bar = tqdm(total=plan.steps * n_chunks, disable=not progress, desc="invert")
    offset = [0]

    def on_check(done: int, carry: Carry) -> None:
        bar.n = offset[0] + done
        bar.set_postfix(loss=float(jnp.mean(carry.history[:, done - 1])), refresh=False)
        bar.refresh()

    prog = programs(plan)
    outs = []
    for c in range(n_chunks):
        rows = slice(c * size, (c + 1) * size)
        y_c = _place(plan, targets[rows])
        carry = prog.start(_place(plan, x0[rows]), y_c)
        if loop == "python":
            carry = python_loop(
                prog,
                carry,
                y_c,
                steps=plan.steps,
                check_every=check_every,
                deadline=deadline,
                on_check=on_check if progress else None,
            )
        else:
            carry = prog.loop(carry, y_c)
        outs.append(prog.finish(carry, y_c, group if whole else None))
        offset[0] += plan.steps
        bar.n = offset[0]
        bar.refresh()
    bar.close()
    if whole:
        return outs[0]  # already in the final layout (done inside the compiled finish)
    return _assemble(outs, b, group)


def step_cost(
    plan: Plan, x0: jax.Array, targets: jax.Array, chunk_rows: int | None = None
) -> dict[str, float]:
    """XLA's cost analysis of one step over all rows, chunked as :func:`run` would.

    The step program for one chunk is compiled (never run). Returns ``flops`` and
    ``bytes_accessed`` of one step over all chunks and devices (padding rows included: they are
    computed), the buffer sizes of the one-chunk step program on ONE device ``argument_bytes``,
    ``output_bytes`` and ``temp_bytes`` (``0`` where the backend does not report them),
    ``chunk_rows``, ``chunks`` and ``devices`` (rows of a chunk are split over the devices; a
    sharded program's cost analysis describes one device's part).
    """
    size, n_chunks = chunking(plan, x0, chunk_rows)
    ndev = 1 if plan.sharding is None else plan.sharding.mesh.devices.size
    x_struct = jax.ShapeDtypeStruct((size, *x0.shape[1:]), x0.dtype, sharding=plan.sharding)
    y_struct = jax.ShapeDtypeStruct(
        (size, *targets.shape[1:]), targets.dtype, sharding=plan.sharding
    )
    carry = jax.eval_shape(programs(plan).start, x_struct, y_struct)
    i = jax.ShapeDtypeStruct((), jnp.int32)
    compiled = jax.jit(make_step(plan)).lower(i, carry, y_struct).compile()
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, list | tuple) else (cost or {})
    out = {
        "flops": n_chunks * ndev * float(cost.get("flops", 0.0)),
        "bytes_accessed": n_chunks * ndev * float(cost.get("bytes accessed", 0.0)),
        "chunk_rows": size,
        "chunks": n_chunks,
        "devices": ndev,
    }
    try:
        mem = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        mem = None
    for name in ("argument", "output", "temp"):
        out[f"{name}_bytes"] = float(getattr(mem, f"{name}_size_in_bytes", 0) or 0)
    return out
