"""Random image transforms for feature visualisation, each driven by an explicit PRNG key.

A transform is a small frozen object ``t(key, x) -> x'`` on ONE image ``x`` of shape
``(H, W, C)``; ``t.out_shape((H, W, C))`` is the shape it returns (static, so a chain of them
compiles once). The randomness comes only from ``key``: the same key gives the same image, and
:func:`inversion.visualize` draws ``fold_in(fold_in(key, row), step)`` for every unit's row and
step. Transforms make a visualisation robust (Mordvintsev et al. 2015; Olah et al. 2017): a
pattern that survives small shifts, zooms and rotations is one the unit responds to, not a
high-frequency adversarial texture.

* :class:`Pad` ``(w, value)``: ``x' = pad(x, w)`` with the constant ``value`` (H + 2w, W + 2w).
* :class:`Jitter` ``(d)``: a random crop ``x'[i, j] = x[i + dy, j + dx]`` of size
  ``(H − d, W − d)`` with ``dy, dx`` uniform in ``{0, …, d − 1}`` (lucent's ``jitter``).
* :class:`Scale` ``(factors)``: a zoom by a factor ``s`` drawn uniformly from ``factors`` about the
  image centre ``c``: ``x'(p) = x(c + (p − c) / s)``, bilinear, edge values outside; same shape.
* :class:`Rotate` ``(degrees)``: a rotation by ``θ`` drawn uniformly from ``degrees`` about ``c``:
  ``x'(p) = x(c + R(−θ)(p − c))``, bilinear, edge values outside; same shape.

Resampling is ``jax.scipy.ndimage.map_coordinates`` (order 1, ``mode='nearest'``).

>>> import jax, jax.numpy as jnp
>>> chain = standard(pad=2, jitter=2, jitter_after=1)
>>> x = jnp.zeros((8, 8, 1))
>>> apply(chain, jax.random.key(0), x).shape, out_shape(chain, (8, 8, 1))
((9, 9, 1), (9, 9, 1))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

__all__ = [
    "Jitter",
    "Pad",
    "Rotate",
    "Scale",
    "Transform",
    "apply",
    "check_transforms",
    "out_shape",
    "standard",
]


class Transform:
    """Base of the transforms: ``t(key, x)`` on one ``(H, W, C)`` image, ``t.out_shape``."""

    def __call__(self, key: Array, x: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)


def _positive_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _choices(name: str, values, positive: bool) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a non-empty sequence of numbers, got {values!r}"
        ) from None
    if not out or not all(math.isfinite(v) and (v > 0 or not positive) for v in out):
        what = "positive finite numbers" if positive else "finite numbers"
        raise ValueError(f"{name} must be a non-empty sequence of {what}, got {values!r}")
    return out


@dataclasses.dataclass(frozen=True)
class Pad(Transform):
    """``x' = pad(x, width)`` with the constant ``value`` on both spatial axes."""

    width: int
    value: float = 0.5

    def __post_init__(self):
        _positive_int("Pad width", self.width, 0)

    def __call__(self, key, x):
        del key
        w = self.width
        return jnp.pad(x, ((w, w), (w, w), (0, 0)), constant_values=self.value)

    def out_shape(self, shape):
        h, w, c = shape
        return (h + 2 * self.width, w + 2 * self.width, c)


@dataclasses.dataclass(frozen=True)
class Jitter(Transform):
    """A random crop of size ``(H − d, W − d)`` at an offset uniform in ``{0..d−1}²``."""

    d: int

    def __post_init__(self):
        _positive_int("Jitter d", self.d, 1)

    def __call__(self, key, x):
        h, w, c = x.shape
        dy, dx = jax.random.randint(key, (2,), 0, self.d)
        return jax.lax.dynamic_slice(x, (dy, dx, 0), (h - self.d, w - self.d, c))

    def out_shape(self, shape):
        h, w, c = shape
        if min(h, w) <= self.d:
            raise ValueError(f"Jitter d={self.d} needs images larger than {self.d}, got {shape}")
        return (h - self.d, w - self.d, c)


