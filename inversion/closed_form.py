"""Closed-form inverses: affine maps (via the SVD) and invertible element-wise activations.

Affine map ``y = W x + b`` with ``W`` of shape ``(m, n)``. With the thin SVD
``W = U diag(s) V^T`` and rank ``r = #{s_i > rtol * s_max}`` (default
``rtol = max(m, n) * eps``, numpy's ``matrix_rank`` convention), every solution of the
least-squares problem ``min_x ||W x + b - y||`` is

    x = V_r diag(1/s_r) U_r^T (y - b)  +  N z,      N = V[:, r:]  (n x (n - r)),  z arbitrary,

where the first term (the Moore-Penrose pseudo-inverse applied to ``y - b``) is the solution of
minimum norm and the columns of ``N`` are an orthonormal basis of the null space of ``W``:
the directions of input space the map cannot see. ``kind`` names the case:

* ``'exact'``: ``r = m = n``; ``W`` is invertible and ``x = W^{-1}(y - b)`` is unique.
* ``'least_squares'``: ``r = n < m`` (overdetermined, full column rank); ``x`` is the unique
  least-squares solution and ``residual > 0`` when ``y`` is off the range of ``W``.
* ``'minimum_norm'``: ``r < n``; the solutions form the affine space ``x + span(N)`` and ``x``
  is the one of smallest norm (a least-squares solution too when ``r < m``).

Element-wise activations: ``sigmoid_inverse(y) = log(y / (1 - y))`` on ``(0, 1)``,
``tanh_inverse(y) = artanh(y) = log((1 + y) / (1 - y)) / 2`` on ``(-1, 1)``,
``leaky_relu_inverse(y, a) = y if y >= 0 else y / a`` for slope ``a > 0``. Values outside the
range raise ``ValueError`` (checked for concrete arrays; under ``jit`` no check is possible).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


class AffineInverse(NamedTuple):
    """Solution of ``y = W x + b`` (see the module docstring)."""

    x: Float[Array, "... n"]  # minimum-norm least-squares solution
    residual: Float[Array, "..."]  # ||W x + b - y|| / ||y|| (absolute norm when y = 0)
    null_space: Float[Array, "n k"]  # orthonormal basis of ker W, k = n - rank
    rank: int
    kind: str  # 'exact' | 'least_squares' | 'minimum_norm'


def _finite(name: str, a: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf; expected finite values")
    return a


def affine_inverse(
    W: Float[Array, "m n"],
    b: Float[Array, " m"] | None,
    y: Float[Array, "... m"],
    *,
    rtol: float | None = None,
) -> AffineInverse:
    """Invert ``y = W x + b`` by the SVD; ``y`` may carry leading batch axes. ``b=None`` means 0.

    Computed in float64 with numpy and returned in the result dtype of the inputs.
    """
    dtype = jnp.result_type(W, y) if b is None else jnp.result_type(W, b, y)
    Wn = _finite("W", np.asarray(W, np.float64))
    if Wn.ndim != 2:
        raise ValueError(f"W must be a matrix (m, n), got shape {Wn.shape}")
    m, n = Wn.shape
    bn = np.zeros(m) if b is None else _finite("b", np.asarray(b, np.float64))
    if bn.shape != (m,):
        raise ValueError(f"b has shape {bn.shape}; expected ({m},) for W of shape {Wn.shape}")
    yn = _finite("y", np.asarray(y, np.float64))
    if yn.ndim < 1 or yn.shape[-1] != m:
        raise ValueError(f"y has shape {yn.shape}; expected (..., {m}) for W of shape {Wn.shape}")
    u, s, vt = np.linalg.svd(Wn, full_matrices=True)
    if rtol is None:
        rtol = max(m, n) * np.finfo(np.float64).eps
    if not rtol >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    rank = int(np.sum(s > rtol * s[0])) if s.size else 0
    ur, sr, vr = u[:, :rank], s[:rank], vt[:rank].T
    x = ((yn - bn) @ ur) / sr @ vr.T
    null = vt[rank:].T  # (n, n - rank)
    err = np.linalg.norm(x @ Wn.T + bn - yn, axis=-1)
    ref = np.linalg.norm(yn, axis=-1)
    residual = err / np.where(ref > 0, ref, 1.0)
    if rank == n:
        kind = "exact" if m == n else "least_squares"
    else:
        kind = "minimum_norm"
    return AffineInverse(
        x=jnp.asarray(x, dtype),
        residual=jnp.asarray(residual, dtype),
        null_space=jnp.asarray(null, dtype),
        rank=rank,
        kind=kind,
    )


def _check_open_interval(name: str, y: Array, lo: float, hi: float) -> None:
    if isinstance(y, jax.core.Tracer):
        return
    host = np.asarray(y)
    if not np.all((host > lo) & (host < hi)):
        bad = host[~((host > lo) & (host < hi))].ravel()[:5]
        raise ValueError(
            f"{name} is defined on the open interval ({lo}, {hi}); got values such as {bad}"
        )


def sigmoid_inverse(y: Float[Array, "..."]) -> Float[Array, "..."]:
    """``logit(y) = log(y) - log(1 - y)``, the inverse of ``sigmoid``, for ``y`` in (0, 1)."""
    y = jnp.asarray(y)
    _check_open_interval("sigmoid_inverse", y, 0.0, 1.0)
    return jax.scipy.special.logit(y)


def tanh_inverse(y: Float[Array, "..."]) -> Float[Array, "..."]:
    """``artanh(y) = log((1 + y) / (1 - y)) / 2``, the inverse of ``tanh``, for ``y`` in (-1, 1)."""
    y = jnp.asarray(y)
    _check_open_interval("tanh_inverse", y, -1.0, 1.0)
    return jnp.arctanh(y)


def leaky_relu_inverse(y: Float[Array, "..."], negative_slope: float = 0.01) -> Float[Array, "..."]:
    """Inverse of ``leaky_relu(x) = x if x >= 0 else a x``: ``y if y >= 0 else y / a`` (a > 0)."""
    if not negative_slope > 0:
        raise ValueError(
            f"negative_slope must be > 0 for leaky_relu to be invertible, got {negative_slope} "
            "(slope 0 is ReLU, whose negative inputs are lost)"
        )
    y = jnp.asarray(y)
    return jnp.where(y >= 0, y, y / negative_slope)
