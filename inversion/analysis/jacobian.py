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

Both methods are views of :func:`~inversion.analysis.certify` (the same float64 Jacobian
products, the same tolerance convention). ``method='dense'`` is ``certify(method='dense')``: all
``min(m, n)`` singular values of the float64 ``J``. ``method='lanczos'`` never forms ``J``: it
runs ``certify``'s Golub-Kahan bidiagonalisation (float64 JVP/VJP, full reorthogonalisation,
on ``J^T`` for a wide map) with ``2k + 10`` steps, doubled until the top ``k`` Ritz values have
converged (residual bound ``<= 1e-7 sigma_1``, see ``certify``) or the run is complete, and
returns the top ``k``. Ritz values are lower bounds (``theta_j <= sigma_j``), so
``rank = #{theta_j > tol}`` is a lower bound on the rank. It is the rank, ``complete=True``,
when the run was complete or when the rest of the spectrum is shown to lie below ``tol``: for
``V_r`` the Ritz vectors of the ``r = rank`` values above ``tol``, ``sigma_{r+1} <=
||J (I - V_r V_r^T)||`` (Eckart-Young: ``J V_r V_r^T`` has rank ``r``), and with ``10``
Gaussian probes ``w_i``, ``||J (I - V_r V_r^T)|| <= 10 sqrt(2/pi) max_i ||J (I - V_r V_r^T)
w_i||`` with probability at least ``1 - 10^-10`` (Halko, Martinsson & Tropp 2011, Lemma 4.1).
``complete=True`` from the probes is thus a statement with that probability; a Krylov method
alone (one start vector) would miss repeated singular values. Otherwise ``rank`` is a lower
bound and ``nullity`` an upper bound (``complete=False``).
``method='auto'`` is dense when ``m * n <= dense_limit`` (default 4·10^6 entries).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from inversion.analysis.certificate import certify, jacobian64

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
    complete: bool  # the rank is exact: whole spectrum, its tail reached, or the rest below tol
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


def dense_jacobian(fn: Callable[[Array], Array], x: Array) -> Float[np.ndarray, "m n"]:
    """``d fn / d x`` as an ``(m, n)`` float64 numpy matrix (inputs/outputs flattened),
    differentiated in float64 as :func:`~inversion.analysis.certificate.certify` does."""
    return jacobian64(fn, x)


#: Probes of the complement of the Ritz vectors, and the factor of Halko, Martinsson & Tropp's
#: bound ``||M|| <= 10 sqrt(2/pi) max_i ||M w_i||`` (probability >= 1 - 10^-PROBES).
PROBES = 10
_HMT = 10.0 * math.sqrt(2.0 / math.pi)
#: Residual bound (relative to sigma_1) at which a Ritz value counts as converged.
CONVERGED = 1e-7


def _rest_below(fn, x, ritz, tol, key) -> bool:
    """Whether ``||J (I - V V^T)|| <= tol`` by :data:`PROBES` Gaussian probes (see the module
    docstring), ``V = ritz`` orthonormal ``n x r``, ``J`` in float64 as ``certify`` takes it."""
    w = np.asarray(jax.random.normal(key, (PROBES, x.size)), np.float64)
    w = w - (w @ ritz) @ ritz.T
    with jax.enable_x64(True):
        x64 = jnp.asarray(x, jnp.float64)
        try:
            jax.eval_shape(fn, x64)
        except TypeError:  # fn refuses float64 (certify warned): its own dtype
            x64 = jnp.asarray(x)
        tangents = jnp.asarray(w.reshape(PROBES, *x.shape), x64.dtype)
        images = jax.jit(jax.vmap(lambda t: jax.jvp(fn, (x64,), (t,))[1]))(tangents)
        images = np.asarray(images, np.float64).reshape(PROBES, -1)
    _check_finite_jacobian(
        np.isfinite(images).all(), int(np.sum(~np.isfinite(images))), images.size
    )
    return _HMT * float(np.max(np.linalg.norm(images, axis=1))) <= tol


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
        s = certify(fn, x, method="dense").singular_values
        return summarize_spectrum(s, n_in=n, n_out=m, tol=tol, eps=eps)
    if min(m, n) < 3:
        raise ValueError(f"method='lanczos' needs min(m, n) >= 3, got a {m}x{n} Jacobian")
    q = min(m, n)
    k = min(50, q - 1) if k is None else k
    if k >= q:
        raise ValueError(f"k must be < min(m, n) = {q} for method='lanczos', got {k}")
    key = jax.random.key(0) if key is None else key
    run_key, probe_key = jax.random.split(key)
    steps = min(q, 2 * k + 10)
    while True:
        cert = certify(
            fn, x, method="lanczos", k=steps, key=run_key, rtol=max(m, n) * eps, vectors=True
        )
        theta = cert.singular_values
        if cert.complete or np.all(cert.residuals[:k] <= CONVERGED * theta[0]):
            break
        steps = min(q, 2 * steps)
    s = theta[:k]
    tol = max(m, n) * eps * float(s[0]) if tol is None else float(tol)
    rank = int(np.sum(s > tol))
    complete = cert.complete and rank < k  # the whole spectrum: exact if the tail is below tol
    if not complete:
        complete = _rest_below(fn, x, cert.vectors[:, :rank], tol, probe_key)
    spec = summarize_spectrum(
        s, n_in=n, n_out=m, tol=tol, eps=eps, complete=complete, method="lanczos"
    )
    return spec._replace(complete=bool(complete))


def layerwise_spectra(
    feature_fns: Mapping[str, Callable[[Array], Array]], x: Array, **kwargs
) -> dict[str, JacobianSpectrum]:
    """:func:`jacobian_spectrum` of each ``name -> fn`` (input to that intermediate) at ``x``.

    Ranks that fall along the forward order show where a network discards input directions.
    """
    if not isinstance(feature_fns, Mapping):
        raise TypeError(f"feature_fns must map names to callables, got {type(feature_fns)}")
    return {name: jacobian_spectrum(fn, x, **kwargs) for name, fn in feature_fns.items()}
