"""The option groups of :func:`inversion.invert`, :func:`inversion.invert_batch` and
:func:`inversion.invert_dataset`: what is minimised, from where, and how it runs.

Besides ``fn``, the targets, ``x0``, ``solver``, ``steps`` and ``tol``, every option belongs to
one of three small frozen records, each checked when it is made (before anything compiles)::

    inversion.invert_batch(
        fn, targets, x0,
        solver=inversion.solvers.LBFGS(), steps=200, tol=None,
        problem=inversion.Problem(loss="mse", regularizers=(), bounds=(0.0, 1.0)),
        starts=inversion.Starts(key=None, restarts=1, init_scale=0.1, x_shape=None),
        execution=inversion.Execution(loop="auto", check_every=10, time_limit=None,
                                      progress=False, chunk=None, mesh=None),
    )

* :class:`Problem`: the objective besides ``fn`` and the target (what
  :class:`inversion.Objective` holds): ``J(x) = L(fn(x), y) + sum_k R_k(x)`` over the box.
* :class:`Starts`: where rows start when ``x0`` is not given, and how many starts per target.
* :class:`Execution`: how the rows are run. It never changes a row's answer, except
  ``time_limit``, which stops rows early.

The flat keywords of earlier releases (``bounds=``, ``key=``, ``chunk=``, ``optimizer=`` ...)
still work for one release through :func:`from_keywords`, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax

from inversion import checks
from inversion.losses import LossFn
from inversion.solvers.optax_solver import Optax

DEFAULT_INIT_SCALE = 0.1


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """What is minimised besides ``fn`` and the target.

    Attributes:
        loss: ``'mse'``, ``'normalized'``, ``'cosine'`` or a callable ``(pred, target) ->
            scalar`` (:mod:`inversion.losses`).
        regularizers: ``None``, a callable ``x -> penalty`` or a tuple of them
            (:mod:`inversion.regularizers`); stored as a tuple.
        bounds: ``None`` or ``(lo, hi)``, numbers or arrays broadcastable to one input,
            ``lo < hi`` everywhere (``-inf``/``inf`` leave a side open); ``x`` is projected
            into the box at the start and after every step.
    """

    loss: str | LossFn = "mse"
    regularizers: Any = ()
    bounds: tuple[Any, Any] | None = None

    def __post_init__(self):
        checks.check_loss(self.loss)
        object.__setattr__(self, "regularizers", checks.as_regularizers(self.regularizers))
        checks.check_bounds_values(self.bounds)


@dataclasses.dataclass(frozen=True, eq=False)
class Starts:
    """Where rows start when ``x0`` is not given, and how many starts each target gets.

    Attributes:
        x_shape: one input's shape (needed without ``x0``).
        key: ONE ``jax.random.key`` for random starts ``init_scale * N(0, I)``; without it
            (and without ``x0``) rows start at zeros.
        init_scale: standard deviation of the random starts (> 0).
        restarts: starts per target (``invert_batch``): with ``key``, restart ``r`` of every
            target starts at ``init_scale * normal(jax.random.split(key, restarts)[r])``; with
            ``x0``, ``x0`` has shape ``(N, restarts, *x_shape)``.
    """

    x_shape: tuple[int, ...] | None = None
    key: jax.Array | None = None
    init_scale: float = DEFAULT_INIT_SCALE
    restarts: int = 1

    def __post_init__(self):
        object.__setattr__(self, "x_shape", checks.check_x_shape(self.x_shape))
        object.__setattr__(self, "key", checks.check_key(self.key))
        scale = checks.check_real("init_scale", self.init_scale, positive=True)
        object.__setattr__(self, "init_scale", scale)
        object.__setattr__(self, "restarts", checks.check_int("restarts", self.restarts, minimum=1))


@dataclasses.dataclass(frozen=True, eq=False)
class Execution:
    """How the rows run; no option changes a row's answer except ``time_limit``.

    Attributes:
        loop: ``'python'`` (a jitted step driven from Python; fastest on XLA:CPU),
            ``'compiled'`` (one ``lax.while_loop`` program; fastest on GPU/TPU) or ``'auto'``
            (by backend).
        check_every: the Python loop reads one flag back every this many steps to stop early.
        time_limit: seconds of wall time from the call (compilation included) after which every
            row still running stops (as ``'max_steps'`` with fewer steps); needs the Python loop.
        progress: a tqdm progress bar.
        chunk: solve at most this many TARGETS at once (times ``restarts`` rows); ``None``: all
            at once on accelerators, at most 64 rows per device at a time on CPU
            (:mod:`inversion.driver`). Rows never interact, so the answers agree with an
            unchunked run up to floating-point rounding (XLA may vectorise a batch of another
            size differently; bitwise equal for equal chunk sizes).
        mesh: a ``jax.sharding.Mesh``: rows are sharded along the leading axis over all its
            devices; ``None`` on a CPU with several CPU devices (one per core after
            :func:`inversion.cpu_devices.configure`) uses them all.
    """

    loop: str = "auto"
    check_every: int = 10
    time_limit: float | None = None
    progress: bool = False
    chunk: int | None = None
    mesh: jax.sharding.Mesh | None = None

    def __post_init__(self):
        checks.check_loop_name(self.loop)
        every = checks.check_int("check_every", self.check_every, minimum=1)
        object.__setattr__(self, "check_every", every)
        if self.time_limit is not None:
            limit = checks.check_real("time_limit", self.time_limit, positive=True)
            object.__setattr__(self, "time_limit", limit)
            if self.loop == "compiled":
                raise ValueError(
                    "time_limit needs loop='python' or 'auto' (the host checks the clock "
                    "between steps); got loop='compiled'"
                )
        if not isinstance(self.progress, bool):
            raise TypeError(f"progress must be True or False, got {self.progress!r}")
        if self.chunk is not None:
            object.__setattr__(self, "chunk", checks.check_int("chunk", self.chunk, minimum=1))
        if self.mesh is not None and not isinstance(self.mesh, jax.sharding.Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh or None, got {self.mesh!r:.80}")


_GROUPS: dict[str, tuple[str, ...]] = {
    "problem": ("loss", "regularizers", "bounds"),
    "starts": ("x_shape", "key", "init_scale", "restarts"),
    "execution": ("loop", "check_every", "time_limit", "progress", "chunk", "mesh"),
    "solver": ("optimizer", "learning_rate"),
}
_TYPES: dict[str, Callable[..., Any]] = {
    "problem": Problem,
    "starts": Starts,
    "execution": Execution,
}
DEPRECATED_KEYWORDS = frozenset(k for names in _GROUPS.values() for k in names)


def from_keywords(
    function: str,
    *,
    solver: Any,
    problem: Problem | None,
    starts: Starts | None,
    execution: Execution | None,
    keywords: dict[str, Any],
    stacklevel: int = 3,
) -> tuple[Any, Problem, Starts, Execution]:
    """``(solver, problem, starts, execution)``, the groups filled in from the flat keywords of
    earlier releases (with one ``DeprecationWarning`` naming them and their replacement).

    Unknown keywords are a ``TypeError``; a flat keyword beside its own group (``bounds=``
    with ``problem=``) is a ``ValueError``.
    """
    unknown = sorted(set(keywords) - DEPRECATED_KEYWORDS)
    if unknown:
        raise TypeError(
            f"{function}() got unexpected keyword argument(s) {unknown}; its options are "
            "x0, solver, steps, tol, problem=inversion.Problem(...), "
            "starts=inversion.Starts(...) and execution=inversion.Execution(...)"
        )
    given = {"problem": problem, "starts": starts, "execution": execution}
    groups: dict[str, Any] = {}
    moved = []
    for group, names in _GROUPS.items():
        flat = {k: keywords[k] for k in names if k in keywords}
        if not flat:
            continue
        moved.append(f"{', '.join(flat)} -> {group}=")
        if group == "solver":
            if solver is not None:
                raise ValueError(
                    "give either solver= or optimizer=/learning_rate= (an optimizer is a "
                    "solver: solvers.Optax(optax.adam(lr))), not both"
                )
            name, rate = flat.get("optimizer"), flat.get("learning_rate")
            if name is None or isinstance(name, str):  # cached: equal names share programs
                solver = Optax.by_name(name or "adam", rate)
            else:
                solver = Optax(checks.resolve_optimizer(name, rate))
            continue
        if given[group] is not None:
            raise ValueError(
                f"give {group}= or the keywords {sorted(flat)}, not both (they set the same "
                "options)"
            )
        groups[group] = _TYPES[group](**flat)
    if moved:
        warnings.warn(
            f"{function}(): the keywords {sorted(keywords)} are deprecated and will be removed "
            f"in the next release; pass them grouped ({'; '.join(moved)}: inversion.Problem, "
            "inversion.Starts, inversion.Execution, solver=inversion.solvers.Optax(...))",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
    problem = groups.get("problem", problem)
    starts = groups.get("starts", starts)
    execution = groups.get("execution", execution)
    for name, value, kind in (
        ("problem", problem, Problem),
        ("starts", starts, Starts),
        ("execution", execution, Execution),
    ):
        if value is not None and not isinstance(value, kind):
            raise TypeError(
                f"{name} must be an inversion.{kind.__name__} or None, got {type(value).__name__}"
            )
    return (
        solver,
        problem if problem is not None else Problem(),
        starts if starts is not None else Starts(),
        execution if execution is not None else Execution(),
    )
