"""Gradient-based inversion: find ``x`` with ``fn(x) ~ y``, for one target or many.

``J(x) = L(fn(x), y) + sum_k R_k(x)`` is minimised by a solver of :mod:`inversion.solvers`
(default: projected Adam, ``solvers.Optax(optax.adam(1e-2))``), optionally within box bounds.
``invert`` solves one target; ``invert_batch`` solves many (and several random restarts each)
as ONE batched problem: the per-row rules of :mod:`inversion.solve` are ``vmap``-ed over rows,
chunked to bound memory and optionally sharded over a device mesh. Rows never interact, so a
batch gives the same answer as separate ``invert`` calls.

The path of a call, one file each::

    invert / invert_batch (here: the options, checked by inversion.checks, become a Plan
    and the start rows) -> inversion.driver.run (chunks, devices, the loop; starts each row)
    -> inversion.solve.advance (one step's rules) -> the solver

:func:`inversion.solve` is the same computation for one row as one pure, traceable function.
The options come in three groups (:mod:`inversion.options`): ``problem=Problem(loss,
regularizers, bounds)``, ``starts=Starts(x_shape, key, init_scale, restarts)`` and
``execution=Execution(loop, check_every, time_limit, progress, chunk, mesh)``.

Invert logits, not saturated probabilities: where ``fn`` ends in a sigmoid (or softmax) that
saturates at the start, ``grad J`` is exactly 0 in floating point and no gradient-based solver
can move. Such a row stops at once with status ``'zero_gradient'`` (0 steps, ``x = x0``) and
the call warns (``RuntimeWarning``); invert the pre-activation output instead
(``models.feature_fn(model, name)`` cuts a network before its final sigmoid).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from inversion import checks as chk
from inversion import cpu_devices, driver
from inversion.driver import Plan
from inversion.options import Execution, Problem, Starts, from_keywords
from inversion.result import ZERO_GRADIENT, Result
from inversion.solvers import Optax, Solver

DEFAULT_SOLVER = Optax(chk.named_optimizer("adam", 1e-2))


class Setup(NamedTuple):
    """What :func:`_setup` validated and resolved for the driver."""

    plan: Plan  # the per-row problem (fn, loss, regularizers, solver, steps, bounds, ...)
    x0: jax.Array  # the start rows (B, *x_shape) in the working dtype
    targets: jax.Array  # the target rows (B, *y_shape), one per start row
    loop: str  # 'python' or 'compiled'
    chunk_rows: int | None  # rows (targets x restarts) per chunk, or None
    deadline: float | None  # on time.perf_counter()'s clock


def _setup(
    fn: Any,
    targets: Any,
    x0: Any,
    *,
    batched: bool,
    solver: Any,
    steps: Any,
    tol: Any,
    problem: Problem,
    starts: Starts,
    execution: Execution,
) -> Setup:
    """Check everything (nothing is compiled here) and lay out the rows.

    ``batched``: ``targets`` has a leading axis of ``N`` targets (``invert_batch``), else it
    is one target (``invert``). On CPU without a mesh, enough rows are split over the CPU
    devices (see :mod:`inversion.cpu_devices`).
    """
    deadline = None if execution.time_limit is None else time.perf_counter() + execution.time_limit
    chk.check_callable("fn", fn)
    steps = chk.check_steps("steps", steps)
    tol = chk.check_tol("tol", tol)
    solver = DEFAULT_SOLVER if solver is None else solver
    chk.check_solver(solver)
    restarts, key = starts.restarts, starts.key
    name = "targets" if batched else "target"
    chk.check_real_dtype(name, targets)
    t_shape = tuple(np.shape(targets))
    if batched and (len(t_shape) < 1 or t_shape[0] < 1):
        raise ValueError(f"targets must have a leading axis of N >= 1 targets, got {t_shape}")
    if not batched and restarts > 1:
        raise ValueError(
            f"invert solves one start; got starts with restarts={restarts} (use invert_batch)"
        )
    n = t_shape[0] if batched else 1
    lead = (2 if restarts > 1 else 1) if batched else 0
    if x0 is None and restarts > 1 and key is None:
        raise ValueError(
            f"restarts={restarts} needs a key (random starts) or x0 of shape "
            "(N, restarts, *x_shape); got neither"
        )
    mesh = execution.mesh
    platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
    if mesh is None and platform == "cpu":
        mesh = cpu_devices.cpu_mesh(n * restarts)  # data-parallel over the CPU devices
    loop = chk.check_loop(execution.loop, platform=platform)
    if deadline is not None and loop == "auto":
        loop = "python"
    lead_axes = ((n, restarts) if restarts > 1 else (n,)) if batched else ()
    x0, x_shape, dtype, out, bounds = chk.inputs(
        fn, x0, x_shape=starts.x_shape, lead_axes=lead_axes, target=(name, t_shape[lead > 0 :]),
        problem=problem, solver=solver,
    )  # fmt: skip
    sharding = None
    if mesh is not None:
        spec = jax.sharding.PartitionSpec(tuple(mesh.axis_names))
        sharding = jax.sharding.NamedSharding(mesh, spec)
    plan = Plan(
        fn=fn,
        loss=problem.loss,
        regularizers=problem.regularizers,
        solver=solver,
        steps=steps,
        bounds=bounds,
        tol=tol,
        sharding=sharding,
    )
    targets = chk.as_finite_array(name, targets, out.dtype)
    if not batched:
        targets = targets[None]
    if x0 is None:
        scale = starts.init_scale
        if restarts > 1:
            keys = jax.random.split(key, restarts)
            x0 = jax.vmap(lambda k: scale * jax.random.normal(k, x_shape, dtype))(keys)
        elif key is not None:
            x0 = (scale * jax.random.normal(key, x_shape, dtype))[None]
        else:
            x0 = jnp.zeros((1, *x_shape), dtype)
        x0 = jnp.broadcast_to(x0[None], (n, restarts, *x_shape))
    x0 = x0.reshape((n * restarts, *x_shape))
    if restarts > 1:
        targets = jnp.repeat(targets, restarts, axis=0)
    chunk_rows = None if execution.chunk is None else execution.chunk * restarts
    return Setup(plan, x0, targets, loop, chunk_rows, deadline)


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


_OPTIONS_DOC = """
    The options, by what they describe:

    Problem (``problem=inversion.Problem(loss, regularizers, bounds)``; what is minimised):
        loss: ``'mse'`` (default), ``'normalized'``, ``'cosine'`` or a callable
            ``(pred, target) -> scalar``.
        regularizers: ``None``, a callable ``x -> penalty`` or a tuple of them.
        bounds: ``(lo, hi)``; ``x`` is projected into the box at the start and after every step.

    Solver (how): ``solver`` is an :mod:`inversion.solvers` object (``solvers.LBFGS()``,
        ``solvers.LevenbergMarquardt()``, ``solvers.Optax(optax.adam(1e-2))``, ...); ``None``
        is projected Adam with learning rate 1e-2. ``steps`` is the most solver steps (an int
        in ``[1, 2**31 - 1]``; ``history`` has this length); ``tol`` stops a row with status
        ``'converged'`` once ``J(x) <= tol`` (``None``: never).

    Starts (``x0``, or ``starts=inversion.Starts(x_shape, key, init_scale, restarts)``): the
        start is ``x0`` if given, else ``init_scale * N(0, I)`` drawn with ``key`` in shape
        ``x_shape``, else zeros of ``x_shape``.

    Execution (``execution=inversion.Execution(loop, check_every, time_limit, progress, chunk,
        mesh)``): the loop (``'python'`` on CPU, ``'compiled'`` on accelerators by default),
        how often the host looks, a wall-time limit (compilation included; rows still running
        then end as 'max_steps' with fewer steps), a progress bar, chunking and the device mesh;
        see :class:`inversion.Execution`.

    Precision: the inversion runs in ``jnp.promote_types(dtype of x0, dtype of fn's output)``
    (float32 without ``x0``); a bfloat16 or float16 ``x0`` with a float32 ``fn`` is cast to
    float32 before anything runs. Integer or boolean ``x0`` is float32; complex ``target`` or
    ``x0`` is a ``TypeError``; ``fn`` must return one floating-point array.

    The flat keywords of earlier releases (``bounds=``, ``key=``, ``optimizer=``, ...) still
    work, with a ``DeprecationWarning`` (:func:`inversion.options.from_keywords`).
"""


def invert(
    fn: Callable[[Array], Array],
    target: Float[Array, "..."],
    x0: Float[Array, "..."] | None = None,
    *,
    solver: Solver | None = None,
    steps: int = 500,
    tol: float | None = None,
    problem: Problem | None = None,
    starts: Starts | None = None,
    execution: Execution | None = None,
    **deprecated: Any,
) -> Result:
    """Recover one input ``x`` with ``fn(x) ~ target``: minimise ``J(x) = L(fn(x), target) +
    sum_k R_k(x)`` over ``x`` with gradients ``jax.grad`` with respect to the input.
    {options}
    Returns:
        A :class:`Result` with ``x`` of the input's shape and scalar ``loss``, ``residual``
        (``||fn(x) - y|| / ||y||``), ``steps`` and ``status``. A start where ``grad J`` is
        exactly 0 (and ``J`` is not) ends at once with status ``'zero_gradient'`` and a
        ``RuntimeWarning``: invert logits, not saturated probabilities (module docstring).

    Raises:
        ValueError / TypeError: for bad arguments, before anything compiles.

    Example:
        >>> import jax.numpy as jnp, inversion
        >>> fn = lambda x: 2.0 * x
        >>> r = inversion.invert(fn, jnp.array([2.0, -4.0]), jnp.zeros(2),
        ...                      solver=inversion.solvers.LBFGS(), steps=20, tol=1e-12)
        >>> r.status, [round(float(v), 4) for v in r.x]
        ('converged', [1.0, -2.0])
    """
    solver, problem, starts, execution = from_keywords(
        "invert", solver=solver, problem=problem, starts=starts, execution=execution,
        keywords=deprecated,
    )  # fmt: skip
    setup = _setup(
        fn, target, x0, batched=False, solver=solver, steps=steps, tol=tol, problem=problem,
        starts=starts, execution=execution,
    )  # fmt: skip
    out = driver.run(
        setup.plan, setup.x0, setup.targets, loop=setup.loop, chunk_rows=None,
        check_every=execution.check_every, progress=execution.progress,
        deadline=setup.deadline, group="single",
    )  # fmt: skip
    warn_zero_gradient(out[5])
    return Result(*out, restarts=0)


def invert_batch(
    fn: Callable[[Array], Array],
    targets: Float[Array, "n ..."],
    x0: Float[Array, "n ..."] | None = None,
    *,
    solver: Solver | None = None,
    steps: int = 500,
    tol: float | None = None,
    problem: Problem | None = None,
    starts: Starts | None = None,
    execution: Execution | None = None,
    **deprecated: Any,
) -> Result:
    """Invert ``N`` targets (leading axis of ``targets``), each like :func:`invert`.

    ``fn`` is the per-target map (exactly what :func:`invert` takes); it is ``vmap``-ed over
    targets and restarts, so entry ``n`` equals ``invert(fn, targets[n], ...)`` with the same
    start. Starts: with ``starts.restarts == 1``, ``x0`` of shape ``(N, *xs)``, else
    ``init_scale * N(0, I)`` drawn with ``starts.key`` (the same start for every target, as
    ``invert`` would draw), else zeros. With ``restarts = R > 1``: ``x0`` of shape
    ``(N, R, *xs)``, or restart ``r`` of every target starts at ``init_scale *
    normal(jax.random.split(key, R)[r], xs)``; ``Result.x`` then has shape ``(N, R, *xs)`` and
    :meth:`Result.best` picks the lowest-loss restart per target. A row (target or restart)
    whose gradient is exactly 0 at its start ends there with status ``'zero_gradient'`` while
    the other rows go on; one ``RuntimeWarning`` names how many rows did. ``execution.chunk``
    counts targets; with several processes (after ``jax.distributed.initialize``) pass the same
    host (numpy) arrays on every process and a mesh over all devices: results are global arrays.
    {options}
    Example:
        >>> import jax.numpy as jnp, inversion
        >>> r = inversion.invert_batch(lambda x: 2.0 * x, jnp.array([[2.0], [6.0]]),
        ...                            jnp.zeros((2, 1)), solver=inversion.solvers.LBFGS(gtol=1e-6),
        ...                            steps=20, problem=inversion.Problem(bounds=(0.0, 2.0)))
        >>> [round(float(v), 4) for v in r.x[:, 0]], r.status.tolist()
        ([1.0, 2.0], ['stationary', 'stationary'])
    """
    solver, problem, starts, execution = from_keywords(
        "invert_batch", solver=solver, problem=problem, starts=starts, execution=execution,
        keywords=deprecated,
    )  # fmt: skip
    setup = _setup(
        fn, targets, x0, batched=True, solver=solver, steps=steps, tol=tol, problem=problem,
        starts=starts, execution=execution,
    )  # fmt: skip
    restarts = starts.restarts
    out = driver.run(
        setup.plan, setup.x0, setup.targets, loop=setup.loop, chunk_rows=setup.chunk_rows,
        check_every=execution.check_every, progress=execution.progress,
        deadline=setup.deadline, group=restarts if restarts > 1 else None,
    )  # fmt: skip
    warn_zero_gradient(out[5])
    return Result(*out, restarts=restarts if restarts > 1 else 0)


invert.__doc__ = invert.__doc__.replace("{options}", _OPTIONS_DOC)
invert_batch.__doc__ = invert_batch.__doc__.replace("{options}", _OPTIONS_DOC)


def step_cost(
    fn: Callable[[Array], Array],
    targets: Float[Array, "n ..."],
    x0: Float[Array, "n ..."],
    *,
    solver: Solver | None = None,
    steps: int = 500,
    tol: float | None = None,
    problem: Problem | None = None,
    execution: Execution | None = None,
    **deprecated: Any,
) -> dict[str, float]:
    """XLA's static cost of ONE step of :func:`invert_batch` over these rows.

    Compiles (without running) the step program ``invert_batch`` would run for starts ``x0``
    (one row each, shape ``(N, *xs)``) and ``targets``, chunked the same way, and returns XLA's
    cost analysis: ``flops`` (floating-point operations of one step over all ``N`` rows: forward,
    input-gradient and optimiser update), ``bytes_accessed``, the one-chunk program's buffer
    sizes ``argument_bytes``, ``output_bytes``, ``temp_bytes`` (``0`` where the backend does
    not report one), and ``chunk_rows``, ``chunks``.
    """
    solver, problem, starts, execution = from_keywords(
        "step_cost", solver=solver, problem=problem, starts=None, execution=execution,
        keywords=deprecated,
    )  # fmt: skip
    if starts.restarts != 1 or starts.key is not None:
        raise ValueError("step_cost takes x0 (one start per target), not starts")
    if x0 is None:
        raise ValueError("step_cost needs x0 (one start per target), got None")
    setup = _setup(
        fn, targets, x0, batched=True, solver=solver, steps=steps, tol=tol, problem=problem,
        starts=starts, execution=execution,
    )  # fmt: skip
    return driver.step_cost(setup.plan, setup.x0, setup.targets, setup.chunk_rows)
