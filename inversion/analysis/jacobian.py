"""Singular values of a network's Jacobian at a point: local rank, nullity, volume.

For ``fn : R^n -> R^m`` (any array shapes, flattened) and ``J = d fn / d x`` at ``x``:

* ``singular_values``: ``sigma_1 >= sigma_2 >= ...`` of ``J`` (all ``min(m, n)`` of them
  with ``method='dense'``; the top ``k`` with ``method='lanczos'``).
* ``rank = #{sigma_i > tol}`` with ``tol = max(m, n) * eps * sigma_1`` by default, ``eps`` the
  machine epsilon of ``x``'s dtype (float32: 1.19e-7): the rank *at working precision*, i.e.
  ``n - certify(fn, x).effective_nullity``; ``nullity = n - rank``: the input directions the
  map cannot resolve near ``x`` at that precision. For the exact (float64) nullity and every
  statement of information loss use :func:`inversion.analysis.certify`.
* ``log_volume = sum_{sigma_i > tol} log sigma_i`` (natural log): the log of the factor by
  which ``fn`` scales ``rank``-dimensional volume on the row space of ``J``.

``method='dense'`` builds ``J`` in float64 (:func:`dense_jacobian`, the Jacobian ``certify``
uses) and takes numpy's SVD. ``method='lanczos'`` never forms ``J``: it wraps
``v -> J v`` (``jax.linearize``) and ``u -> J^T u`` (``jax.linear_transpose``) as a scipy
``LinearOperator`` and calls ARPACK through ``scipy.sparse.linalg.svds`` (implicitly
restarted Lanczos on ``J^T J``). It then knows the rank exactly only when the ``k``-th value
is already below ``tol`` (``complete=True``); otherwise ``rank`` is a lower bound and
``nullity``/``log_volume`` refer to the computed values only (``complete=False``).
``method='auto'`` is dense when ``m * n <= dense_limit`` (default 4·10^6 entries).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from scipy.sparse.linalg import LinearOperator, svds

from inversion.analysis.certificate import jacobian64

_METHODS = ("auto", "dense", "lanczos")


class JacobianSpectrum(NamedTuple):
    """Singular values of a Jacobian and what they say about local invertibility."""

    singular_values: Float[np.ndarray, " r"]  # descending
    rank: int  # numerical rank (lower bound when not complete)
    nullity: int  # n_in - rank (upper bound when not complete)
    log_volume: float  # sum of log sigma over sigma > tol
    n_in: int
    n_out: int
    tol: float  # threshold used for the rank
    complete: bool  # True when the rank is exact (whole spectrum or its tail reached)
    method: str  # 'dense' or 'lanczos'

    @property
    def condition_number(self) -> float:
        """``sigma_1 / sigma_n`` as an inverse problem on the ``n_in`` inputs: ``inf`` unless the
        Jacobian is injective (``rank == n_in``, which needs ``n_out >= n_in``)."""
        s = self.singular_values
        injective = self.complete and self.rank == self.n_in
        return float(s[0] / s[self.n_in - 1]) if injective else float("inf")


def summarize_spectrum(
    singular_values,
    *,
    n_in: int,
    n_out: int,
    tol: float | None = None,
    eps: float = float(np.finfo(np.float32).eps),
    complete: bool = True,
    method: str = "dense",
) -> JacobianSpectrum:
    """Rank, nullity and log-volume from a list of singular values (see module docstring)."""
    s = np.sort(np.asarray(singular_values, dtype=np.float64).ravel())[::-1]
    s = np.maximum(s, 0.0)
    top = float(s[0]) if s.size else 0.0
    tol = max(n_in, n_out) * eps * top if tol is None else float(tol)
    kept = s[s > tol]
    rank = int(kept.size)
    if not complete and s.size and s[-1] <= tol:
        complete = True
    return JacobianSpectrum(
        singular_values=s,
        rank=rank,
        nullity=n_in - rank,
        log_volume=float(np.sum(np.log(kept))),
        n_in=n_in,
        n_out=n_out,
        tol=tol,
        complete=bool(complete),
        method=method,
    )


def _check(fn, x, method, k, tol):
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
    if x.size == 0:
        raise ValueError(f"x must be non-empty, got shape {x.shape}")
    if not bool(jnp.all(jnp.isfinite(x))):
        bad = int(jnp.sum(~jnp.isfinite(x)))
        raise ValueError(
            f"x has {bad} NaN or inf entries (shape {x.shape}); expected a finite point"
        )
    if k is not None and (not isinstance(k, int | np.integer) or k < 1):
        raise ValueError(f"k must be a positive integer or None, got {k!r}")
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be a non-negative number or None, got {tol!r}")
    return x


def _check_finite_jacobian(finite: bool, bad: int, total: int, what: str = "entries") -> None:
    if not finite:
        raise ValueError(
            f"the Jacobian of fn at x is not finite ({bad} of {total} {what} NaN or inf): fn is "
            "not differentiable there (e.g. sqrt or log at 0) or overflows; expected a point "
            "where fn has a finite Jacobian"
        )


def _finite_product(v) -> np.ndarray:
    """A Jacobian-vector product on host, checked (ARPACK fails obscurely on NaN)."""
    v = np.asarray(v, np.float64)
    _check_finite_jacobian(
        np.isfinite(v).all(),
        int(np.sum(~np.isfinite(v))),
        v.size,
        "entries of a Jacobian-vector product",
    )
    return v


def dense_jacobian(fn: Callable[[Array], Array], x: Array) -> Float[np.ndarray, "m n"]:
    """``d fn / d x`` as an ``(m, n)`` float64 numpy matrix (inputs/outputs flattened),
    differentiated in float64 as :func:`~inversion.analysis.certificate.certify` does."""
    return jacobian64(fn, x)


def _lanczos(fn, x, k, key):
    y, jvp = jax.linearize(fn, x)
    vjp = jax.linear_transpose(jvp, x)
    m, n = int(y.size), int(x.size)
    dt = x.dtype
    matvec = jax.jit(lambda v: jvp(v.reshape(x.shape).astype(dt)).ravel())
    rmatvec = jax.jit(lambda u: vjp(u.reshape(y.shape).astype(dt))[0].ravel())
    op = LinearOperator(
        (m, n),
        dtype=np.float64,
        matvec=lambda v: _finite_product(matvec(jnp.asarray(np.ravel(v)))),
        rmatvec=lambda u: _finite_product(rmatvec(jnp.asarray(np.ravel(u)))),
    )
    v0 = np.asarray(jax.random.normal(key, (min(m, n),)), np.float64)
    return svds(op, k=k, v0=v0, tol=1e-7, return_singular_vectors=False), m, n


def jacobian_spectrum(
    fn: Callable[[Array], Array],
    x: Array,
    *,
    method: str = "auto",
    k: int | None = None,
    tol: float | None = None,
    key: Array | None = None,
    dense_limit: int = 4_000_000,
) -> JacobianSpectrum:
    """Singular values of the Jacobian of ``fn`` at ``x``, its rank, nullity and log-volume.

    ``k`` (lanczos only) is how many of the largest values to compute, default
    ``min(50, min(m, n) - 1)``; ``key`` seeds the Lanczos start vector (default key 0).
    """
    x = _check(fn, x, method, k, tol)
    y = jax.eval_shape(fn, x)
    m, n = int(np.prod(y.shape)), int(x.size)
    eps = float(jnp.finfo(x.dtype).eps)
    if method == "auto":
        method = "dense" if m * n <= dense_limit or min(m, n) < 3 else "lanczos"
    if method == "dense":
        jac = dense_jacobian(fn, x)
        _check_finite_jacobian(np.isfinite(jac).all(), int(np.sum(~np.isfinite(jac))), m * n)
        s = np.linalg.svd(jac, compute_uv=False)
        return summarize_spectrum(s, n_in=n, n_out=m, tol=tol, eps=eps)
    if min(m, n) < 3:
        raise ValueError(f"method='lanczos' needs min(m, n) >= 3, got a {m}x{n} Jacobian")
    k = min(50, min(m, n) - 1) if k is None else k
    if k >= min(m, n):
        raise ValueError(f"k must be < min(m, n) = {min(m, n)} for method='lanczos', got {k}")
    key = jax.random.key(0) if key is None else key
    s, m, n = _lanczos(fn, x, k, key)
    if tol is None:
        tol = max(m, n) * eps * float(np.max(s))
    return summarize_spectrum(
        s, n_in=n, n_out=m, tol=tol, eps=eps, complete=False, method="lanczos"
    )


def layerwise_spectra(
    feature_fns: Mapping[str, Callable[[Array], Array]], x: Array, **kwargs
) -> dict[str, JacobianSpectrum]:
    """:func:`jacobian_spectrum` of each ``name -> fn`` (input to that intermediate) at ``x``.

    Ranks that fall along the forward order show where a network discards input directions.
    """
    if not isinstance(feature_fns, Mapping):
        raise TypeError(f"feature_fns must map names to callables, got {type(feature_fns)}")
    return {name: jacobian_spectrum(fn, x, **kwargs) for name, fn in feature_fns.items()}