def _warp(x: Array, matrix: Array) -> Array:
    """``x'(p) = x(c + M (p − c))`` for every pixel ``p`` (bilinear, edge values outside)."""
    h, w, _ = x.shape
    centre = jnp.array([(h - 1) / 2, (w - 1) / 2], x.dtype)
    grid = jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij"), -1).astype(x.dtype)
    src = centre + (grid - centre) @ matrix.T  # (h, w, 2)

    def one(channel):
        return jax.scipy.ndimage.map_coordinates(
            channel, [src[..., 0], src[..., 1]], order=1, mode="nearest"
        )

    return jax.vmap(one, in_axes=-1, out_axes=-1)(x)


@dataclasses.dataclass(frozen=True)
class Scale(Transform):
    """A zoom about the centre by a factor drawn uniformly from ``factors`` (same shape)."""

    factors: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "factors", _choices("Scale factors", self.factors, True))

    def __call__(self, key, x):
        s = jax.random.choice(key, jnp.asarray(self.factors, x.dtype))
        return _warp(x, jnp.eye(2, dtype=x.dtype) / s)


@dataclasses.dataclass(frozen=True)
class Rotate(Transform):
    """A rotation about the centre by an angle (degrees) drawn uniformly from ``degrees``."""

    degrees: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "degrees", _choices("Rotate degrees", self.degrees, False))

    def __call__(self, key, x):
        theta = jnp.deg2rad(jax.random.choice(key, jnp.asarray(self.degrees, x.dtype)))
        cos, sin = jnp.cos(theta), jnp.sin(theta)
        return _warp(x, jnp.array([[cos, sin], [-sin, cos]], x.dtype))  # R(−θ)


def standard(
    *,
    pad: int = 12,
    jitter: int = 8,
    scales: Sequence[float] = tuple(1 + (i - 5) / 50 for i in range(11)),
    degrees: Sequence[float] = tuple(range(-10, 11)) + (0,) * 5,
    jitter_after: int = 4,
) -> tuple[Transform, ...]:
    """Lucent's ``standard_transforms``: pad, jitter, scale, rotate, jitter (sizes adjustable;
    a size of 0 or an empty sequence drops that transform)."""
    chain: list[Transform] = []
    if pad:
        chain.append(Pad(pad))
    if jitter:
        chain.append(Jitter(jitter))
    if scales:
        chain.append(Scale(tuple(scales)))
    if degrees:
        chain.append(Rotate(tuple(degrees)))
    if jitter_after:
        chain.append(Jitter(jitter_after))
    return tuple(chain)


def check_transforms(transforms, shape: tuple[int, ...]) -> tuple[Transform, ...]:
    """``transforms`` as a tuple of :class:`Transform`; ``ValueError``/``TypeError`` otherwise,
    or when they need an ``(H, W, C)`` image and ``shape`` is not one."""
    if isinstance(transforms, Transform):
        transforms = (transforms,)
    if not isinstance(transforms, Sequence) or isinstance(transforms, str):
        raise TypeError(f"transforms must be a sequence of Transform, got {transforms!r:.80}")
    for i, t in enumerate(transforms):
        if not isinstance(t, Transform):
            raise TypeError(
                f"transforms[{i}] must be an inversion.visualize_transforms.Transform, got {t!r:.80}"
            )
    if transforms and len(shape) != 3:
        raise ValueError(f"transforms need images of shape (H, W, C), got shape {shape}")
    out_shape(transforms, shape)  # raises on a crop larger than the image
    return tuple(transforms)


def out_shape(transforms: Sequence[Transform], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the chain returns for one image of ``shape``."""
    for t in transforms:
        shape = t.out_shape(shape)
    return tuple(shape)


def apply(transforms: Sequence[Transform], key: Array, x: Array) -> Array:
    """The chain applied to one image, transform ``i`` with ``fold_in(key, i)``."""
    for i, t in enumerate(transforms):
        x = t(jax.random.fold_in(key, i), x)
    return x
