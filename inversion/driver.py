"""Run a flat batch of rows through a loop: chunking, padding, mesh placement, progress bar.

Rows are split into equal chunks (``ceil(B / n)`` rows for the fewest ``n`` chunks within the
limit) and padded (by repeating the last row) to whole chunks whose size is a multiple of the
mesh's device count, so every chunk reuses one compiled program; padded rows are dropped.
Compiled programs are cached per problem (see :func:`programs`).

Without an explicit chunk size, XLA:CPU runs at most :data:`CPU_CHUNK_ROWS` rows per device at
once: the per-row cost of a step stays within 1.57-1.78 ms from 4 to 64 rows on one core and
is 2.10 ms at 128 rows (seed U-Net Adam step, BENCHMARKS.md), so chunking keeps the cost per
target flat and the memory bounded. Accelerators take all rows at once unless told
otherwise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from inversion.loop import Problem, compiled_loop, finalize, init_state, make_step, python_loop

CPU_CHUNK_ROWS = 64  # rows per chunk on XLA:CPU when no chunk size is given (see module doc)


def layout(flat: tuple, group: int | str | None) -> tuple:
    """Rows to the user's layout: ``None`` keeps ``(B, ...)``; ``'single'`` drops the row axis;
    an int ``R`` reshapes ``(N * R, ...)`` to ``(N, R, ...)`` (targets, restarts)."""
    if group is None:
        return flat
    if group == "single":
        return tuple(a[0] for a in flat)
    return tuple(a.reshape((-1, group, *a.shape[1:])) for a in flat)


class Programs(NamedTuple):
    """The jitted pieces of one problem: ``start``, the loop ``run`` and ``finalize``."""

    start: Callable
    run: Callable
    finalize: Callable
    python: bool


def _build(problem: Problem, loop: str, check_every: int) -> Programs:
    @jax.jit
    def start(x, y):
        return init_state(problem, x, y)

    if loop == "python":
        run = python_loop(problem, check_every=check_every)
    else:
        run = compiled_loop(problem)
    fin = jax.jit(
        lambda x, state, y, group: layout(finalize(problem, x, state, y), group), static_argnums=3
    )
    return Programs(start, run, fin, loop == "python")


_build_cached = functools.lru_cache(maxsize=16)(_build)


def programs(problem: Problem, loop: str, check_every: int) -> Programs:
    """Jitted programs for ``problem``, reused across calls when ``problem`` is hashable.

    The 16 most recent problems are kept (with the functions and weights they close over).
    """
    try:
        hash(problem)
    except TypeError:  # e.g. array bounds or a regularizer holding an array
        return _build(problem, loop, check_every)
    return _build_cached(problem, loop, check_every)


def _place(problem: Problem, a: jax.Array | np.ndarray) -> jax.Array:
    """Put ``a`` on the device(s): rows sharded over the mesh (any number of processes)."""
    if problem.sharding is None:
        return jnp.asarray(a)
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, problem.sharding, lambda idx: host[idx])


@functools.partial(jax.jit, static_argnums=(1, 2))
def _assemble(outs: list[tuple], rows: int, group: int | str | None) -> tuple:
    """Concatenate per-chunk outputs, drop padding rows and apply the layout (one program)."""
    flat = tuple(jnp.concatenate(parts, axis=0)[:rows] for parts in zip(*outs, strict=True))
    return layout(flat, group)


def _pad_host(a: np.ndarray, rows: int) -> np.ndarray:
    """Pad the leading axis to ``rows`` by repeating the last row (on host)."""
    extra = rows - a.shape[0]
    return a if extra <= 0 else np.concatenate([a, np.repeat(a[-1:], extra, axis=0)], axis=0)


def _platform(a) -> str:
    """The platform of the device holding ``a`` (the default device for host arrays)."""
    devices = getattr(a, "devices", None)
    if callable(devices):
        return next(iter(devices())).platform
    return jax.devices()[0].platform


def chunking(problem: Problem, x_rows: jax.Array, chunk_rows: int | None) -> tuple[int, int]:
    """``(rows per chunk, number of chunks)`` for solving ``x_rows`` (see the module docstring)."""
    b = x_rows.shape[0]
    ndev = 1 if problem.sharding is None else problem.sharding.mesh.devices.size
    if chunk_rows is None:
        cpu = (
            problem.sharding.mesh.devices.flat[0].platform
            if problem.sharding is not None
            else _platform(x_rows)
        ) == "cpu"
        chunk_rows = CPU_CHUNK_ROWS * ndev if cpu else None
    size = b if chunk_rows is None else math.ceil(b / math.ceil(b / chunk_rows))
    size = math.ceil(size / ndev) * ndev
    return size, math.ceil(b / size)


def solve_rows(
    problem: Problem,
    x_rows: jax.Array,
    y_rows: jax.Array,
    *,
    loop: str,
    chunk_rows: int | None,
    check_every: int,
    progress: bool,
    group: int | str | None = None,
    deadline: float | None = None,
):
    """Solve every row; returns ``(x, history, loss, residual, steps, status_code)`` in the
    layout given by ``group`` (see :func:`layout`).

    One chunk without padding (the common case) runs on the arrays as given. Otherwise rows are
    padded and sliced on host and each chunk is moved to the devices in turn, so device memory
    holds one chunk of inputs and state at a time. ``deadline`` (a ``time.perf_counter()``
    value; Python loop only) stops every running row at the first check after it.
    """
    b = x_rows.shape[0]
    size, n_chunks = chunking(problem, x_rows, chunk_rows)
    whole = n_chunks == 1 and size == b
    if not whole:
        x_rows = _pad_host(np.asarray(x_rows), n_chunks * size)
        y_rows = _pad_host(np.asarray(y_rows), n_chunks * size)

    bar = tqdm(total=problem.steps * n_chunks, disable=not progress, desc="invert")
    offset = [0]

    def on_check(done, state):
        bar.n = offset[0] + done
        bar.set_postfix(loss=float(jnp.mean(state.history[done - 1])), refresh=False)
        bar.refresh()

    prog = programs(problem, loop, check_every)
    outs = []
    for c in range(n_chunks):
        sl = slice(c * size, (c + 1) * size)
        x_c, y_c = _place(problem, x_rows[sl]), _place(problem, y_rows[sl])
        x_c, state = prog.start(x_c, y_c)
        if prog.python:
            x_c, state = prog.run(x_c, state, y_c, on_check if progress else None, deadline)
        else:
            x_c, state = prog.run(x_c, state, y_c)
        outs.append(prog.finalize(x_c, state, y_c, group if whole else None))
        offset[0] += problem.steps
        bar.n = offset[0]
        bar.refresh()
    bar.close()
    if whole:
        return outs[0]  # already in the final layout (done inside the compiled finalize)
    return _assemble(outs, b, group)


def solve_cost(
    problem: Problem, x_rows: jax.Array, y_rows: jax.Array, chunk_rows: int | None = None
) -> dict[str, float]:
    """XLA's cost analysis of one step over all rows, chunked as :func:`solve_rows` would.

    The step program for one chunk is compiled (never run). Returns ``flops`` and
    ``bytes_accessed`` of one step over all chunks and devices (padding rows included: they are
    computed), the buffer sizes of the one-chunk step program on ONE device ``argument_bytes``,
    ``output_bytes`` and ``temp_bytes`` (``0`` where the backend does not report them),
    ``chunk_rows``, ``chunks`` and ``devices`` (rows of a chunk are split over the devices; a
    sharded program's cost analysis describes one device's part).
    """
    size, n_chunks = chunking(problem, x_rows, chunk_rows)
    ndev = 1 if problem.sharding is None else problem.sharding.mesh.devices.size
    x_rows = jax.ShapeDtypeStruct(
        (size, *x_rows.shape[1:]), x_rows.dtype, sharding=problem.sharding
    )
    y_rows = jax.ShapeDtypeStruct(
        (size, *y_rows.shape[1:]), y_rows.dtype, sharding=problem.sharding
    )
    state = jax.eval_shape(lambda x, y: init_state(problem, x, y)[1], x_rows, y_rows)
    compiled = jax.jit(make_step(problem)).lower(x_rows, state, y_rows).compile()
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
