"""What k x k / stride-k pooling discards, and what its switches keep.

Max pooling maps each window ``w in R^{k^2}`` to ``max w``. At an input whose windows have
a unique maximum the Jacobian selects one entry per window, so

    rank J = #windows,     nullity = n - #windows = (1 - 1/k^2) n.

The preimage of one window's output ``y`` is ``{w : max w = y}``: a union of ``k^2`` faces
``F_j = {w : w_j = y, w_i <= y (i != j)}``, each of dimension ``k^2 - 1`` and unbounded below.
The argmax *switch* ``j`` names the face: ``log2(k^2)`` bits per window. With the switches
the preimage is the single face ``F_j``; ``k^2 - 1`` reals per window remain free, each only
bounded above by ``y``. Average pooling has the same rank, but its preimage is the affine
hyperplane ``{w : mean w = y}`` (linear null space); its pseudo-inverse fills every entry
of a window with the window mean (nearest-neighbour upsampling).

Arrays are NHWC with ``H`` and ``W`` divisible by ``k``. Euclidean projections onto these
preimages are closed-form (see :func:`project_to_max_pool_preimage`), which splits the error
of any reconstruction into what the optimiser missed and what pooling destroyed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from inversion.analysis.certificate import certify


def _check(x, window, name="x"):
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{name} must be NHWC (4-D), got shape {x.shape}")
    return x


def _check_divisible(x, window):
    x = _check(x, window)
    if x.shape[1] % window or x.shape[2] % window:
        raise ValueError(f"spatial size {x.shape[1:3]} must be divisible by window {window}")
    return x


def _windows(x, window):
    """(b, h, w, c) -> (b, h/k, w/k, c, k*k), window entries in row-major order."""
    b, h, w, c = x.shape
    k = window
    x = x.reshape(b, h // k, k, w // k, k, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, h // k, w // k, c, k * k)


def _unwindows(v, window):
    """Inverse of :func:`_windows`."""
    b, hh, ww, c, _ = v.shape
    k = window
    v = v.reshape(b, hh, ww, c, k, k).transpose(0, 1, 4, 2, 5, 3)
    return v.reshape(b, hh * k, ww * k, c)


def max_pool_with_switches(
    x: Float[Array, "b h w c"], window: int = 2
) -> tuple[Float[Array, "b hk wk c"], Int[Array, "b hk wk c"]]:
    """``k x k`` / stride-``k`` max pooling and the argmax index (0..k^2-1, row-major)."""
    return _pool_switches(_check_divisible(x, window), window)


@partial(jax.jit, static_argnums=1)
def _pool_switches(x, window):
    v = _windows(x, window)
    return jnp.max(v, axis=-1), jnp.argmax(v, axis=-1)


def max_unpool(
    y: Float[Array, "b hk wk c"],
    *,
    window: int = 2,
    switches: Int[Array, "b hk wk c"] | None = None,
    fill: str = "zero",
) -> Float[Array, "b h w c"]:
    """Put each window's maximum back; ``fill`` decides the undetermined entries.

    With ``switches`` the maximum goes to its recorded position and the other ``k^2 - 1``
    entries get ``fill``: ``'zero'`` (0) or ``'max'`` (the window maximum, their upper bound).
    Without switches, ``'max'`` is nearest-neighbour upsampling and ``'zero'`` puts the
    maximum at the window's top-left entry.
    """
    y = _check(y, window, "y")
    if fill not in ("zero", "max"):
        raise ValueError(f"fill must be 'zero' or 'max', got {fill!r}")
    if switches is None:
        switches = jnp.zeros(y.shape, jnp.int32)
    elif jnp.shape(switches) != y.shape:
        raise ValueError(f"switches must have y's shape {y.shape}, got {jnp.shape(switches)}")
    return _unpool(y, jnp.asarray(switches), window, fill)


@partial(jax.jit, static_argnums=(2, 3))
def _unpool(y, switches, window, fill):
    hit = jnp.arange(window * window) == switches[..., None]
    other = jnp.zeros_like(y) if fill == "zero" else y
    return _unwindows(jnp.where(hit, y[..., None], other[..., None]), window)


def avg_unpool(y: Float[Array, "b hk wk c"], *, window: int = 2) -> Float[Array, "b h w c"]:
    """Pseudo-inverse of ``k x k`` average pooling: every entry gets its window mean."""
    y = _check(y, window, "y")
    return _unwindows(jnp.broadcast_to(y[..., None], (*y.shape, window * window)), window)


def project_to_max_pool_preimage(
    x: Float[Array, "b h w c"],
    y: Float[Array, "b hk wk c"],
    *,
    window: int = 2,
    switches: Int[Array, "b hk wk c"] | None = None,
) -> Float[Array, "b h w c"]:
    """Nearest point to ``x`` whose ``k x k`` max pooling is ``y`` (per window, closed form).

    Without switches, onto ``{w : max w = y}``: clip every entry to ``<= y``; if no entry then
    equals ``y`` (all were below), raise the largest one to ``y`` — the cheapest single move.
    With switches, onto the face ``{w : w_j = y, w_i <= y}``: set ``w_j = y``, clip the others.
    """
    x = _check_divisible(x, window)
    y = _check(y, window, "y")
    b, h, w, c = x.shape
    if y.shape != (b, h // window, w // window, c):
        raise ValueError(
            f"y must have shape {(b, h // window, w // window, c)} for x {x.shape}, got {y.shape}"
        )
    if switches is not None and jnp.shape(switches) != y.shape:
        raise ValueError(f"switches must have y's shape {y.shape}, got {jnp.shape(switches)}")
    return _project(x, y, None if switches is None else jnp.asarray(switches), window)


@partial(jax.jit, static_argnums=3)
def _project(x, y, switches, window):
    v = _windows(x, window)
    yy = y[..., None]
    j = jnp.argmax(v, axis=-1) if switches is None else switches
    hit = jnp.arange(window * window) == j[..., None]
    return _unwindows(jnp.where(hit, yy, jnp.minimum(v, yy)), window)


class PoolingLoss(NamedTuple):
    """Counts of what a ``k x k`` / stride-``k`` pooling keeps and loses at an input."""

    window: int
    n_in: int  # reals in the input
    n_windows: int  # reals in the output (one per window and channel)
    rank: int  # exact rank of the Jacobian at x (float64 certificate, certify)
    nullity: int  # n_in - rank
    expected_nullity: float  # (1 - 1/k^2) n_in
    free_per_window: int  # k^2 - 1: dimension of each window's preimage
    switch_bits: float  # n_windows * log2(k^2): what argmax switches would add


def pooling_loss(
    pool_fn: Callable[[Array], Array],
    x: Float[Array, "b h w c"],
    *,
    window: int = 2,
    tol: float | None = None,
) -> PoolingLoss:
    """Measure the Jacobian rank of ``pool_fn`` at ``x`` and set it beside the window counts.

    ``pool_fn`` is any pooling callable (max, average, ...) mapping NHWC ``x`` to its
    ``k x k`` / stride-``k`` pooled output; the rank is ``n_in`` minus the exact nullity of
    :func:`~inversion.analysis.certify` (dense float64 Jacobian), or, when ``tol`` is given,
    the number of singular values above that absolute tolerance.
    """
    if not callable(pool_fn):
        raise TypeError(f"pool_fn must be callable, got {type(pool_fn).__name__}")
    x = _check_divisible(x, window)
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be a non-negative number or None, got {tol!r}")
    cert = certify(pool_fn, x, method="dense")
    if tol is None:
        nullity = cert.nullity
    else:
        nullity = cert.nullity_at(tol / cert.sigma_max) if cert.sigma_max > 0 else cert.n_in
    kk = window * window
    return PoolingLoss(
        window=window,
        n_in=cert.n_in,
        n_windows=cert.n_out,
        rank=cert.n_in - nullity,
        nullity=nullity,
        expected_nullity=(1 - 1 / kk) * cert.n_in,
        free_per_window=kk - 1,
        switch_bits=cert.n_out * math.log2(kk),
    )
