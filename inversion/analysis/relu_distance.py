"""Distance from a reconstruction to a ReLU layer's preimage, and the error split it gives.

For ``y = relu(W x + b)`` the preimage ``P(y)`` (see :mod:`inversion.analysis.relu`) is a convex
polyhedron containing every input that produces ``y``. For a reconstruction ``x_rec``:

* ``distance_to_preimage``: ``min_{z in P(y)} ||z - x_rec||_2`` — what the *optimiser* left
  over (zero iff ``x_rec`` reproduces ``y`` exactly);
* ``preimage_error_split``: ``||x_rec - x_true||`` set beside that distance and the distance
  from the projection to ``x_true`` — what the *network* made unrecoverable.

The projection is exact: an equality-constrained reduction to the null space of ``W_S``
followed by a least-distance program solved with non-negative least squares (Lawson & Hanson,
*Solving Least Squares Problems*, 1974, ch. 23). Float64 numpy throughout.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jaxtyping import Float
from scipy.optimize import nnls

from inversion.analysis.relu import Mat, _check, _null_space, _split


def _least_distance(Gp, hp):
    """Lawson-Hanson LDP: min ||w|| s.t. Gp w >= hp, by NNLS. None if infeasible.

    With ``E = [Gp^T; hp^T]``, ``f = e_{k+1}`` and ``lam = argmin_{lam >= 0} ||E lam - f||``,
    the residual ``r = E lam - f`` has ``r_{k+1} = -||r||^2``; the constraints are infeasible
    iff ``r = 0``, and otherwise ``w = -r_{1..k} / r_{k+1}``. ``hp`` is scaled to unit size
    first so the zero test is relative.
    """
    p, k = Gp.shape
    scale = max(float(np.max(np.abs(hp))), 1e-300)
    E = np.vstack([Gp.T, hp[None, :] / scale])
    f = np.zeros(k + 1)
    f[-1] = 1.0
    lam, _ = nnls(E, f, maxiter=max(50 * p, 1000))
    r = E @ lam - f
    if r[-1] > -1e-14:
        return None
    return -scale * r[:k] / r[-1]


def project_to_preimage(
    W: Mat,
    b: Float[np.ndarray, " m"] | None,
    y: Float[np.ndarray, " m"],
    x: Float[np.ndarray, " n"],
    *,
    tol: float | None = None,
) -> Float[np.ndarray, " n"] | None:
    """Euclidean projection of ``x`` onto ``P(y)``, or ``None`` when ``P(y)`` is empty.

    ``z = argmin ||z - x||_2  s.t.  W_S z = y_S - b_S,  W_{S^c} z <= -b_{S^c}``. Exact and
    finite: write ``z = z_p + N u`` (``z_p`` the minimum-norm solution of the equalities,
    ``N`` an orthonormal null-space basis), so ``||z - x||^2 = ||u - N^T (x - z_p)||^2 + const``;
    the projection of ``u0 = N^T (x - z_p)`` onto ``{u : A u <= g}`` is a least-distance
    program, solved by non-negative least squares (Lawson & Hanson 1974, ch. 23). Equalities
    are taken in the least-squares sense and accepted when their residual is within ``tol``.
    """
    W, b, y, tol = _check(W, b, y, tol)
    n = W.shape[1]
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (n,):
        raise ValueError(f"x must have shape ({n},) to match W {W.shape}, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x must be finite, got non-finite entries")
    _, WS, c, G, h = _split(W, b, y, tol)
    rank, N, svd = _null_space(WS, n)
    if svd is None:
        z_p = np.zeros(n)
    else:
        U, s, Vt = svd
        z_p = Vt.T @ ((U.T @ c) / s)
        if np.max(np.abs(WS @ z_p - c), initial=0.0) > tol:
            return None
    z = z_p + N @ (N.T @ (x - z_p))
    if G.shape[0] and N.shape[1]:
        A = G @ N
        g = h - G @ z_p
        u0 = N.T @ (x - z_p)
        norms = np.linalg.norm(A, axis=1)
        keep = norms > 0
        e = (g - A @ u0)[keep] / norms[keep]
        w = _least_distance(-A[keep] / norms[keep, None], -e) if keep.any() else np.zeros_like(u0)
        if w is None:
            return None
        z = z_p + N @ (u0 + w)
    if G.shape[0] and np.max(G @ z - h) > tol:
        return None
    return z


def distance_to_preimage(
    W: Mat,
    b: Float[np.ndarray, " m"] | None,
    y: Float[np.ndarray, " m"],
    x: Float[np.ndarray, " n"],
    *,
    tol: float | None = None,
) -> float:
    """``min_{z in P(y)} ||z - x||_2`` (``inf`` when ``P(y)`` is empty); see
    :func:`project_to_preimage`. Zero (up to round-off) for any true input of ``y``."""
    z = project_to_preimage(W, b, y, x, tol=tol)
    if z is None:
        return float("inf")
    return float(np.linalg.norm(z - np.asarray(x, dtype=np.float64)))


class ErrorSplit(NamedTuple):
    """How a reconstruction's error splits between the optimiser and the network."""

    total: float  # ||x_rec - x_true||
    optimiser: float  # ||x_rec - z||, z = projection of x_rec onto the preimage
    network: float  # ||z - x_true||: the part no optimiser could remove from the output alone


def preimage_error_split(
    W: Mat,
    b: Float[np.ndarray, " m"] | None,
    y: Float[np.ndarray, " m"],
    x_rec: Float[np.ndarray, " n"],
    x_true: Float[np.ndarray, " n"],
    *,
    tol: float | None = None,
) -> ErrorSplit:
    """Split ``||x_rec - x_true||`` into the optimiser's and the network's parts.

    With ``z`` the projection of ``x_rec`` onto the convex set ``P(y)`` (which contains
    ``x_true``), ``<x_rec - z, x_true - z> <= 0``, hence
    ``total^2 >= optimiser^2 + network^2``, with equality when no inequality is tight
    (``P(y)`` locally affine).
    """
    x_true = np.asarray(x_true, dtype=np.float64)
    x_rec = np.asarray(x_rec, dtype=np.float64)
    z = project_to_preimage(W, b, y, x_rec, tol=tol)
    if z is None:
        raise ValueError("P(y) is empty: y is not an output of this layer (within tol)")
    return ErrorSplit(
        total=float(np.linalg.norm(x_rec - x_true)),
        optimiser=float(np.linalg.norm(x_rec - z)),
        network=float(np.linalg.norm(z - x_true)),
    )
