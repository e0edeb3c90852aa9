"""Every argument check of the package, in one place; all run before anything compiles.

:func:`inversion.invert`, :func:`inversion.invert_batch`, :func:`inversion.solve`,
:class:`inversion.Objective`, the option groups (:mod:`inversion.options`), the solvers and
:func:`inversion.invert_dataset` call these, so one rule has one wording. Every bad value raises ``ValueError`` (or ``TypeError`` for a wrong type) naming the value and
what was expected. Shapes are checked with ``jax.eval_shape``, which traces but never compiles.

Arrays (targets, starts, bounds) must hold real numbers: booleans and integers are taken as
float32, strings, objects and PRNG keys are a ``TypeError``, and so are complex numbers (which
would otherwise lose their imaginary part with only a ``ComplexWarning``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

OPTIMIZERS = ("adam", "sgd", "lbfgs")
LOOPS = ("auto", "python", "compiled")
DEFAULT_LEARNING_RATE = {"adam": 1e-2, "sgd": 1e-2, "lbfgs": None}


def check_callable(name: str, fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be a callable x -> y, got {type(fn).__name__}")


INT32_MAX = 2**31 - 1  # step counters are int32


def check_int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    """An ``int`` or NumPy integer (not ``bool``) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r:.60}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def _real_scalar(name: str, value: Any) -> float:
    """A Python, NumPy or concrete 0-d JAX real number as a float (``TypeError`` otherwise)."""
    if isinstance(value, np.ndarray | jax.Array) and value.ndim == 0:
        if isinstance(value, jax.core.Tracer):
            raise TypeError(f"{name} must be a concrete number, not a traced value")
        if jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer):
            return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r:.60}")
    return float(value)


