"""Preimages of a ReLU layer ``y = relu(W x + b)``.

For ``W`` of shape ``(m, n)`` and an output ``y >= 0`` let the *active set* be
``S = {i : y_i > tol}`` and ``S^c`` its complement. Then

    P(y) = {x : W_S x = y_S - b_S,  W_{S^c} x <= -b_{S^c}}

is the set of every input the layer maps to ``y``: an affine subspace of
dimension ``n - rank W_S`` cut by half-spaces. The local Jacobian at any
point of its relative interior is ``D_S W`` with ``D_S = diag(1[i in S])``.

* ``dim``, the dimension of ``P(y)``, is ``n - rank W_S`` whenever some point of ``P(y)`` has
  every inactive row strictly negative (the generic case; checked by an LP that maximises the
  common slack ``s`` of the inactive rows). Otherwise (``degenerate``) the rows tight on all
  of ``P(y)`` (one LP each) join ``W_S`` in the rank. The preimage is a single point
  (``unique``) iff ``dim == 0``, which generically needs ``|S| >= n`` active rows.
* ``P(y)`` is bounded iff its recession cone
  ``C = {d : W_S d = 0, W_{S^c} d <= 0}`` is ``{0}``. With ``N`` an orthonormal
  basis of ``null W_S`` and ``A = W_{S^c} N`` (rows normalised), ``C = N {u : A u <= 0}``.
  We solve one linear program (HiGHS)

      maximise  sum_i -(A u)_i   s.t.  A u <= 0,  -1 <= u <= 1.

  Its optimum is 0 iff every ``u`` of the cone has ``A u = 0``, i.e. the cone is
  the subspace ``null A``; so ``C = {0}`` iff the optimum is 0 *and* ``rank A = k``
  (``k = n - rank W_S``). A positive optimum (its maximiser) or a rank defect (a null vector
  of ``A``) gives an explicit unit ray ``d = N u`` (``ray``).
* Where ``W_S`` is injective the inverse (on outputs with the same active set) is Lipschitz
  with constant ``1 / sigma_min(W_S)`` (``inf`` otherwise).

Tolerances: ``tol`` (output units) defaults to ``1e-5 * max(1, max|y|)`` (float32 round-off);
it decides the active set and how far constraints may be violated for ``P(y)`` to count as
non-empty. Ranks use numpy's ``matrix_rank`` rule ``sigma_max * max(shape) * eps``.
Everything runs in float64 numpy: these are small exact-geometry questions. The projection of
a reconstruction onto ``P(y)`` is in :mod:`inversion.analysis.relu_distance`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jaxtyping import Bool, Float
from scipy.optimize import linprog

Mat = Float[np.ndarray, "m n"]


class ReluPreimage(NamedTuple):
    """Geometry of ``P(y)`` for ``y = relu(W x + b)``."""

    active: Bool[np.ndarray, " m"]  # the active set S
    jacobian: Float[np.ndarray, "m n"]  # D_S W, the local Jacobian
    rank: int  # rank W_S (= rank of the local Jacobian)
    dim: int  # dimension of P(y): n - rank unless degenerate (then smaller)
    unique: bool  # P(y) is a single point
    bounded: bool  # P(y) contains no ray
    nonempty: bool  # some x satisfies every constraint to within tol
    inverse_lipschitz: float  # 1 / sigma_min(W_S) when rank W_S = n, inf otherwise
    ray: Float[np.ndarray, " n"] | None  # a unit recession direction when unbounded
    slack: float  # max over x of min_i (h_i - G_i x) (inactive rows), capped at 1; < -tol: empty
    degenerate: bool  # some inactive rows hold with equality on all of P(y)


def _check(W, b, y, tol):
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or 0 in W.shape:
        raise ValueError(f"W must be a non-empty (m, n) matrix, got shape {W.shape}")
    m = W.shape[0]
    b = np.zeros(m) if b is None else np.asarray(b, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if b.shape != (m,):
        raise ValueError(f"b must have shape ({m},) to match W {W.shape}, got {b.shape}")
    if y.shape != (m,):
        raise ValueError(f"y must have shape ({m},) to match W {W.shape}, got {y.shape}")
    for name, a in (("W", W), ("b", b), ("y", y)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite, got non-finite entries")
    scale = max(1.0, float(np.max(np.abs(y))))
    tol = 1e-5 * scale if tol is None else float(tol)
    if not tol >= 0:
        raise ValueError(f"tol must be a non-negative number, got {tol}")
    if np.min(y) < -tol:
        raise ValueError(f"y must be a ReLU output (>= 0), got min(y) = {np.min(y):.3g}")
    return W, b, y, tol


def _split(W, b, y, tol):
    """Active set, equality system (W_S, c) and inequality system (G, h): G x <= h."""
    active = y > tol
    return active, W[active], y[active] - b[active], W[~active], -b[~active]


def _null_space(WS, n):
    """(rank, orthonormal null-space basis N (n, n-rank), min-norm solver pieces)."""
    if WS.shape[0] == 0:
        return 0, np.eye(n), None
    U, s, Vt = np.linalg.svd(WS)
    r = int(np.sum(s > s[0] * max(WS.shape) * np.finfo(np.float64).eps)) if s.size else 0
    return r, Vt[r:].T, (U[:, :r], s[:r], Vt[:r])


def _slack_lp(WS, c, G, h, n, tol, objective_row=None):
    """max s  s.t. |W_S x - c| <= tol,  G x + s <= h,  s <= 1  (or max h_i - G_i x for one row).

    Returns the optimum (``s*`` or the row's largest slack, capped at 1), or -inf if infeasible.
    """
    ones = np.ones((len(h), 1))
    A_ub = np.vstack(
        [
            np.hstack([WS, np.zeros((len(c), 1))]),
            np.hstack([-WS, np.zeros((len(c), 1))]),
            np.hstack([G, ones if objective_row is None else np.zeros_like(ones)]),
        ]
    )
    b_ub = np.concatenate([c + tol, -c + tol, h])
    cost = np.zeros(n + 1)
    cost[-1] = -1.0
    bounds = [(None, None)] * n + [(None, 1.0)]
    if objective_row is not None:  # s <= h_i - G_i x, i.e. G_i x + s <= h_i
        A_ub = np.vstack([A_ub, np.append(G[objective_row], 1.0)])
        b_ub = np.append(b_ub, h[objective_row])
    res = linprog(cost, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status == 2:
        return -np.inf
    if res.status != 0:
        raise RuntimeError(f"slack LP failed: {res.message}")
    return float(res.x[-1])


def _dimension(WS, c, G, h, n, rank, slack, tol):
    """(dim P(y), #implicit equalities): n - rank W_S unless inactive rows are tight on all
    of P(y) (only possible when the common slack is <= tol; then one LP per inactive row)."""
    if slack > tol or G.shape[0] == 0:
        return n - rank, 0
    tight = [i for i in range(G.shape[0]) if _slack_lp(WS, c, G, h, n, tol, i) <= tol]
    full = np.vstack([WS, G[tight]])
    r = int(np.linalg.matrix_rank(full)) if full.shape[0] else 0
    return n - r, len(tight)


def _recession_ray(G, N):
    """A unit d != 0 with W_S d = 0 and G d <= 0, or None if the cone is {0}."""
    k = N.shape[1]
    if k == 0:
        return None
    if G.shape[0] == 0:
        return N[:, 0]
    A = G @ N
    norms = np.linalg.norm(A, axis=1)
    A = A[norms > 0] / norms[norms > 0, None]
    if A.shape[0] == 0:
        return N[:, 0]
    res = linprog(
        A.sum(axis=0), A_ub=A, b_ub=np.zeros(A.shape[0]), bounds=[(-1, 1)] * k, method="highs"
    )
    if res.status != 0:
        raise RuntimeError(f"recession-cone LP failed: {res.message}")
    if -res.fun > 1e-6 * A.shape[0]:
        d = N @ res.x
    else:
        _, s, Vt = np.linalg.svd(A)
        r = int(np.sum(s > s[0] * max(A.shape) * np.finfo(np.float64).eps)) if s.size else 0
        if r == k:
            return None
        d = N @ Vt[r]
    return d / np.linalg.norm(d)


def relu_preimage(
    W: Mat,
    b: Float[np.ndarray, " m"] | None,
    y: Float[np.ndarray, " m"],
    *,
    tol: float | None = None,
) -> ReluPreimage:
    """Describe ``P(y) = {x : relu(W x + b) = y}``: active set, dimension, boundedness.

    ``W`` is ``(m, n)``, ``b`` is ``(m,)`` or ``None`` (zero), ``y`` is ``(m,)`` and ``>= 0``.
    See the module docstring for the maths and tolerances.
    """
    W, b, y, tol = _check(W, b, y, tol)
    n = W.shape[1]
    active, WS, c, G, h = _split(W, b, y, tol)
    rank, N, _ = _null_space(WS, n)
    slack = _slack_lp(WS, c, G, h, n, tol)
    nonempty = slack >= -tol
    dim, n_tight = _dimension(WS, c, G, h, n, rank, slack, tol) if nonempty else (n - rank, 0)
    ray = _recession_ray(G, N)
    if rank == n:
        inv_lip = float(1.0 / np.linalg.svd(WS, compute_uv=False)[-1])
    else:
        inv_lip = float("inf")
    return ReluPreimage(
        active=active,
        jacobian=np.where(active[:, None], W, 0.0),
        rank=rank,
        dim=dim,
        unique=bool(dim == 0 and nonempty),
        bounded=ray is None,
        nonempty=bool(nonempty),
        inverse_lipschitz=inv_lip,
        ray=ray,
        slack=slack,
        degenerate=n_tight > 0,
    )


def locally_injective(
    W: Mat,
    b: Float[np.ndarray, " m"] | None,
    X: Float[np.ndarray, "N n"],
    *,
    tol: float | None = None,
) -> Bool[np.ndarray, " N"]:
    """For each row ``x`` of ``X``: is the local Jacobian ``D_S W`` of rank ``n``?

    Then ``P(relu(W x + b)) = {x}`` (a single point) and the layer is injective near ``x``.
    A layer is injective on a sample when every entry is True; on all of ``R^n`` when this
    holds everywhere (Puthawala et al., *Globally injective ReLU networks*, JMLR 2022), which
    needs ``m >= 2 n``. ``tol`` as in :func:`relu_preimage` (per input, from its ``y``).
    Batched: one SVD of the ``(N, m, n)`` stack of masked matrices.
    """
    W = np.asarray(W, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    if W.ndim != 2 or 0 in W.shape:
        raise ValueError(f"W must be a non-empty (m, n) matrix, got shape {W.shape}")
    m, n = W.shape
    if X.ndim != 2 or X.shape[1] != n:
        raise ValueError(f"X must have shape (N, {n}) to match W {W.shape}, got {X.shape}")
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(X))):
        raise ValueError("W and X must be finite, got non-finite entries")
    b = np.zeros(m) if b is None else np.asarray(b, dtype=np.float64)
    if b.shape != (m,):
        raise ValueError(f"b must have shape ({m},) to match W {W.shape}, got {b.shape}")
    Y = np.maximum(X @ W.T + b, 0.0)
    scale = np.maximum(1.0, np.max(Y, axis=1, keepdims=True))
    active = Y > (1e-5 * scale if tol is None else float(tol))
    if m < n:
        return np.zeros(X.shape[0], dtype=bool)
    s = np.linalg.svd(np.where(active[:, :, None], W[None], 0.0), compute_uv=False)
    thresh = s[:, :1] * max(m, n) * np.finfo(np.float64).eps
    return np.sum(s > thresh, axis=1) == n
