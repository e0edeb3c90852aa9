"""Gradient-based inversion: find ``x`` with ``fn(x) ~ y``, driven from the host.

``J(x) = L(fn(x), y) + sum_k R_k(x)`` is minimised by a solver of :mod:`inversion.solvers`
(default: projected Adam, ``solvers.Optax(optax.adam(1e-2))``), optionally within box bounds.
``invert`` solves one target; ``invert_batch`` solves many (and several random restarts each)
as ONE batched problem: the per-row rules of :mod:`inversion.solve` are ``vmap``-ed over rows,
chunked to bound memory and optionally sharded over a device mesh. Rows never interact, so a
batch gives the same answer as separate ``invert`` calls. This module is the host-side driver
(validation before anything compiles, starts, chunking, the device split, progress bar, early
stop, time limit); :func:`inversion.solve` is the same computation as one pure, traceable
function. See :mod:`inversion.loop` for the batched step and :mod:`inversion.result` for the
result layout.

Invert logits, not saturated probabilities: where ``fn`` ends in a sigmoid (or softmax) that
saturates at the start, ``grad J`` is exactly 0 in floating point and no gradient-based solver
can move. Such a row stops at once with status ``'zero_gradient'`` (0 steps, ``x = x0``) and
the call warns (``RuntimeWarning``); invert the pre-activation output instead
(``models.feature_fn(model, name)`` cuts a network before its final sigmoid).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from inversion import cpu_devices
from inversion import checks as chk
from inversion import regularizers as regs
from inversion.driver import solve_cost, solve_rows
from inversion.loop import Problem
from inversion.losses import LossFn, get_loss
from inversion.result import ZERO_GRADIENT, Result
from inversion.solvers import Optax, Solver

DEFAULT_INIT_SCALE = 0.1


def resolve_solver(solver, optimizer, learning_rate) -> Solver:
    """``solver`` if given (then ``optimizer``/``learning_rate`` must be unset), else
    ``Optax(optimizer)`` with the optimizer resolved by name (default Adam, lr 1e-2)."""
    if solver is None:
        return Optax(chk.resolve_optimizer(optimizer, learning_rate))
    if not isinstance(solver, Solver):
        raise TypeError(
            "solver must be None or an inversion.solvers.Solver (e.g. solvers.LBFGS()), got "
            f"{type(solver).__name__}"
        )
    if optimizer is not None or learning_rate is not None:
        raise ValueError(
            "give either solver= or optimizer=/learning_rate= (an optimizer is a solver: "
            "solvers.Optax(optax.adam(lr))), not both"
        )
    return solver


class Setup(NamedTuple):
    """What :func:`_setup` validated and resolved for the drivers."""

    problem: Problem  # the per-row problem (fn, loss, regularizers, solver, steps, bounds, ...)
    x0: jax.Array | None  # the start as given, cast to the working dtype, or None
    x_shape: tuple[int, ...]  # one input's shape
    dtype: Any  # the working dtype of x
    target_dtype: Any  # the dtype of fn's output (targets are cast to it)
    loop: str  # 'python' or 'compiled'
    check_every: int
    init_scale: float


def _setup(
    fn,
    target_shape,
    x0,
    x_shape,
    *,
    lead,
    key,
    loss,
    solver,
    optimizer,
    learning_rate,
    steps,
    regularizers,
    bounds,
    tol,
    loop,
    init_scale,
    check_every,
    mesh,
    rows=1,
):
    """Validate everything shared by ``invert``/``invert_batch`` (nothing is compiled here).

    ``lead`` is the number of leading axes of ``x0`` before one input's shape; ``rows`` the
    number of rows to solve (on CPU without a mesh, enough rows are split over the CPU devices,
    see :mod:`inversion.cpu_devices`). Returns a :class:`Setup`.
    """
    chk.check_callable("fn", fn)
    key = chk.check_key(key)
    steps = chk.check_int("steps", steps, minimum=1)
    check_every = chk.check_int("check_every", check_every, minimum=1)
    init_scale = chk.check_real("init_scale", init_scale, positive=True)
    get_loss(loss)  # validates the name or callable
    solver = resolve_solver(solver, optimizer, learning_rate)
    reg_tuple = regs.as_tuple(regularizers)
    if tol is not None:
        tol = chk.check_real("tol", tol)
    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__}")
    platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
    if mesh is None and platform == "cpu":
        mesh = cpu_devices.cpu_mesh(rows)  # data-parallel over the CPU devices, when several
    loop = chk.check_loop(loop, platform=platform)
    if x0 is None and x_shape is None:
        raise ValueError("give x0 (a starting input) or x_shape (one input's shape); got neither")
    x_shape = chk.check_x_shape(x_shape)
    if x0 is not None:
        x0 = chk.as_finite_array("x0", x0)
        got = tuple(x0.shape[lead:])
        if x_shape is not None and got != x_shape:
            raise ValueError(
                f"x0 has shape {tuple(x0.shape)}, i.e. inputs of shape {got}, but "
                f"x_shape is {x_shape}; expected them to agree"
            )
        chk.check_input_size("x0", got, x0.shape)
        x_shape, dtype = got, x0.dtype
    else:
        dtype = np.dtype(jnp.float32)
    out = chk.output_struct(fn, x_shape, dtype)
    work = chk.working_dtype(dtype, out.dtype)
    if work != dtype:  # e.g. a bfloat16 x0 and a float32 fn: invert in float32
        dtype = work
        x0 = None if x0 is None else x0.astype(work)
        out = chk.output_struct(fn, x_shape, dtype)
    chk.check_output_size(out.shape, x_shape)
    chk.check_target_shape("target", target_shape, out.shape, x_shape)
    bounds = chk.check_bounds(bounds, x_shape, dtype)
    sharding = None
    if mesh is not None:
        spec = jax.sharding.PartitionSpec(tuple(mesh.axis_names))
        sharding = jax.sharding.NamedSharding(mesh, spec)
    problem = Problem(
        fn=fn,
        loss=loss,
        regularizers=reg_tuple,
        solver=solver,
        steps=steps,
        bounds=bounds,
        tol=tol,
        sharding=sharding,
    )
    y_struct = jax.ShapeDtypeStruct(out.shape, out.dtype)
    solver.check(problem.objective(jnp.zeros(out.shape, out.dtype)))
    _check_objective(problem, jax.ShapeDtypeStruct(x_shape, dtype), y_struct)
    return Setup(problem, x0, x_shape, dtype, out.dtype, loop, check_every, init_scale)


@functools.lru_cache(maxsize=64)
def _check_objective_cached(problem: Problem, x_struct, y_struct) -> None:
    chk.check_objective(problem.value, x_struct, y_struct)


def _check_objective(problem: Problem, x_struct, y_struct) -> None:
    """``chk.check_objective``, remembered for hashable problems: the check traces ``fn`` (tens
    of milliseconds for a U-Net), which repeated calls on the same problem need not redo."""
    try:
        hash(problem)
    except TypeError:
        chk.check_objective(problem.value, x_struct, y_struct)
        return
    _check_objective_cached(problem, x_struct, y_struct)


def _deadline(time_limit, loop) -> tuple[float | None, str]:
    """``(deadline on time.perf_counter's clock or None, loop)``: a time limit needs the Python
    loop (the host checks the clock between steps)."""
    if time_limit is None:
        return None, loop
    time_limit = chk.check_real("time_limit", time_limit, positive=True)
    if loop == "compiled":
        raise ValueError(
            "time_limit needs loop='python' or 'auto' (the host checks the clock between "
            "steps); got loop='compiled'"
        )
    return time.perf_counter() + time_limit, "python" if loop == "auto" else loop


@jax.jit
def _count_zero_gradient(code: jax.Array) -> jax.Array:
    return jnp.sum(code == ZERO_GRADIENT)


def warn_zero_gradient(code: jax.Array, *, stacklevel: int = 3) -> int:
    """Warn (``RuntimeWarning``) when any row ended with status ``'zero_gradient'``; returns how
    many did. Reads one scalar back to the host (a replicated sum, so sharded results over
    several processes work too)."""
    count = int(_count_zero_gradient(code))
    if count:
        rows = int(np.prod(np.shape(code)))
        warnings.warn(
            f"{count} of {rows} row{'s' if rows != 1 else ''} stopped at the start with status "
            "'zero_gradient': the gradient of the objective with respect to the input is "
            "exactly 0 there while the objective is not (e.g. a saturated sigmoid), so no "
            "gradient-based solver can move. Invert logits (pre-activation) rather than "
            "saturated probabilities; models.feature_fn(model, name) cuts the network before "
            "its final sigmoid.",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    return count


def _random_start(key, shape, dtype, scale):
    return scale * jax.random.normal(key, shape, dtype)


def invert(
    fn: Callable[[Array], Array],
    target: Float[Array, "..."],
    *,
    x0: Float[Array, "..."] | None = None,
    x_shape: Sequence[int] | None = None,
    key: jax.Array | None = None,
    init_scale: float = DEFAULT_INIT_SCALE,
    loss: str | LossFn = "mse",
    solver: Solver | None = None,
    optimizer: str | optax.GradientTransformation | None = None,
    learning_rate: float | None = None,
    steps: int = 500,
    regularizers: Any = (),
    bounds: tuple[Any, Any] | None = None,
    tol: float | None = None,
    loop: str = "auto",
    check_every: int = 10,
    time_limit: float | None = None,
    progress: bool = False,
) -> Result:
    """Recover one input ``x`` with ``fn(x) ~ target``.

    Minimises ``J(x) = L(fn(x), target) + sum_k R_k(x)`` over ``x`` with gradients ``jax.grad``
    w.r.t. the input. The start is ``x0`` if given, else ``init_scale * N(0, I)`` drawn with
    ``key`` in shape ``x_shape``, else zeros of ``x_shape`` (``key`` is used only without
    ``x0``).

    Precision: the inversion runs in ``jnp.promote_types(dtype of x0, dtype of fn's output)``
    (float32 without ``x0``); a bfloat16 or float16 ``x0`` with a float32 ``fn`` is cast to
    float32 before anything runs, and ``Result.x`` is float32. Integer or boolean ``x0`` is
    float32; complex ``target`` or ``x0`` is a ``TypeError``.

    The options, by what they describe:

    Problem (what is minimised; :class:`inversion.Objective` holds the same for one target):
        fn: pure map from one input to one output (close over the weights).
        target: the output ``y`` to match; its shape must be ``fn``'s output shape.
        loss: ``'mse'``, ``'normalized'``, ``'cosine'`` or a callable ``(pred, target) -> scalar``.
        regularizers: a callable ``x -> penalty`` or a tuple of them (:mod:`regularizers`).
        bounds: ``(lo, hi)``; ``x`` is clipped into the box at the start and after every step.

    Solver (how):
        solver: an :mod:`inversion.solvers` object (``solvers.LBFGS()``,
            ``solvers.LevenbergMarquardt()``, ``solvers.Optax(tx)``, ...); ``None`` uses
            ``optimizer``. Give one or the other.
        optimizer: ``None`` (``optax.adam(1e-2)``), ``'adam'``, ``'sgd'`` (lr 1e-2), ``'lbfgs'``
            (optax's, zoom line search) or any ``optax.GradientTransformation``; extra-args
            transformations (``optax.lbfgs()``) receive ``value``, ``grad`` and ``value_fn``.
        learning_rate: learning rate for an optimizer given by name.
        steps: maximum number of solver steps (>= 1); ``history`` has this length.
        tol: stop with status ``'converged'`` once ``J(x) <= tol``.

    Start (from where):
        x0: the starting input (its shape is the input shape).
        x_shape: one input's shape (positive ints), needed when ``x0`` is not given.
        key: ONE ``jax.random.key`` (shape ``()``; a raw ``jax.random.PRNGKey`` also works) for
            a random start ``init_scale * N(0, I)`` (without ``x0``).
        init_scale: standard deviation of the random start (default 0.1).

    Execution (on what, how often the host looks):
        loop: ``'python'`` (jitted step driven from Python; best on XLA:CPU), ``'compiled'``
            (``lax.scan`` / ``lax.while_loop``; best on GPU/TPU) or ``'auto'`` (by backend).
        check_every: the Python loop reads one flag back every this many steps to stop early.
        time_limit: stop every row still running once this many seconds of wall time have
            passed since the call (checked every ``check_every`` steps, so compilation counts;
            such rows end as 'max_steps' with fewer ``steps``). Runs the Python loop; the
            result then depends on the machine's speed.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`Result` with ``x`` of ``target``'s input shape and scalar ``loss``, ``residual``
        (``||fn(x) - y|| / ||y||``), ``steps`` and ``status``. A start where ``grad J`` is
        exactly 0 (and ``J`` is not) ends at once with status ``'zero_gradient'`` and a
        ``RuntimeWarning``: invert logits, not saturated probabilities (module docstring).

    Raises:
        ValueError / TypeError: for bad arguments, before anything compiles.
    """
    chk.check_real_dtype("target", target)
    target_shape = tuple(np.shape(target))
    deadline, loop = _deadline(time_limit, loop)
    problem, x0, xs, dtype, ydtype, loop, check_every, init_scale = _setup(
        fn,
        target_shape,
        x0,
        x_shape,
        lead=0,
        key=key,
        loss=loss,
        solver=solver,
        optimizer=optimizer,
        learning_rate=learning_rate,
        steps=steps,
        regularizers=regularizers,
        bounds=bounds,
        tol=tol,
        loop=loop,
        init_scale=init_scale,
        check_every=check_every,
        mesh=None,
    )
    target = chk.as_finite_array("target", target, ydtype)
    if x0 is None:
        x0 = _random_start(key, xs, dtype, init_scale) if key is not None else jnp.zeros(xs, dtype)
    x0 = x0[None]
    out = solve_rows(
        problem,
        x0,
        target[None],
        loop=loop,
        chunk_rows=None,
        check_every=check_every,
        progress=progress,
        deadline=deadline,
        group="single",
    )
    warn_zero_gradient(out[5])
    return Result(*out, restarts=0)


def invert_batch(
    fn: Callable[[Array], Array],
    targets: Float[Array, "n ..."],
    *,
    x0: Float[Array, "n ..."] | None = None,
    x_shape: Sequence[int] | None = None,
    key: jax.Array | None = None,
    restarts: int = 1,
    mesh: jax.sharding.Mesh | None = None,
    chunk: int | None = None,
    init_scale: float = DEFAULT_INIT_SCALE,
    loss: str | LossFn = "mse",
    solver: Solver | None = None,
    optimizer: str | optax.GradientTransformation | None = None,
    learning_rate: float | None = None,
    steps: int = 500,
    regularizers: Any = (),
    bounds: tuple[Any, Any] | None = None,
    tol: float | None = None,
    loop: str = "auto",
    check_every: int = 10,
    time_limit: float | None = None,
    progress: bool = False,
) -> Result:
    """Invert ``N`` targets (leading axis of ``targets``), each like :func:`invert`.

    ``fn`` is the per-target map (exactly what :func:`invert` takes); it is ``vmap``-ed over
    targets and restarts, so entry ``n`` equals ``invert(fn, targets[n], ...)`` with the same
    start. Starts: ``restarts == 1``: ``x0`` of shape ``(N, *xs)``, else ``init_scale * N(0, I)``
    drawn with ``key`` (the same start for every target, as ``invert`` would draw), else zeros.
    ``restarts = R > 1``: ``x0`` of shape ``(N, R, *xs)``, or with ``key`` restart ``r`` of every
    target starts at ``init_scale * normal(jax.random.split(key, R)[r], xs)``; ``Result.x`` then
    has shape ``(N, R, *xs)`` and :meth:`Result.best` picks the lowest-loss restart per target.
    Precision and argument types as in :func:`invert`. A row (target or restart) whose gradient
    is exactly 0 at its start ends there with status ``'zero_gradient'`` while the other rows go
    on; one ``RuntimeWarning`` names how many rows did.

    Start (besides ``x0``, ``x_shape``, ``key``, ``init_scale``):
        restarts: starts per target (see above).

    Execution (besides ``loop``, ``check_every``, ``time_limit``, ``progress``):
        chunk: solve at most this many targets (times restarts) at once; results are identical.
            ``None``: all at once on accelerators, at most 64 rows (targets × restarts) per
            device at a time on CPU, where larger batches cost more per target (see
            :mod:`inversion.driver`).
        mesh: a ``jax.sharding.Mesh``; rows are sharded along the leading axis over all of its
            devices (``NamedSharding(mesh, P(mesh.axis_names))``), padded to a multiple of the
            device count. With several processes (after ``jax.distributed.initialize``) pass the
            same host (numpy) arrays on every process; results are global arrays. ``None`` on a
            CPU with several CPU devices (one per core after ``cpu_devices.configure()``, see
            :mod:`inversion.cpu_devices`) and at least one row per device: all CPU devices.
        other options: as in :func:`invert`.
    """
    restarts = chk.check_int("restarts", restarts, minimum=1)
    deadline, loop = _deadline(time_limit, loop)
    if chunk is not None:
        chunk = chk.check_int("chunk", chunk, minimum=1)
    chk.check_real_dtype("targets", targets)
    t_shape = tuple(np.shape(targets))
    if len(t_shape) < 1 or t_shape[0] < 1:
        raise ValueError(f"targets must have a leading axis of N >= 1 targets, got {t_shape}")
    n = t_shape[0]
    lead = 2 if restarts > 1 else 1
    if x0 is not None:
        chk.check_real_dtype("x0", x0)
        want = (n, restarts) if restarts > 1 else (n,)
        if tuple(np.shape(x0)[:lead]) != want:
            raise ValueError(
                f"x0 has shape {tuple(np.shape(x0))}; expected leading axes {want} "
                f"(targets{', restarts' if restarts > 1 else ''})"
            )
    elif restarts > 1 and key is None:
        raise ValueError(
            f"restarts={restarts} needs a key (random starts) or x0 of shape "
            "(N, restarts, *x_shape); got neither"
        )
    problem, x0, xs, dtype, ydtype, loop, check_every, init_scale = _setup(
        fn,
        t_shape[1:],
        x0,
        x_shape,
        lead=lead,
        key=key,
        loss=loss,
        solver=solver,
        optimizer=optimizer,
        learning_rate=learning_rate,
        steps=steps,
        regularizers=regularizers,
        bounds=bounds,
        tol=tol,
        loop=loop,
        init_scale=init_scale,
        check_every=check_every,
        mesh=mesh,
        rows=n * restarts,
    )
    targets = chk.as_finite_array("targets", targets, ydtype)
    if x0 is None:
        if restarts > 1:
            keys = jax.random.split(key, restarts)
            starts = jax.vmap(lambda k: _random_start(k, xs, dtype, init_scale))(keys)
        elif key is not None:
            starts = _random_start(key, xs, dtype, init_scale)[None]
        else:
            starts = jnp.zeros((1, *xs), dtype)
        x0 = jnp.broadcast_to(starts[None], (n, restarts, *xs))
    x_rows = x0.reshape((n * restarts, *xs))
    y_rows = jnp.repeat(targets, restarts, axis=0) if restarts > 1 else targets
    chunk_rows = None if chunk is None else chunk * restarts
    out = solve_rows(
        problem,
        x_rows,
        y_rows,
        loop=loop,
        chunk_rows=chunk_rows,
        check_every=check_every,
        progress=progress,
        deadline=deadline,
        group=restarts if restarts > 1 else None,
    )
    warn_zero_gradient(out[5])
    return Result(*out, restarts=restarts if restarts > 1 else 0)


def step_cost(
    fn: Callable[[Array], Array],
    targets: Float[Array, "n ..."],
    *,
    x0: Float[Array, "n ..."],
    loss: str | LossFn = "mse",
    solver: Solver | None = None,
    optimizer: str | optax.GradientTransformation | None = None,
    learning_rate: float | None = None,
    steps: int = 500,
    regularizers: Any = (),
    bounds: tuple[Any, Any] | None = None,
    tol: float | None = None,
    chunk: int | None = None,
) -> dict[str, float]:
    """XLA's static cost of ONE step of :func:`invert_batch` over these rows.

    Compiles (without running) the step program ``invert_batch`` would run for starts ``x0``
    (one row each, shape ``(N, *xs)``) and ``targets``, chunked the same way, and returns XLA's
    cost analysis: ``flops`` (floating-point operations of one step over all ``N`` rows: forward,
    input-gradient and optimiser update), ``bytes_accessed``, the one-chunk program's buffer
    sizes ``argument_bytes``, ``output_bytes``, ``temp_bytes`` (``0`` where the backend does
    not report one), and ``chunk_rows``, ``chunks``.
    """
    chk.check_real_dtype("targets", targets)
    chk.check_real_dtype("x0", x0)
    t_shape, x_shape = tuple(np.shape(targets)), tuple(np.shape(x0))
    if len(t_shape) < 1 or len(x_shape) < 1 or t_shape[0] != x_shape[0] or t_shape[0] < 1:
        raise ValueError(f"targets {t_shape} and x0 {x_shape} need the same leading axis N >= 1")
    problem, x0, *_ = _setup(
        fn,
        t_shape[1:],
        x0,
        None,
        lead=1,
        key=None,
        loss=loss,
        solver=solver,
        optimizer=optimizer,
        learning_rate=learning_rate,
        steps=steps,
        regularizers=regularizers,
        bounds=bounds,
        tol=tol,
        loop="python",
        init_scale=DEFAULT_INIT_SCALE,
        check_every=1,
        mesh=None,
        rows=t_shape[0],
    )
    if chunk is not None:
        chunk = chk.check_int("chunk", chunk, minimum=1)
    return solve_cost(problem, x0, chk.as_finite_array("targets", targets), chunk)