def check_real(
    name: str, value: Any, *, positive: bool = False, below: float | None = None
) -> float:
    """A finite real number ``>= 0`` (``> 0`` with ``positive``; ``< below`` when given)."""
    value = _real_scalar(name, value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        expected = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {expected}, got {value}")
    if below is not None and not value < below:
        raise ValueError(f"{name} must be < {below}, got {value}")
    return value


def check_unit_interval(name: str, value: Any, *, closed_low: bool = False) -> float:
    """A real number in ``(0, 1)`` (``[0, 1)`` with ``closed_low``)."""
    value = _real_scalar(name, value)
    if not ((0 <= value if closed_low else 0 < value) and value < 1):
        raise ValueError(f"{name} must lie in {'[' if closed_low else '('}0, 1), got {value}")
    return value


def check_tol(name: str, tol: Any) -> float | None:
    """``None`` or a finite number ``>= 0`` (a stopping threshold)."""
    return None if tol is None else check_real(name, tol)


def check_steps(name: str, steps: Any) -> int:
    """A step budget: an int in ``[1, 2**31 - 1]`` (the step counters are int32)."""
    return check_int(name, steps, minimum=1, maximum=INT32_MAX)


def check_loss(loss: Any) -> None:
    """A loss name of :mod:`inversion.losses` or a callable (``ValueError``/``TypeError``)."""
    from inversion.losses import get_loss

    get_loss(loss)


def as_regularizers(regularizers: Any) -> tuple[Callable, ...]:
    """``None``, one callable or a tuple/list of callables, as a tuple (the one rule used by
    :class:`inversion.Objective`, :class:`inversion.Problem` and the engine)."""
    if regularizers is None:
        return ()
    if callable(regularizers):  # one prior (the NamedTuple priors are callable tuples)
        return (regularizers,)
    if not isinstance(regularizers, tuple | list):
        raise TypeError(
            "regularizers must be None, a callable x -> penalty or a tuple of them, got "
            f"{type(regularizers).__name__}"
        )
    for i, r in enumerate(regularizers):
        if not callable(r):
            raise TypeError(f"regularizers[{i}] must be a callable x -> penalty, got {r!r:.60}")
    return tuple(regularizers)


def check_bounds_values(bounds: Any) -> None:
    """``None`` or a pair ``(lo, hi)`` of real numbers or arrays, no NaN, ``lo < hi`` where
    both are concrete (traced bounds, e.g. inside ``jax.jit``, are checked for type only)."""
    if bounds is None:
        return
    if not isinstance(bounds, tuple | list) or len(bounds) != 2:
        raise TypeError(f"bounds must be None or a pair (lo, hi), got {bounds!r:.80}")
    values = []
    for name, b in (("lo", bounds[0]), ("hi", bounds[1])):
        try:
            check_real_dtype(f"bounds {name}", b)
        except TypeError as err:
            raise TypeError(
                f"{err} (bounds must be None or a pair (lo, hi) of numbers or "
                "arrays; -inf/inf for no bound)"
            ) from None
        if isinstance(b, jax.core.Tracer):
            return
        b = np.asarray(b, dtype=np.float64)
        if np.any(np.isnan(b)):
            raise ValueError(f"bounds {name} contains NaN; expected numbers (inf allowed)")
        values.append(b)
    lo, hi = values
    try:
        bad = np.any(lo >= hi)
    except ValueError:
        raise ValueError(
            f"bounds lo of shape {lo.shape} and hi of shape {hi.shape} do not broadcast together"
        ) from None
    if bad:
        raise ValueError(
            f"bounds need lo < hi everywhere, got lo={bounds[0]!r:.60}, hi={bounds[1]!r:.60}"
        )


def check_solver(solver: Any) -> None:
    from inversion.solvers.base import Solver

    if not isinstance(solver, Solver):
        raise TypeError(
            "solver must be an inversion.solvers.Solver (e.g. solvers.LBFGS(), "
            f"solvers.Optax(optax.adam(1e-2))), got {type(solver).__name__}"
        )


def check_real_dtype(name: str, value: Any) -> np.dtype:
    """The dtype of ``value`` (array or array-like, not copied when it has a ``dtype``); a
    ``TypeError`` naming ``name`` unless it holds real numbers (bool, integer or floating)."""
    if isinstance(value, str | bytes):
        raise TypeError(f"{name} must be an array of real numbers, got the string {value!r:.60}")
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(value).dtype
        except (TypeError, ValueError) as err:  # ragged nested lists and the like
            raise TypeError(
                f"{name} must be an array of real numbers, got {type(value).__name__}: {err}"
            ) from err
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        raise TypeError(f"{name} must be an array of real numbers, got a PRNG key array")
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(
            f"{name} is complex ({dtype}); expected real numbers. Invert the real and imaginary "
            f"parts as one real array (e.g. jnp.stack([z.real, z.imag], -1)), or pass "
            f"jnp.real({name}) if the imaginary part is meant to be dropped"
        )
    if not (
        jnp.issubdtype(dtype, jnp.floating)
        or jnp.issubdtype(dtype, jnp.integer)
        or jnp.issubdtype(dtype, jnp.bool_)
    ):
        raise TypeError(
            f"{name} must be an array of real numbers, got {type(value).__name__} of dtype {dtype}"
        )
    return np.dtype(dtype)


def as_finite_array(name: str, value: Any, dtype: Any = None) -> jax.Array:
    """``jnp.asarray(value)`` (floating), raising ``ValueError`` if any entry is NaN or inf and
    ``TypeError`` unless it holds real numbers (see :func:`check_real_dtype`)."""
    check_real_dtype(name, value)
    if isinstance(value, jax.Array):
        finite = bool(jnp.all(jnp.isfinite(value)))  # no host copy of the array itself
        arr = value
    else:
        host = np.asarray(value)
        finite = bool(np.all(np.isfinite(host)))
        arr = host
    if not finite:
        raise ValueError(f"{name} contains NaN or inf; expected finite values")
    if dtype is None:
        dtype = arr.dtype if jnp.issubdtype(arr.dtype, jnp.floating) else jnp.float32
    return jnp.asarray(arr, dtype=dtype)


def check_loop_name(loop: Any) -> None:
    if not isinstance(loop, str) or loop not in LOOPS:
        raise ValueError(f"unknown loop {loop!r:.60}; expected one of {list(LOOPS)}")


def check_loop(loop: str, *, platform: str) -> str:
    """Resolve ``'auto'`` to ``'python'`` on CPU and ``'compiled'`` on accelerators."""
    check_loop_name(loop)
    if loop == "auto":
        return "python" if platform == "cpu" else "compiled"
    return loop


@functools.lru_cache(maxsize=32)
def named_optimizer(name: str, learning_rate: float | None) -> optax.GradientTransformation:
    """``optax.adam``/``sgd``/``lbfgs``; cached so equal requests give the same object (and the
    engine can reuse its compiled programs)."""
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate)
    return optax.lbfgs(learning_rate=learning_rate)


