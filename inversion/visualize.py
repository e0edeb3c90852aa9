"""Feature visualisation: the input a unit, channel, position or direction of a layer responds to.

``visualize(fn, units, *, shape, key, ...)`` optimises, for each of the ``k`` read-outs ``s_r``
of :mod:`inversion.visualize_units` and each of ``batch`` images per read-out, free parameters
``z`` of an input ``x = render(z)`` (:mod:`inversion.visualize_params`: pixels, Fourier with 1/f
scaling, colour decorrelation) to minimise

    J_r(z) = mean_b ℓ(s_r(fn(T_{r,t,b}(render(z_b)))))  +  λ_div · D(fn(T(render(z))))

with ``ℓ`` the goal (``'max'``: ``−s``; ``'min'``: ``s``; ``'value'``: ``(s − v)²``; ``'below'``:
``½‖x − x₀‖² + (μ/2) relu(s − v + δ)²``), ``T_{r,t,b}`` the random transforms
(:mod:`inversion.visualize_transforms`) drawn from ``fold_in(fold_in(key_r, t), b)`` at step
``t`` (``key_r = fold_in(key, r)``), and the optional diversity term of lucent,
``D = (1/B) Σ_{b≠b'} <G_b, G_b'>`` with ``G_b`` the Frobenius-normalised Gram matrix (channels ×
channels, over positions) of image ``b``'s activation (``λ_div = diversity``; images of one read-out
then differ from each other).

Each step is one solver step of the project (:mod:`inversion.solvers`, default
``Optax(optax.adam(0.05))``) on the :class:`inversion.Objective` of that step (its target holds
the read-out's weights, the reference and the step's key), so bounds (a projection for plain
pixels, ``σ`` squashing otherwise) and any solver apply. Without transforms the objective is
the same at every step and a quasi-Newton solver (``solvers.LBFGS``) is exact; with them it is
stochastic and a first-order solver is the natural choice.

All ``k`` read-outs are ONE ``vmap``-ed, ``jit``-compiled program (the read-outs' weights are
an array, not part of the program), compiled once per (fn, shape, parameterisation, transforms,
solver, goal, batch): a second call with other channels of the same layer reuses it. ``loop``:
``'python'`` drives the compiled step from the host (the faster on XLA:CPU, as in the engine);
``'scan'`` compiles the whole loop (``lax.scan``); ``None`` picks ``'python'`` on CPU.

>>> import jax, jax.numpy as jnp
>>> w = jnp.array([1.0, -2.0, 0.5])
>>> res = visualize(lambda x: jnp.array([w @ x]), units([0]), shape=(3,), param="pixels",
...                 bounds=(-1.0, 1.0), steps=200, key=jax.random.key(0))
>>> res.images[0, 0].tolist(), float(res.score[0, 0])
([1.0, -1.0, 1.0], 3.5)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

from inversion.objective import Objective
from inversion.solvers.base import Solver
from inversion.solvers.optax_solver import Optax
from inversion.visualize_params import PARAMS, Parameterisation
from inversion.visualize_transforms import Transform, apply, check_transforms, out_shape
from inversion.visualize_units import Units, channels, directions, positions, units, weights

__all__ = [
    "LOOPS",
    "Visualization",
    "channels",
    "default_solver",
    "directions",
    "positions",
    "units",
    "visualize",
    "weights",
]

LOOPS = ("python", "scan")


class Visualization(NamedTuple):
    """What :func:`visualize` returns (``k`` read-outs, ``batch`` images each).

    ``images``: ``(k, batch, *shape)`` the inputs ``render(z)`` (untransformed); ``score``:
    ``(k, batch)`` the read-out ``s_r(fn(x))`` at them; ``loss``: ``(k, steps)`` the objective
    ``J_r`` at each step's input (transformed, so noisy with transforms); ``params``: ``z``.
    """

    images: Array
    score: Array
    loss: Array
    params: Array


@functools.cache
def default_solver(learning_rate: float = 0.05) -> Optax:
    """``Optax(optax.adam(learning_rate))`` (one object per rate, so programs are reused)."""
    return Optax(optax.adam(learning_rate))


def _identity(z):
    return z


@dataclasses.dataclass(frozen=True)
class _Program:
    """Everything static about one visualisation run (hashable: the jit cache key)."""

    fn: Callable[[Array], Array]
    param: Parameterisation
    transforms: tuple[Transform, ...]
    solver: Solver
    goal: str
    value: float
    penalty: float
    margin: float
    diversity: float
    batch: int

    @property
    def z_bounds(self):
        return self.param.bounds if self.param.projected else None

    def activations(self, x, key):
        """``fn`` of each image of ``x`` after its own random transforms."""
        if self.transforms:
            keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(x.shape[0]))
            x = jax.vmap(lambda k, xi: apply(self.transforms, k, xi))(keys, x)
        return jax.vmap(self.fn)(x)

    def loss(self, z, target):
        """``J_r(z)`` for one read-out; ``target = (W, x₀, key of the step)``."""
        w, ref, key = target
        x = self.param.render(z)
        acts = self.activations(x, key)
        s = jnp.sum(acts * w, axis=tuple(range(1, acts.ndim)))
        if self.goal == "max":
            per = -s
        elif self.goal == "min":
            per = s
        elif self.goal == "value":
            per = (s - self.value) ** 2
        else:  # 'below'
            change = jnp.sum((x - ref) ** 2, axis=tuple(range(1, x.ndim)))
            excess = jax.nn.relu(s - self.value + self.margin)
            per = 0.5 * change + 0.5 * self.penalty * excess**2
        total = jnp.mean(per)
        if self.diversity > 0:
            total = total + self.diversity * _similarity(acts)
        return total

    def objective(self, w, ref, key) -> Objective:
        return Objective(_identity, (w, ref, key), loss=self.loss, bounds=self.z_bounds)

    # -- one read-out (vmapped over the k rows below) -------------------------------------
    def init_row(self, key_row, w, ref):
        z = self.param.init(jax.random.fold_in(key_row, 0), self.batch)
        if self.goal == "below":
            z = jnp.broadcast_to(ref, z.shape).astype(z.dtype)
        state = self.solver.init(self.objective(w, ref, key_row), z)
        return z, state

    def step_row(self, z, state, key_row, w, ref, t):
        key = jax.random.fold_in(jax.random.fold_in(key_row, 1), t)
        z, state = self.solver.step(self.objective(w, ref, key), z, state)
        return z, state, state.value

    def score_row(self, z, w):
        x = self.param.render(z)
        acts = jax.vmap(self.fn)(x)
        return x, jnp.sum(acts * w, axis=tuple(range(1, acts.ndim)))


def _similarity(acts: Array) -> Array:
    """``(1/B) Σ_{b≠b'} <G_b, G_b'>`` of the normalised Gram matrices (channels last)."""
    b = acts.shape[0]
    flat = acts.reshape(b, -1, acts.shape[-1]) if acts.ndim > 2 else acts[:, None, :]
    grams = jnp.einsum("bpc,bpd->bcd", flat, flat)
    grams = grams / jnp.maximum(jnp.linalg.norm(grams.reshape(b, -1), axis=1), 1e-12)[:, None, None]
    g = grams.reshape(b, -1)
    sims = g @ g.T
    return (jnp.sum(sims) - jnp.trace(sims)) / b


# The compiled programs, cached on the (hashable) program: k read-outs are one vmap.
@functools.partial(jax.jit, static_argnums=0)
def _init(program: _Program, keys, w, ref):
    return jax.vmap(program.init_row, in_axes=(0, 0, None))(keys, w, ref)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
def _step(program: _Program, z, state, keys, w, ref, t):
    return jax.vmap(program.step_row, in_axes=(0, 0, 0, 0, None, None))(z, state, keys, w, ref, t)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _scan(program: _Program, steps: int, z, state, keys, w, ref):
    def body(carry, t):
        z, state, value = _step.__wrapped__(program, *carry, keys, w, ref, t)
        return (z, state), value

    (z, state), history = jax.lax.scan(body, (z, state), jnp.arange(steps))
    return z, history.T


@functools.partial(jax.jit, static_argnums=0)
def _score(program: _Program, z, w):
    return jax.vmap(program.score_row)(z, w)


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_key(key) -> jax.Array:
    if isinstance(key, jax.Array):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return jax.random.wrap_key_data(key)
    raise TypeError(f"key must be one jax.random.key(seed), got {key!r:.80}")


def _check_bounds(bounds) -> tuple[float, float] | None:
    if bounds is None:
        return None
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(
            f"bounds must be None or a pair of numbers (lo, hi), got {bounds!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite with lo < hi, got {bounds!r}")
    return lo, hi


def _activation_shape(fn, shape) -> tuple[int, ...]:
    try:
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct(shape, jnp.float32))
    except Exception as err:  # noqa: BLE001 - reported with the shapes involved
        raise ValueError(f"fn cannot be applied to one input of shape {shape}: {err}") from err
    if not hasattr(out, "shape"):
        raise ValueError(f"fn must return one array (the layer's activation), got {out!r:.80}")
    return tuple(out.shape)


def visualize(
    fn: Callable[[Array], Array],
    units: Units,
    *,
    shape: tuple[int, ...],
    key: jax.Array,
    param: str = "fourier",
    transforms: Any = (),
    steps: int = 256,
    batch: int = 1,
    solver: Solver | None = None,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    decorrelate: bool | None = None,
    diversity: float = 0.0,
    reference: Array | None = None,
    sd: float = 0.01,
    decay: float = 1.0,
    loop: str | None = None,
    jit: bool = True,
) -> Visualization:
    """Optimise inputs for ``k = len(units)`` read-outs of ``fn`` at once (module docstring).

    Args:
        fn: pure map from ONE input of ``shape`` to the layer's activation (close over weights;
            e.g. ``lambda x: feature(params, x[None])[0]``).
        units: the read-outs and their goal (:func:`channels`, :func:`units`, :func:`positions`,
            :func:`directions`, :func:`weights`).
        shape: one input's shape, ``(H, W, C)`` for images.
        key: one ``jax.random.key``: starts and transforms are drawn from it only.
        param: ``'pixels'`` or ``'fourier'`` (:mod:`inversion.visualize_params`).
        transforms: a sequence of :mod:`inversion.visualize_transforms` (``standard()``: lucent's).
        steps: solver steps; batch: images per read-out (diverse with ``diversity > 0``).
        solver: an :mod:`inversion.solvers` solver (default Adam, learning rate 0.05).
        bounds: ``(lo, hi)`` of the input's values, or ``None``.
        decorrelate: colour decorrelation (default: on for RGB inputs).
        reference: ``x₀`` of goal ``'below'`` (start and anchor; needs ``param='pixels'``).
        sd, decay: the start's standard deviation and the Fourier ``1/f^decay`` exponent.
        loop: ``'python'``, ``'scan'`` or ``None`` (``'python'`` on CPU).
        jit: ``False`` runs the same functions op by op, uncompiled (for debugging).

    ``ValueError`` / ``TypeError`` name a bad argument before anything compiles.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable x -> activation, got {type(fn).__name__}")
    if not isinstance(units, Units):
        raise TypeError(
            "units must be an inversion.visualize_units.Units (channels(...), units(...), "
            f"positions(...), directions(...), weights(...)), got {type(units).__name__}"
        )
    try:
        shape = tuple(_check_int("shape entries", s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple of positive ints, got {shape!r}") from None
    if not shape:
        raise ValueError("shape must have at least one axis, got ()")
    key = _check_key(key)
    if param not in PARAMS:
        raise ValueError(f"param must be one of {PARAMS}, got {param!r}")
    steps, batch = _check_int("steps", steps), _check_int("batch", batch)
    solver = default_solver() if solver is None else solver
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be an inversion.solvers solver, got {type(solver).__name__}")
    bounds = _check_bounds(bounds)
    rgb = len(shape) == 3 and shape[-1] == 3
    decorrelate = rgb if decorrelate is None else bool(decorrelate)
    if isinstance(diversity, bool) or not isinstance(diversity, int | float):
        raise ValueError(f"diversity must be a number >= 0, got {diversity!r}")
    if not (math.isfinite(diversity) and diversity >= 0):
        raise ValueError(f"diversity must be a finite number >= 0, got {diversity!r}")
    if diversity > 0 and batch < 2:
        raise ValueError(
            f"diversity > 0 compares images of one read-out: needs batch >= 2, got {batch}"
        )
    for name, v in (("sd", sd), ("decay", decay)):
        if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    loop = loop or ("python" if jax.default_backend() == "cpu" else "scan")
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    parameterisation = Parameterisation(
        param, shape, decorrelate=decorrelate, bounds=bounds, sd=float(sd), decay=float(decay)
    )
    if units.goal == "below":
        if reference is None or param != "pixels" or decorrelate:
            raise ValueError(
                "goal 'below' (least change that shuts a unit down) needs reference=x0 and "
                f"param='pixels' without decorrelation, got reference={'set' if reference is not None else None}, "
                f"param={param!r}, decorrelate={decorrelate}"
            )
        ref = jnp.asarray(reference, jnp.float32)
        if ref.shape != shape or not bool(jnp.all(jnp.isfinite(ref))):
            raise ValueError(f"reference must be a finite array of shape {shape}, got {ref.shape}")
    elif reference is not None:
        raise ValueError(f"reference is used by goal 'below' only, got goal {units.goal!r}")
    else:
        ref = jnp.zeros(shape, jnp.float32)
    transforms = check_transforms(transforms, shape)
    w_t = units.weights(_activation_shape(fn, out_shape(transforms, shape)))
    w_0 = units.weights(_activation_shape(fn, shape)) if transforms else w_t
    program = _Program(
        fn=fn,
        param=parameterisation,
        transforms=transforms,
        solver=solver,
        goal=units.goal,
        value=float(units.value),
        penalty=float(units.penalty),
        margin=float(units.margin),
        diversity=float(diversity),
        batch=batch,
    )
    keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(len(units)))
    w_t = jnp.asarray(w_t)
    init, step, scan, score = (_init, _step, _scan, _score)
    if not jit:
        init, step, scan, score = (f.__wrapped__ for f in (_init, _step, _scan, _score))
    z, state = init(program, keys, w_t, ref)
    if loop == "scan":
        z, history = scan(program, steps, z, state, keys, w_t, ref)
    else:
        values = []
        for t in range(steps):
            z, state, value = step(program, z, state, keys, w_t, ref, jnp.int32(t))
            values.append(value)
        history = jnp.stack(values, axis=1)
    images, score = score(program, z, jnp.asarray(w_0))
    return Visualization(images=images, score=score, loss=history, params=z)
