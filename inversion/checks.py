"""Argument checks and option resolution for the engine, all run before anything compiles.

Every bad value raises ``ValueError`` (or ``TypeError`` for a wrong type) naming the value and
what was expected. Shapes are checked with ``jax.eval_shape``, which traces but never compiles.

Arrays (targets, starts, bounds) must hold real numbers: booleans and integers are taken as
float32, strings, objects and PRNG keys are a ``TypeError``, and so are complex numbers (which
would otherwise lose their imaginary part with only a ``ComplexWarning``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

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


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """An ``int`` (not ``bool``) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_real(name: str, value: Any, *, positive: bool = False) -> float:
    """A finite real number, ``>= 0`` (or ``> 0`` with ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        expected = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {expected}, got {value}")
    return value


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


def check_loop(loop: str, *, platform: str) -> str:
    """Resolve ``'auto'`` to ``'python'`` on CPU and ``'compiled'`` on accelerators."""
    if loop not in LOOPS:
        raise ValueError(f"unknown loop {loop!r}; expected one of {list(LOOPS)}")
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
    if not isinstance(bounds, tuple | list) or len(bounds) != 2:
        raise TypeError(f"bounds must be None or a pair (lo, hi), got {bounds!r}")
    for name, b in (("lo", bounds[0]), ("hi", bounds[1])):
        try:
            check_real_dtype(f"bounds {name}", b)
        except TypeError as err:
            raise TypeError(
                f"{err} (bounds must be None or a pair (lo, hi) of numbers or "
                "arrays; -inf/inf for no bound)"
            ) from None
    lo = np.asarray(bounds[0], dtype=np.float64)
    hi = np.asarray(bounds[1], dtype=np.float64)
    for name, b in (("lo", lo), ("hi", hi)):
        try:
            np.broadcast_to(b, x_shape)
        except ValueError:
            raise ValueError(
                f"bounds {name} of shape {b.shape} does not broadcast to the input shape {x_shape}"
            ) from None
        if np.any(np.isnan(b)):
            raise ValueError(f"bounds {name} contains NaN; expected numbers (inf allowed)")
    if np.any(lo >= hi):
        raise ValueError(f"bounds need lo < hi everywhere, got lo={bounds[0]!r}, hi={bounds[1]!r}")
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