def resolve_optimizer(optimizer: Any, learning_rate: float | None) -> optax.GradientTransformation:
    """``None`` -> ``optax.adam(learning_rate or 1e-2)``; a name in ``OPTIMIZERS``; or any
    ``optax.GradientTransformation`` (then ``learning_rate`` must be ``None``)."""
    if learning_rate is not None:
        learning_rate = check_real("learning_rate", learning_rate, positive=True)
    if optimizer is None:
        optimizer = "adam"
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {optimizer!r}; expected one of {list(OPTIMIZERS)} "
                "or an optax.GradientTransformation"
            )
        lr = DEFAULT_LEARNING_RATE[optimizer] if learning_rate is None else learning_rate
        return named_optimizer(optimizer, lr)
    if isinstance(optimizer, optax.GradientTransformation):
        if learning_rate is not None:
            raise ValueError(
                "learning_rate applies only to an optimizer given by name "
                f"{list(OPTIMIZERS)}; set it inside the optax transformation instead"
            )
        return optimizer
    raise TypeError(
        f"optimizer must be None, a name in {list(OPTIMIZERS)} or an "
        f"optax.GradientTransformation, got {type(optimizer).__name__}"
    )


def check_bounds(bounds: Any, x_shape: tuple[int, ...], dtype: Any):
    """``None`` or ``(lo, hi)`` scalars/arrays broadcastable to one input, with ``lo < hi``."""
    if bounds is None:
        return None
    check_bounds_values(bounds)
    lo = np.asarray(bounds[0], dtype=np.float64)
    hi = np.asarray(bounds[1], dtype=np.float64)
    for name, b in (("lo", lo), ("hi", hi)):
        try:
            np.broadcast_to(b, x_shape)
        except ValueError:
            raise ValueError(
                f"bounds {name} of shape {b.shape} does not broadcast to the input shape {x_shape}"
            ) from None
    if lo.ndim == 0 and hi.ndim == 0:  # plain floats keep the problem hashable (program reuse)
        return float(lo), float(hi)
    return jnp.asarray(lo, dtype), jnp.asarray(hi, dtype)


def check_x_shape(x_shape: Any) -> tuple[int, ...] | None:
    """``None`` or one input's shape: a tuple/list of positive ints (``()`` for a scalar)."""
    if x_shape is None:
        return None
    if not isinstance(x_shape, tuple | list) or not all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) for d in x_shape
    ):
        raise TypeError(f"x_shape must be a tuple of positive ints, got {x_shape!r}")
    if any(d < 1 for d in x_shape):
        raise ValueError(
            f"x_shape must be a tuple of positive ints, got {tuple(x_shape)}; an input with no "
            "entries has nothing to recover"
        )
    return tuple(int(d) for d in x_shape)


def check_input_size(name: str, x_shape: tuple[int, ...], full_shape: tuple[int, ...]) -> None:
    """``ValueError`` when one input (``x_shape``, read from ``name``) has no entries."""
    if math.prod(x_shape) == 0:
        raise ValueError(
            f"{name} has shape {tuple(full_shape)}, i.e. inputs of shape {tuple(x_shape)} with "
            "no entries; expected at least one entry per input"
        )


@functools.lru_cache(maxsize=1)
def _raw_key_shape() -> tuple[int, ...]:
    """Shape of a raw (uint32) key of the default PRNG implementation (traced, not run)."""
    return tuple(jax.eval_shape(jax.random.PRNGKey, 0).shape)


def check_key(key: Any) -> jax.Array | None:
    """``None``, ONE typed key (``jax.random.key(seed)``, shape ``()``) or one raw ``uint32`` key
    (``jax.random.PRNGKey(seed)``)."""
    if key is None:
        return None
    if not isinstance(key, jax.Array):
        raise TypeError(
            f"key must be a jax.random key (jax.random.key(seed)), got "
            f"{type(key).__name__} {key!r:.60}"
        )
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                f"key must be ONE jax.random key of shape (), got a key array of shape "
                f"{key.shape}; pass a single key (restarts split it themselves)"
            )
        return key
    raw = _raw_key_shape()
    if key.dtype == jnp.uint32 and key.shape == raw:
        return key
    raise TypeError(
        f"key must be a jax.random.key(seed) (a typed key of shape ()) or a raw uint32 key of "
        f"shape {raw} (jax.random.PRNGKey(seed)), got an array of dtype {key.dtype} and shape "
        f"{key.shape}"
    )


def working_dtype(x_dtype: Any, out_dtype: Any) -> np.dtype:
    """The dtype the inversion runs in: ``promote_types(x dtype, fn's output dtype)`` when the
    output is floating (so a bfloat16/float16 start with a float32 ``fn`` runs in float32),
    else the start's dtype."""
    if jnp.issubdtype(out_dtype, jnp.floating):
        return np.dtype(jnp.promote_types(x_dtype, out_dtype))
    return np.dtype(x_dtype)


def check_output_size(out_shape: tuple[int, ...], x_shape: tuple[int, ...]) -> None:
    if math.prod(out_shape) == 0:
        raise ValueError(
            f"fn maps an input of shape {tuple(x_shape)} to an empty output of shape "
            f"{tuple(out_shape)}; expected an output with at least one entry to match"
        )


def output_struct(fn: Callable, x_shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    """``jax.eval_shape(fn, x)`` for one input, as a ``ValueError`` if ``fn`` rejects the shape."""
    try:
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct(x_shape, dtype))
    except Exception as err:  # noqa: BLE001 - re-raised with the shape that was tried
        raise ValueError(
            f"fn could not be evaluated on one input of shape {x_shape} ({jnp.dtype(dtype)}): "
            f"{type(err).__name__}: {err}"
        ) from err
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(f"fn must return a single array, got the structure {out}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"fn returns an array of dtype {out.dtype}; expected a floating-point output "
            "(an integer or boolean output has no gradient with respect to the input)"
        )
    return out


def check_target_shape(name: str, got: tuple[int, ...], expected: tuple[int, ...], x_shape):
    if tuple(got) != tuple(expected):
        raise ValueError(
            f"{name} has shape {tuple(got)} but fn maps an input of shape {tuple(x_shape)} to "
            f"shape {tuple(expected)}; expected {name} of shape {tuple(expected)}"
        )


def check_objective(objective: Callable, x_struct, y_struct) -> None:
    """The loss plus regularizers must return a real scalar for one input and one target."""
    try:
        out = jax.eval_shape(objective, x_struct, y_struct)
    except Exception as err:  # noqa: BLE001
        raise ValueError(
            f"the loss or a regularizer failed on an input of shape {x_struct.shape}: "
            f"{type(err).__name__}: {err}"
        ) from err
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
        raise ValueError(f"loss + regularizers must return a scalar, got {out}")


def solve_arguments(objective: Any, solver: Any, x0: Any, max_steps: Any, tol: Any):
    """The checks of :func:`inversion.solve`: ``(x0 as an array in the working dtype,
    max_steps, tol)``. Shapes and dtypes are checked with ``jax.eval_shape`` (so this works on
    traced values inside ``jax.jit``/``vmap``); values (NaN in ``x0``) only where concrete."""
    from inversion.objective import Objective

    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be an inversion.Objective, got {type(objective).__name__}")
    check_solver(solver)
    max_steps = check_steps("max_steps", max_steps)
    tol = check_tol("tol", tol)
    check_real_dtype("x0", x0)
    x0 = x0 if isinstance(x0, jax.core.Tracer) else as_finite_array("x0", x0)
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.float32)
    x_shape = tuple(x0.shape)
    check_input_size("x0", x_shape, x_shape)
    out = output_struct(objective.fn, x_shape, x0.dtype)
    work = working_dtype(x0.dtype, out.dtype)
    if work != x0.dtype:  # e.g. a bfloat16 x0 and a float32 fn: solve in float32
        x0 = x0.astype(work)
        out = output_struct(objective.fn, x_shape, work)
    check_output_size(out.shape, x_shape)
    check_target_shape("objective.target", tuple(np.shape(objective.target)), out.shape, x_shape)
    if objective.bounds is not None:
        for name, b in zip(("lo", "hi"), objective.bounds, strict=True):
            try:
                np.broadcast_shapes(np.shape(b), x_shape)
            except ValueError:
                raise ValueError(
                    f"objective bounds {name} of shape {np.shape(b)} does not broadcast to the "
                    f"shape of x0 {x_shape}"
                ) from None
    solver.check(objective)
    check_objective(
        lambda x, y: objective.value(x),
        jax.ShapeDtypeStruct(x_shape, x0.dtype),
        jax.ShapeDtypeStruct(out.shape, out.dtype),
    )
    return x0, max_steps, tol


class Inputs(NamedTuple):
    """What :func:`inputs` checked: the start (or ``None``), one input's shape, the working
    dtype, ``fn``'s output for one input, and the bounds as the driver uses them."""

    x0: jax.Array | None
    x_shape: tuple[int, ...]
    dtype: np.dtype
    out: jax.ShapeDtypeStruct
    bounds: Any


def inputs(
    fn: Callable,
    x0: Any,
    *,
    x_shape: tuple[int, ...] | None,
    lead_axes: tuple[int, ...],
    target: tuple[str, tuple[int, ...]],
    problem: Any,
    solver: Any,
) -> Inputs:
    """Check the start, ``fn``, the target's shape and the objective together (the engine's
    one call for them; shapes through ``jax.eval_shape``, nothing compiled).

    ``x0`` (or ``None``) has ``lead_axes`` (targets, restarts) before one input's shape;
    ``x_shape`` is the shape asked for (``starts.x_shape``); ``target`` is ``(name, shape of one
    target)``. The working dtype is ``promote_types(x0's dtype, fn's output dtype)`` (float32
    without ``x0``). ``problem`` is an :class:`inversion.Problem`; its bounds must broadcast to
    one input, ``solver.check`` must accept the objective, and loss plus regularizers must give
    a real scalar (remembered for hashable problems: the check traces ``fn``).
    """
    lead = len(lead_axes)
    if x0 is None and x_shape is None:
        raise ValueError(
            "give x0 (a starting input) or starts=Starts(x_shape=...) (one input's shape); got "
            "neither"
        )
    dtype = np.dtype(jnp.float32)
    if x0 is not None:
        check_real_dtype("x0", x0)
        if tuple(np.shape(x0)[:lead]) != lead_axes:
            raise ValueError(
                f"x0 has shape {tuple(np.shape(x0))}; expected leading axes {lead_axes} "
                f"(targets{', restarts' if lead == 2 else ''})"
            )
        x0 = as_finite_array("x0", x0)
        got = tuple(x0.shape[lead:])
        if x_shape is not None and got != x_shape:
            raise ValueError(
                f"x0 has shape {tuple(x0.shape)}, i.e. inputs of shape {got}, but "
                f"starts.x_shape is {x_shape}; expected them to agree"
            )
        check_input_size("x0", got, x0.shape)
        x_shape, dtype = got, x0.dtype
    out = output_struct(fn, x_shape, dtype)
    work = working_dtype(dtype, out.dtype)
    if work != dtype:  # e.g. a bfloat16 x0 and a float32 fn: invert in float32
        dtype = work
        x0 = None if x0 is None else x0.astype(work)
        out = output_struct(fn, x_shape, dtype)
    check_output_size(out.shape, x_shape)
    check_target_shape(target[0], target[1], out.shape, x_shape)
    bounds = check_bounds(problem.bounds, x_shape, dtype)
    _objective_ok(fn, problem.loss, problem.regularizers, bounds, solver, x_shape, dtype, out)
    return Inputs(x0, x_shape, dtype, out, bounds)


def _objective_ok(fn, loss, regularizers, bounds, solver, x_shape, dtype, out) -> None:
    """``solver.check`` and :func:`check_objective` on the problem, cached when hashable."""
    args = (fn, loss, regularizers, bounds, solver, x_shape, np.dtype(dtype), out.shape, out.dtype)
    try:
        hash(args)
    except TypeError:  # array bounds, a regularizer holding an array, ...
        _objective_check(*args)
        return
    _objective_check_cached(*args)


def _objective_check(fn, loss, regularizers, bounds, solver, x_shape, dtype, y_shape, y_dtype):
    from inversion.objective import Objective

    def value(x, y):
        return Objective(fn, y, loss=loss, regularizers=regularizers, bounds=bounds).value(x)

    solver.check(Objective(fn, jnp.zeros(y_shape, y_dtype), loss=loss, bounds=bounds))
    check_objective(
        value, jax.ShapeDtypeStruct(x_shape, dtype), jax.ShapeDtypeStruct(y_shape, y_dtype)
    )


_objective_check_cached = functools.lru_cache(maxsize=64)(_objective_check)
