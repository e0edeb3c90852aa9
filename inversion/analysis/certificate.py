"""Local invertibility certificate of ``fn`` at ``x``, from its Jacobian taken in float64.

For ``fn : R^n -> R^m`` (any array shapes, flattened; ``n`` inputs, ``m`` outputs),
``J = d fn / d x`` at ``x`` and ``q = min(m, n)``, the singular values of ``J`` as a map on the
``n`` inputs are ``sigma_1 >= ... >= sigma_n``, of which ``sigma_{q+1} = ... = sigma_n = 0``
when ``m < n``: a wide Jacobian loses ``n - m`` input directions by its shape alone, known
without any spectrum. The certificate states, at three precisions:

* **exact** (float64): ``nullity = #{i <= n : sigma_i <= tau_64}`` with
  ``tau_64 = max(m, n) * eps_64 * sigma_1`` (numpy's ``matrix_rank`` rule, ``eps_64 = 2.2e-16``);
  ``rank = n - nullity``. ``J`` is computed in float64 whatever the model's dtype: inside
  ``jax.enable_x64`` the input is cast to float64 and float32 weights promote to float64, so the
  float32 *network* is differentiated in (almost) exact arithmetic. ``nullity > 0`` means the
  network itself destroys input directions near ``x``.
* **working precision**: ``effective_nullity = #{i : sigma_i <= rtol * sigma_1}``, with
  ``rtol`` defaulting to ``max(m, n) * eps`` of ``x``'s dtype (float32: ``1.19e-7``). Directions
  counted here survive in exact arithmetic but are below the rounding of a float32 forward
  pass: no float32 computation can tell them apart. :attr:`Certificate.null_space` is an
  orthonormal basis of these directions.
* **any other tolerance** through :meth:`Certificate.nullity_at`, e.g. ``1 / 255`` for data
  quantised to 8 bits: directions amplified less than ``sigma_1 / 255`` are lost below one
  grey level of the strongest response.

``condition_number = sigma_1 / sigma_n`` (``inf`` when the exact nullity is > 0, so always for
``m < n``), and :meth:`Certificate.input_error_bound` turns an output residual into an input
error: ``||x_hat - x|| <= ||fn(x_hat) - fn(x)|| / sigma_n`` to first order. For a
piecewise-linear network (ReLU, max pooling) ``fn`` is affine on the linear region that
contains ``x``, so the bound is exact for any ``x_hat`` in that region and says nothing outside.

**What the output determines.** With ``J = U diag(sigma) V^T`` and ``V_r`` the right singular
vectors of the ``r = rank`` singular values above ``tau_64``, ``P = V_r V_r^T`` projects onto
the row space of ``J``: :meth:`Certificate.split` writes an input difference
``dx = P dx + (I - P) dx``, the part the output sees to first order (``J dx = J P dx``) and the
part it loses (``J (I - P) dx = 0`` up to ``tau_64``). The row space has dimension
``r <= q``, so the certificate stores at most ``q`` right singular vectors (``n x q``, on
request: ``vectors=True``), never the ``n x (n - r)`` null space of a wide map.

Methods (``q = min(m, n)``).

* ``'dense'`` builds ``J`` from ``q`` Jacobian products, ``block`` at a time in one compiled
  program: forward-mode columns ``J e_j`` when ``m >= n``, reverse-mode rows ``J^T e_i`` when
  ``m < n`` (split over the CPU devices when there are several, see
  :mod:`inversion.cpu_devices`). It then takes LAPACK's thin SVD of the ``m x n`` matrix in
  float64: ``O(m n q)`` flops, ``q`` singular values, and right singular vectors only when
  asked (``n x q``; no ``n x n`` matrix). It does not square the problem into the Gram matrix
  ``J J^T``: that matrix's eigenvalues carry errors of ``~eps_64 sigma_1^2``, which hides every
  ``sigma_i`` below ``~sqrt(eps_64) sigma_1 = 1.5e-8 sigma_1``, far above ``tau_64``. Every field
  is exact up to float64 rounding (``complete=True``).
* ``'lanczos'`` never forms ``J``: ``k`` steps of Golub-Kahan bidiagonalisation with full
  reorthogonalisation on the float64 JVP and VJP of ``fn``, run on ``A = J`` when ``m >= n``
  and on ``A = J^T`` when ``m < n``, so that ``A`` is ``p x q`` with ``p >= q``:
  ``A V_k = U_k B_k`` with orthonormal ``V_k`` (``q x k``), ``U_k`` (``p x k``) and ``B_k``
  upper bidiagonal; the Ritz values ``theta_1 >= ... >= theta_k`` are the singular values of
  ``B_k``. (A breakdown, an exactly invariant Krylov space, restarts from a random vector
  orthogonal to the basis, with a zero coefficient.) With ``k = q`` the factorisation is
  complete and the fields are exact. With ``k < q`` only bounds are known, from interlacing:
  ``B_k`` has the singular values of ``A V_k``, ``A`` with ``q - k`` columns removed in a
  rotated basis, so ``sigma_j >= theta_j >= sigma_{j+q-k}`` (``sigma`` of ``A``, the nonzero
  part of ``J``'s spectrum). Hence ``theta_1 <= sigma_1`` (:attr:`sigma_max_lower`),
  ``theta_k >= sigma_q`` (:attr:`sigma_min_upper`; ``sigma_min = 0`` exactly when ``m < n``),
  ``theta_1 / theta_k <= sigma_1 / sigma_q`` (:attr:`condition_number_lower`), and for any
  ``t``, ``#{j : theta_j <= t} <= #{i : sigma_i <= t}``: with ``t = rtol theta_1 <=
  rtol sigma_1``, ``nullity_lower = (n - q) + #{j : theta_j <= rtol theta_1}`` is a lower bound
  on the nullity at ``rtol``. The bound is weak by nature: the Krylov space of one start
  vector holds (in exact arithmetic) one vector of each eigenspace of ``A^T A``, so a partial
  run sees at most one direction of an exact null space of any dimension beyond the ``n - q``
  structural ones. Exact fields (``nullity``, ``sigma_min``, ``condition_number``, ...) are
  ``None`` unless known: ``sigma_min = 0`` and ``condition_number = inf`` are exact for a wide
  map, and ``condition_number = inf`` whenever ``nullity_lower > 0``. ``residuals[j] =
  |beta_k| |p_j[k-1]|`` (``p_j`` the left singular vector of ``B_k``, ``beta_k`` the norm of
  the next Krylov vector) bounds the distance from ``theta_j`` to the nearest singular value
  of ``A``: ``||A^T A v - theta^2 v|| = theta |beta_k p_j[k-1]|`` for the Ritz vector ``v``,
  so an eigenvalue ``sigma^2`` of ``A^T A`` lies within ``theta res`` of ``theta^2`` and
  ``|sigma - theta| <= res``. All bounds hold up to float64 rounding of the factorisation
  (``~sqrt(max(m, n)) eps_64 sigma_1``, below ``tau_64``).
* ``'auto'`` chooses by cost: dense when ``J`` fits the memory budget
  (``m * n <= dense_limit`` entries, default ``2**26``, 512 MiB of float64), else lanczos. The
  complete answer costs the dense method ``q`` products in ``ceil(q / block)`` batched calls
  plus an ``O(m n q)`` SVD, and a complete Lanczos run ``2 q`` sequential products plus
  ``O((m + n) q^2)`` reorthogonalisation: dense is never the slower way to an exact result,
  so Lanczos (bounds) is the choice only where ``J`` does not fit.

:attr:`Certificate.storage_bytes` is the float64 storage the method holds (``J``, or the two
Krylov bases) and :attr:`Certificate.block_bytes` XLA's size of the compiled program of one
block of products (arguments, outputs and temporaries, summed over devices): ``block``
bounds it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float

from inversion import cpu_devices

_METHODS = ("auto", "dense", "lanczos")
EPS64 = float(np.finfo(np.float64).eps)
#: Relative precision of data quantised to 8 bits (one grey level of the full range).
RTOL_8BIT = 1.0 / 255.0
#: Products per device below which the dense method keeps a block on one device.
_MIN_SHARD_ROWS = 8


class Certificate(NamedTuple):
    """A local invertibility certificate of ``fn`` at one ``x`` (see the module docstring).

    Exact fields are ``None`` when the spectrum is incomplete (``method='lanczos'`` with
    ``k < min(m, n)``) and not known otherwise; the ``*_lower`` / ``*_upper`` fields are
    always set, and equal the exact value when it is known.

    >>> import jax.numpy as jnp
    >>> c = certify(lambda x: jnp.array([[1.0, 1.0, 0.0]]) @ x, jnp.zeros(3), vectors=True)
    >>> c.rank, c.nullity, c.sigma_min
    (1, 2, 0.0)
    >>> visible, lost = c.split(jnp.array([1.0, 0.0, 2.0]))
    >>> visible.round(12).tolist(), lost.round(12).tolist()
    ([0.5, 0.5, 0.0], [0.5, -0.5, 2.0])
    """

    singular_values: Float[np.ndarray, " r"]  # descending: all min(m, n); partial: k Ritz values
    sigma_max: float | None  # sigma_1 (None when incomplete)
    sigma_min: float | None  # sigma_n: 0 when m < n; None when incomplete and m >= n
    condition_number: float | None  # sigma_1 / sigma_n; inf when nullity > 0; None: unknown
    nullity: int | None  # #{sigma_i <= max(m, n) eps_64 sigma_1}, i <= n; None: incomplete
    effective_nullity: int | None  # #{sigma_i <= rtol sigma_1}; None when incomplete
    rtol: float  # the relative tolerance of effective_nullity and null_space
    n_in: int
    n_out: int
    dtype: str  # the working precision of x (what rtol's default refers to)
    jacobian_dtype: str  # the dtype J was computed in ('float64' unless fn forces another)
    method: str  # 'dense' or 'lanczos'
    complete: bool  # every singular value known (dense, or lanczos with k = min(m, n))
    residuals: Float[np.ndarray, " r"]  # per singular value: distance bound to a true one
    sigma_max_lower: float  # <= sigma_1 (theta_1 when incomplete)
    sigma_min_upper: float  # >= sigma_n (theta_k when incomplete and m >= n)
    condition_number_lower: float  # <= sigma_1 / sigma_n
    nullity_lower: int  # <= nullity: (n - q) + #{theta_j <= tau_64} when incomplete
    effective_nullity_lower: int  # <= effective_nullity
    vectors: Float[np.ndarray, "n r"] | None  # right singular (complete) or Ritz vectors
    x_shape: tuple[int, ...]  # the shape of x (of split's arguments and results)
    storage_bytes: int  # float64 bytes the method held: J (dense) or the Krylov bases
    block_bytes: int | None  # XLA's size of one compiled block program (None: not reported)

    @property
    def exact_rtol(self) -> float:
        """``max(m, n) * eps_64``: the relative tolerance of :attr:`nullity`."""
        return max(self.n_in, self.n_out) * EPS64

    @property
    def rank(self) -> int | None:
        """``n - nullity``: the exact (float64) rank of ``J``, ``None`` when incomplete."""
        return None if self.nullity is None else self.n_in - self.nullity

    def nullity_at(self, rtol: float) -> int:
        """``#{i <= n : sigma_i <= rtol * sigma_1}``, counting the ``n - m`` zero singular
        values of a wide Jacobian. Raises ``ValueError`` for an incomplete certificate (use
        :meth:`nullity_lower_at`)."""
        _check_rtol(rtol)
        if not self.complete:
            raise ValueError(
                f"the certificate is incomplete (method={self.method!r}, "
                f"{self.singular_values.size} of {min(self.n_in, self.n_out)} singular values): "
                "its nullity is unknown; nullity_lower_at(rtol) gives a lower bound"
            )
        return self.nullity_lower_at(rtol)

    def nullity_lower_at(self, rtol: float) -> int:
        """A lower bound on ``#{i <= n : sigma_i <= rtol * sigma_1}`` (interlacing, see the
        module docstring); the count itself when the certificate is complete."""
        rtol = _check_rtol(rtol)
        return _count_small(self.singular_values, rtol, self.n_in, self.n_out)

    def input_error_bound(self, residual_norm) -> float | np.ndarray:
        """``||r|| / sigma_min``: the input error that an output residual ``r`` allows, to first
        order around ``x`` (exactly, inside ``x``'s linear region of a piecewise-linear net).
        ``inf`` when ``sigma_min = 0``. Accepts a scalar or an array of residual norms."""
        r = np.asarray(residual_norm, dtype=np.float64)
        if not np.all(np.isfinite(r)) or np.any(r < 0):
            raise ValueError(f"residual_norm must be finite and >= 0, got {residual_norm!r}")
        if self.sigma_min is None:
            raise ValueError(
                "the certificate is incomplete: sigma_min is unknown (only an upper bound, "
                "sigma_min_upper), so no input error bound follows; use method='dense'"
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = np.where(r == 0, 0.0, r / self.sigma_min)
        return float(bound) if bound.ndim == 0 else bound

    def _right_vectors(self, what: str) -> np.ndarray:
        if not self.complete:
            raise ValueError(
                f"{what} needs the complete spectrum, got an incomplete certificate "
                f"(method={self.method!r}, {self.singular_values.size} of "
                f"{min(self.n_in, self.n_out)} singular values); use method='dense' or "
                "k = min(m, n)"
            )
        if self.vectors is None:
            raise ValueError(
                f"{what} needs the right singular vectors: call certify(..., vectors=True)"
            )
        return self.vectors

    def row_space(self, rtol: float | None = None) -> Float[np.ndarray, "n r"]:
        """Orthonormal basis ``V_r`` (``n x r``) of the row space of ``J``: the right singular
        vectors of the ``sigma_i > rtol * sigma_1`` (default ``rtol``: :attr:`exact_rtol`, so
        ``r`` is :attr:`rank`). Needs ``certify(..., vectors=True)``."""
        vectors = self._right_vectors("row_space")
        rtol = self.exact_rtol if rtol is None else _check_rtol(rtol)
        s = self.singular_values
        keep = s > rtol * (float(s[0]) if s.size else 0.0)
        return vectors[:, keep]

    @property
    def null_space(self) -> Float[np.ndarray, "n d"]:
        """Orthonormal basis (``n x effective_nullity``) of the effective null space: the right
        singular vectors of ``sigma_i <= rtol * sigma_1`` and, for a wide map, an orthonormal
        basis of the ``n - m`` directions no output sees (built on each access from a complete
        QR of the ``n x m`` singular vectors: ``n x n`` memory). Needs ``vectors=True``."""
        vectors = self._right_vectors("null_space")
        s = self.singular_values
        small = vectors[:, s <= self.rtol * (float(s[0]) if s.size else 0.0)]
        if self.n_out >= self.n_in:
            return small
        complement = np.linalg.qr(vectors, mode="complete")[0][:, vectors.shape[1] :]
        return np.concatenate([small, complement], axis=1)

    def split(self, dx, *, rtol: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(visible, lost) = (P dx, dx - P dx)`` with ``P = V_r V_r^T`` the orthogonal
        projection onto the row space of ``J`` (:meth:`row_space` at ``rtol``, default the
        exact tolerance): ``visible`` is the part of ``dx`` the output determines to first
        order (``J dx = J visible``), ``lost`` the part in the null space. ``dx`` has ``x``'s
        shape, optionally with leading batch axes; both results are float64 of that shape and
        ``visible + lost = dx`` to float64 rounding."""
        basis = self.row_space(rtol)
        d = np.asarray(dx, dtype=np.float64)
        shape = self.x_shape
        if d.ndim < len(shape) or d.shape[d.ndim - len(shape) :] != shape:
            raise ValueError(
                f"dx must have x's shape {shape} (optionally with leading batch axes), got "
                f"shape {d.shape}"
            )
        if not np.all(np.isfinite(d)):
            raise ValueError("dx must be finite, got NaN or inf entries")
        flat = d.reshape(-1, math.prod(shape))
        visible = (flat @ basis) @ basis.T
        return visible.reshape(d.shape), (flat - visible).reshape(d.shape)

    def part_errors(
        self, x_hat, x_true, x_start, *, rtol: float | None = None
    ) -> tuple[float | None, float | None]:
        """``(visible, lost)`` relative errors of an estimate: ``||P (x_hat - x_true)|| /
        ||P (x_start - x_true)||`` and the same with ``I - P`` (:meth:`split`). 0 is exact, 1
        is no better than the start. ``None`` where the start has no such part (a full-rank
        ``J`` loses nothing: its lost part is float64 rounding, below ``1e-9`` of the start's
        distance)."""
        truth = np.asarray(x_true, dtype=np.float64)
        start = np.asarray(x_start, dtype=np.float64)
        parts = self.split(np.asarray(x_hat, dtype=np.float64) - truth, rtol=rtol)
        parts0 = self.split(start - truth, rtol=rtol)
        scale = np.linalg.norm(start - truth)

        def ratio(part, part0):
            norm0 = np.linalg.norm(part0)
            return float(np.linalg.norm(part) / norm0) if norm0 > 1e-9 * scale else None

        return ratio(parts[0], parts0[0]), ratio(parts[1], parts0[1])

    def recoverable(self, x_true, x_start, *, rtol: float | None = None) -> np.ndarray:
        """``x_start + P (x_true - x_start)``: the best input that first-order information about
        ``fn(x_true)`` recovers from ``x_start`` (the row-space component of the difference is
        determined, the null-space component stays at ``x_start``'s). For an affine ``fn`` it is
        the point of ``{x : fn(x) = fn(x_true)}`` nearest to ``x_start``."""
        start = np.asarray(x_start, dtype=np.float64)
        visible, _ = self.split(np.asarray(x_true, dtype=np.float64) - start, rtol=rtol)
        if start.shape != visible.shape:
            raise ValueError(
                f"x_true and x_start must have the same shape, got {np.shape(x_true)} and "
                f"{start.shape}"
            )
        return start + visible


def _real(rtol) -> float | None:
    """``rtol`` as a float if it is a real scalar (Python, NumPy or JAX, any int or float
    dtype), else None."""
    if isinstance(rtol, bool | str | bytes) or np.ndim(rtol) != 0:
        return None
    try:
        dtype = np.asarray(rtol).dtype
    except TypeError:
        return None
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        return None
    return float(rtol)


def _check_rtol(rtol) -> float:
    """A tolerance for a count at a given certificate: any real scalar ``>= 0``."""
    value = _real(rtol)
    if value is None or not value >= 0:
        raise ValueError(f"rtol must be a real number >= 0, got {rtol!r}")
    return value


def _check_certify_rtol(rtol) -> float:
    """``certify``'s ``rtol``: a real scalar in (0, 1). It is relative to ``sigma_1``: at
    ``rtol >= 1`` every direction but the strongest would count as lost, at 0 none (not even a
    singular value at rounding level)."""
    value = _real(rtol)
    if value is None or not 0 < value < 1:
        raise ValueError(
            f"rtol must be a real number in (0, 1) (a tolerance relative to sigma_1) or None, "
            f"got {rtol!r}"
        )
    return value


def _count_small(s, rtol, n_in, n_out) -> int:
    top = float(s[0]) if s.size else 0.0
    implied_zeros = max(n_in - n_out, 0)  # a wide Jacobian has n - m zero singular values
    return int(np.sum(s <= rtol * top)) + implied_zeros


def _check(fn, x, rtol, method, k, dense_limit, block, vectors=False):
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if isinstance(x, str) or not hasattr(np.asarray(x), "dtype"):
        raise TypeError(f"x must be a floating-point array, got {type(x).__name__}")
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
    if x.size == 0:
        raise ValueError(f"x must be non-empty, got shape {x.shape}")
    if not bool(np.all(np.isfinite(np.asarray(x, np.float64)))):
        raise ValueError("x must be finite, got NaN or inf entries")
    if rtol is not None:
        _check_certify_rtol(rtol)
    if k is not None and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1):
        raise ValueError(f"k must be a positive integer or None, got {k!r}")
    if isinstance(dense_limit, bool) or not isinstance(dense_limit, int | np.integer):
        raise ValueError(f"dense_limit must be a positive integer, got {dense_limit!r}")
    if dense_limit < 1:
        raise ValueError(f"dense_limit must be a positive integer, got {dense_limit!r}")
    if isinstance(block, bool) or not isinstance(block, int | np.integer) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    if not isinstance(vectors, bool):
        raise TypeError(f"vectors must be True or False, got {vectors!r}")
    return x


def _output_dtype64(fn, x):
    """``(y, jacobian_dtype, input_dtype)``: the shape-dtype of ``fn`` at ``x`` cast to float64
    (call under x64). Warns when ``fn`` casts down internally (its Jacobian is then only as
    accurate as that dtype), and when ``fn`` refuses a float64 input altogether (e.g. a ``lax``
    op with float32 weights): the Jacobian is then taken at ``x``'s own dtype."""
    order = []  # a dict's own key order (eval_shape returns dicts with sorted keys)

    def probe(z):
        order.clear()
        out = fn(z)
        order.extend(out if isinstance(out, dict) else ())
        return out

    input_dtype = jnp.float64
    try:
        y = jax.eval_shape(probe, jax.ShapeDtypeStruct(np.shape(x), jnp.float64))
    except TypeError as err:
        input_dtype = x.dtype
        y = jax.eval_shape(probe, jax.ShapeDtypeStruct(np.shape(x), input_dtype))
        warnings.warn(
            f"fn does not accept a float64 input ({str(err).splitlines()[0]}); its Jacobian is "
            f"taken in {input_dtype}, so the exact nullity refers to that precision",
            RuntimeWarning,
            stacklevel=4,
        )
    if isinstance(y, dict):
        y = {name: y[name] for name in order}
    leaves = jax.tree.leaves(y)
    if not leaves or not all(jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in leaves):
        raise TypeError(f"fn must return floating-point arrays, got {y}")
    empty = [leaf.shape for leaf in leaves if math.prod(leaf.shape) == 0]
    if empty:
        raise ValueError(
            f"fn returns an empty output (shapes {empty}) for an input of shape {np.shape(x)}; "
            "a certificate needs at least one output entry"
        )
    low = sorted({str(leaf.dtype) for leaf in leaves if leaf.dtype != jnp.float64})
    if low and input_dtype == jnp.float64:  # (a refused float64 input was warned about above)
        warnings.warn(
            f"fn returns {', '.join(low)} for a float64 input (it casts internally), so its "
            f"Jacobian is only that accurate; the exact nullity then refers to that precision",
            RuntimeWarning,
            stacklevel=4,
        )
    return y, (low[0] if low else str(jnp.dtype(input_dtype))), input_dtype


def _program_bytes(compiled, devices: int) -> int | None:
    """XLA's arguments + outputs + temporaries of a compiled program, summed over devices."""
    try:
        stats = compiled.memory_analysis()
        per_device = (
            stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
        )
    except Exception:  # noqa: BLE001 (a backend without memory analysis reports nothing)
        return None
    return int(per_device) * devices


class _Jacobian(NamedTuple):
    """A float64 ``J`` (``m x n``) and what building it held."""

    matrix: np.ndarray
    block_bytes: int | None


def _jacobian_builder(fn, x_shape, block: int, dtype=jnp.float64):
    """``jac(x) -> _Jacobian``: the float64 NumPy Jacobian of ``fn`` at ``x`` (call under x64).

    ``fn``'s outputs (an array or a pytree of arrays) are flattened and concatenated. Tall maps
    (``m >= n``) are built ``block`` columns at a time from forward-mode products, wide maps
    ``block`` rows at a time from reverse-mode products, into one preallocated ``m x n``
    array; one compiled program serves every block and every ``x`` of the same shape, its
    blocks split over the CPU devices when there are several."""

    def flat(x):
        return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(fn(x))])

    m = int(jax.eval_shape(flat, jax.ShapeDtypeStruct(x_shape, dtype)).size)
    n = math.prod(x_shape)
    tall = m >= n
    size = n if tall else m  # products needed: columns (tall) or rows (wide)

    def forward(x, basis):
        return jax.vmap(lambda e: jax.jvp(flat, (x,), (e.reshape(x_shape),))[1])(basis)

    def reverse(x, basis):
        _, pullback = jax.vjp(flat, x)
        return jax.vmap(lambda e: pullback(e)[0].ravel())(basis)

    rows = min(block, size)
    mesh = None
    if jax.default_backend() == "cpu":
        devices = len(jax.devices("cpu"))
        if rows >= _MIN_SHARD_ROWS * devices:
            rows = -(-rows // devices) * devices  # a multiple of the device count
            mesh = cpu_devices.cpu_mesh(rows)
    if mesh is None:
        program = jax.jit(forward if tall else reverse)
        place_x = place_basis = jnp.asarray
        devices = 1
    else:
        spread = NamedSharding(mesh, P(mesh.axis_names[0]))
        copies = NamedSharding(mesh, P())
        program = jax.jit(
            forward if tall else reverse, in_shardings=(copies, spread), out_shardings=spread
        )
        devices = mesh.size

        def place_x(a):
            return jax.device_put(a, copies)

        def place_basis(a):
            return jax.device_put(a, spread)

    compiled = program.lower(
        jax.ShapeDtypeStruct(x_shape, dtype), jax.ShapeDtypeStruct((rows, size), dtype)
    ).compile()
    block_bytes = _program_bytes(compiled, devices)

    def jac(x):
        x = place_x(jnp.asarray(x, dtype))
        # tall: J^T (n x m) row by row, returned as its transpose view; wide: J itself
        out = np.empty((size, n if not tall else m), np.float64)
        for start in range(0, size, rows):
            stop = min(start + rows, size)
            basis = np.zeros((rows, size))
            basis[np.arange(stop - start), np.arange(start, stop)] = 1.0
            products = compiled(x, place_basis(np.asarray(basis, dtype)))
            out[start:stop] = np.asarray(products, np.float64)[: stop - start]
        return _Jacobian(out.T if tall else out, block_bytes)

    return jac


def _svd(jac: np.ndarray, vectors: bool):
    """``(s, V)``: the ``min(m, n)`` singular values of ``jac`` (descending) and, when asked,
    its right singular vectors ``V`` (``n x min(m, n)``; else ``None``): LAPACK's thin SVD in
    float64 (``gesdd``, ``gesvd`` if it fails), overwriting ``jac``."""
    if jac.flags.c_contiguous:  # LAPACK's column-major layout without a copy: J^T
        a, right_is_u = jac.T, True  # svd(J^T) = V S U^T: J's right vectors are its U
    else:
        a, right_is_u = np.asfortranarray(jac), False
    for driver in ("gesdd", "gesvd"):
        try:
            out = scipy.linalg.svd(
                a,
                full_matrices=False,
                compute_uv=vectors,
                overwrite_a=driver == "gesvd",
                check_finite=False,
                lapack_driver=driver,
            )
            break
        except np.linalg.LinAlgError:
            if driver == "gesvd":
                raise
    if not vectors:
        return out, None
    u, s, vt = out
    return s, (u if right_is_u else vt.T)


def _from_dense(jac, *, rtol, n_in, n_out, dtype, jacobian_dtype, vectors, x_shape, block_bytes):
    if not np.all(np.isfinite(jac)):
        raise ValueError("the Jacobian of fn at x is not finite (NaN or inf entries)")
    s, v = _svd(jac, vectors)
    return _certificate(
        s,
        np.zeros_like(s),
        v,
        rtol=rtol,
        n_in=n_in,
        n_out=n_out,
        dtype=dtype,
        jacobian_dtype=jacobian_dtype,
        method="dense",
        complete=True,
        x_shape=x_shape,
        storage_bytes=8 * n_in * n_out,
        block_bytes=block_bytes,
    )


def _certificate(
    s,
    residuals,
    vectors,
    *,
    rtol,
    n_in,
    n_out,
    dtype,
    jacobian_dtype,
    method,
    complete,
    x_shape,
    storage_bytes,
    block_bytes,
) -> Certificate:
    """The certificate's fields from the singular (complete) or Ritz values ``s``."""
    wide = n_out < n_in
    top = float(s[0]) if s.size else 0.0
    bottom = float(s[-1]) if s.size else 0.0
    nullity_lower = _count_small(s, max(n_in, n_out) * EPS64, n_in, n_out)
    effective_lower = _count_small(s, rtol, n_in, n_out)
    sigma_min_upper = 0.0 if wide else bottom
    # a Jacobian singular in float64 has condition number inf, not sigma_1 / (rounding noise)
    singular = wide or nullity_lower > 0 or sigma_min_upper == 0.0
    cond_lower = float("inf") if singular or bottom == 0.0 else top / bottom
    if complete:
        sigma_max, sigma_min, cond = top, sigma_min_upper, cond_lower
        nullity, effective = nullity_lower, effective_lower
    else:
        sigma_max, nullity, effective = None, None, None
        sigma_min = 0.0 if wide else None
        cond = float("inf") if singular else None
    return Certificate(
        singular_values=s,
        sigma_max=sigma_max,
        sigma_min=sigma_min,
        condition_number=cond,
        nullity=nullity,
        effective_nullity=effective,
        rtol=float(rtol),
        n_in=n_in,
        n_out=n_out,
        dtype=dtype,
        jacobian_dtype=jacobian_dtype,
        method=method,
        complete=bool(complete),
        residuals=residuals,
        sigma_max_lower=top,
        sigma_min_upper=sigma_min_upper,
        condition_number_lower=cond_lower,
        nullity_lower=nullity_lower,
        effective_nullity_lower=effective_lower,
        vectors=vectors,
        x_shape=tuple(int(d) for d in x_shape),
        storage_bytes=int(storage_bytes),
        block_bytes=block_bytes,
    )


def _golub_kahan(matvec, rmatvec, p: int, q: int, k: int, key, dtype):
    """``k`` steps of Golub-Kahan bidiagonalisation of ``A`` (``p x q``, given as
    ``matvec(v) = A v`` and ``rmatvec(u) = A^T u``) with full reorthogonalisation (twice, and
    once more after normalising): ``(alphas, betas, U, V, last)`` with ``B = diag(alphas) +
    diag(betas[:-1], 1)``, ``A V^T = U^T B`` (rows of ``U``, ``V`` the bases) and ``last`` the
    norm of the next Krylov vector. A Krylov vector of norm at most ``sqrt(max(p, q)) eps_64``
    times the largest product seen (rounding noise: an invariant subspace) is replaced by a
    random unit vector orthogonal to its basis and its coefficient set to 0."""
    threshold = math.sqrt(max(p, q)) * EPS64

    def orthogonalise(w, basis):
        w = w - basis.T @ (basis @ w)
        return w - basis.T @ (basis @ w)

    def next_vector(w, basis, scale, key):
        w = orthogonalise(w, basis)
        norm = jnp.linalg.norm(w)
        breakdown = norm <= threshold * scale
        fresh = orthogonalise(jax.random.normal(key, w.shape, dtype), basis)
        w = jnp.where(breakdown, fresh, w)
        w = orthogonalise(w / jnp.linalg.norm(w), basis)  # a third pass, after normalising
        return w / jnp.linalg.norm(w), jnp.where(breakdown, 0.0, norm), norm

    def step(i, state):
        us, vs, alphas, betas, v, beta, scale, _ = state
        vs = vs.at[i].set(v)
        av = matvec(v)
        scale = jnp.maximum(scale, jnp.linalg.norm(av))
        u, alpha, _ = next_vector(
            av - beta * us[jnp.maximum(i - 1, 0)], us, scale, jax.random.fold_in(key, 2 * i)
        )
        us = us.at[i].set(u)
        atu = rmatvec(u)
        scale = jnp.maximum(scale, jnp.linalg.norm(atu))
        v, beta, raw = next_vector(atu - alpha * v, vs, scale, jax.random.fold_in(key, 2 * i + 1))
        return us, vs, alphas.at[i].set(alpha), betas.at[i].set(beta), v, beta, scale, raw

    key, start = jax.random.split(key)
    v0 = jax.random.normal(start, (q,), dtype)
    zero = jnp.zeros((), dtype)
    state = (
        jnp.zeros((k, p), dtype),
        jnp.zeros((k, q), dtype),
        jnp.zeros(k, dtype),
        jnp.zeros(k, dtype),
        v0 / jnp.linalg.norm(v0),
        zero,
        zero,
        zero,
    )
    us, vs, alphas, betas, _, _, _, last = jax.lax.fori_loop(0, k, step, state)
    return alphas, betas, us, vs, last


def _lanczos_builder(fn, x_shape, m, k, key, *, rtol, dtype, jacobian_dtype, input_dtype, vectors):
    """``certify_one(x) -> Certificate`` by ``k`` Golub-Kahan steps (module docstring); one
    compiled program serves every ``x`` of ``x_shape``."""
    n = math.prod(x_shape)
    q = min(m, n)
    k = min(q, 256) if k is None else int(k)
    if k > q:
        raise ValueError(f"k must be <= min(m, n) = {q} for method='lanczos', got {k}")
    wide = m < n
    key = jax.random.key(0) if key is None else key

    def run(x, key):
        y, jvp = jax.linearize(fn, x)
        vjp = jax.linear_transpose(jvp, x)

        def j(v):
            return jvp(v.reshape(x.shape).astype(x.dtype)).ravel()

        def jt(u):
            return vjp(u.reshape(y.shape).astype(y.dtype))[0].ravel()

        # A = J (tall) or J^T (wide): p x q with p >= q
        return _golub_kahan(jt if wide else j, j if wide else jt, max(m, n), q, k, key, x.dtype)

    compiled = jax.jit(run).lower(jax.ShapeDtypeStruct(x_shape, input_dtype), key).compile()
    block_bytes = _program_bytes(compiled, 1)

    def certify_one(x):
        out = compiled(jnp.asarray(x, input_dtype), key)
        alphas, betas, us, vs, last = (np.asarray(a, np.float64) for a in out)
        b_small = np.diag(alphas) + np.diag(betas[:-1], 1)
        if not (np.all(np.isfinite(b_small)) and np.isfinite(last)):
            raise ValueError("the Jacobian of fn at x is not finite (NaN or inf entries)")
        p_left, theta, qt = np.linalg.svd(b_small)
        residuals = float(last) * np.abs(p_left[-1, :])
        ritz = None
        if vectors:  # J's right (Ritz) vectors: A's right ones (tall) or A's left ones (wide)
            ritz = us.T @ p_left if wide else vs.T @ qt.T
        return _certificate(
            theta,
            residuals,
            ritz,
            rtol=rtol,
            n_in=n,
            n_out=m,
            dtype=dtype,
            jacobian_dtype=jacobian_dtype,
            method="lanczos",
            complete=k == q,
            x_shape=x_shape,
            storage_bytes=8 * k * (m + n),
            block_bytes=block_bytes,
        )

    return certify_one


def _default_rtol(m, n, dtype) -> float:
    return max(m, n) * float(jnp.finfo(dtype).eps)


def _certify_all(fn, xs, *, rtol, method, k, key, dense_limit, block, vectors):
    """Certificates of ``fn`` at every ``x`` in ``xs`` (same-shape arrays); a dict per ``x``
    when ``fn`` returns a dict (one certificate per entry, from one Jacobian)."""
    rtol = None if rtol is None else float(rtol)  # checked: a real scalar in (0, 1)
    dtype = str(xs[0].dtype)
    shape = tuple(xs[0].shape)
    n = math.prod(shape)
    with jax.enable_x64(True):
        y, jacobian_dtype, input_dtype = _output_dtype64(fn, xs[0])
        if isinstance(y, dict):
            if method == "lanczos":
                raise ValueError("method='lanczos' needs fn to return one array, got a dict")
            names = list(y)
            sizes = [math.prod(y[name].shape) for name in names]
            jac = _jacobian_builder(
                lambda x: [fn(x)[name] for name in names], shape, block, input_dtype
            )
            out = []
            for x in xs:
                full = jac(x)
                blocks = np.split(full.matrix, np.cumsum(sizes)[:-1])
                out.append(
                    {
                        name: _from_dense(
                            b,
                            rtol=_default_rtol(b.shape[0], n, dtype) if rtol is None else rtol,
                            n_in=n,
                            n_out=b.shape[0],
                            dtype=dtype,
                            jacobian_dtype=jacobian_dtype,
                            vectors=vectors,
                            x_shape=shape,
                            block_bytes=full.block_bytes,
                        )
                        for name, b in zip(names, blocks, strict=True)
                    }
                )
            return out
        if not isinstance(y, jax.ShapeDtypeStruct):
            raise TypeError(f"fn must return an array or a dict of arrays, got {type(y)}")
        m = math.prod(y.shape)
        rtol = _default_rtol(m, n, dtype) if rtol is None else float(rtol)
        if method == "auto":
            method = "dense" if m * n <= dense_limit else "lanczos"
        if method == "lanczos":
            certify_one = _lanczos_builder(
                fn,
                shape,
                m,
                k,
                key,
                rtol=rtol,
                dtype=dtype,
                jacobian_dtype=jacobian_dtype,
                input_dtype=input_dtype,
                vectors=vectors,
            )
            return [certify_one(x) for x in xs]
        jac = _jacobian_builder(fn, shape, block, input_dtype)
        out = []
        for x in xs:
            full = jac(x)
            out.append(
                _from_dense(
                    full.matrix,
                    rtol=rtol,
                    n_in=n,
                    n_out=m,
                    dtype=dtype,
                    jacobian_dtype=jacobian_dtype,
                    vectors=vectors,
                    x_shape=shape,
                    block_bytes=full.block_bytes,
                )
            )
        return out


def certify(
    fn: Callable[[Array], Array],
    x: Array,
    *,
    rtol: float | None = None,
    method: str = "auto",
    k: int | None = None,
    key: Array | None = None,
    dense_limit: int = 2**26,
    block: int = 256,
    vectors: bool = False,
) -> Certificate:
    """Local invertibility certificate of ``fn`` at one input ``x`` (see the module docstring).

    ``rtol``: relative tolerance of ``effective_nullity`` and ``null_space``, any real scalar
    in (0, 1) (default ``max(m, n) * eps`` of ``x``'s dtype). ``fn`` must return at least one
    output entry. ``method``: ``'auto'``, ``'dense'`` or ``'lanczos'``
    (``k`` bidiagonalisation steps, default ``min(m, n, 256)``; ``key`` seeds its start vector;
    ``k < min(m, n)`` gives bounds only). ``dense_limit``: the most entries of ``J`` for which
    ``'auto'`` builds it. ``block``: Jacobian products per compiled call of the dense method
    (bounds its memory, reported as ``block_bytes``). ``vectors``: keep the ``n x min(m, n)``
    right singular vectors that :meth:`~Certificate.split`, :meth:`~Certificate.row_space` and
    :attr:`~Certificate.null_space` need (off by default: at ``64 x 64 x 3 -> 64 x 64`` they
    are 400 MB). When ``fn`` returns a dict of arrays (e.g. a network's named intermediates),
    the result is a dict with one certificate per entry, all from one Jacobian (dense method).

    >>> import jax.numpy as jnp
    >>> c = certify(lambda x: jnp.array([2.0, 1.0, 0.0]) * x, jnp.ones(3))
    >>> c.nullity, c.sigma_max, c.sigma_min
    (1, 2.0, 0.0)
    """
    x = _check(fn, x, rtol, method, k, dense_limit, block, vectors)
    return _certify_all(
        fn,
        [x],
        rtol=rtol,
        method=method,
        k=k,
        key=key,
        dense_limit=dense_limit,
        block=block,
        vectors=vectors,
    )[0]


def jacobian64(fn: Callable[[Array], Array], x: Array, *, block: int = 256) -> np.ndarray:
    """``d fn / d x`` at ``x`` as an ``(m, n)`` float64 NumPy matrix (inputs and outputs
    flattened; a dict or pytree output is concatenated in its leaf order), computed in float64
    as :func:`certify` computes it (``x`` cast to float64 under ``jax.enable_x64``)."""
    x = _check(fn, x, None, "dense", None, 1, block)
    with jax.enable_x64(True):
        _, _, input_dtype = _output_dtype64(fn, x)
        return _jacobian_builder(fn, tuple(x.shape), block, input_dtype)(x).matrix


def certify_batch(
    fn: Callable[[Array], Array],
    xs: Array,
    *,
    rtol: float | None = None,
    method: str = "auto",
    k: int | None = None,
    key: Array | None = None,
    dense_limit: int = 2**26,
    block: int = 256,
    vectors: bool = False,
) -> list:
    """:func:`certify` of ``fn`` at every row ``xs[i]`` of a leading axis (same options); the
    dense Jacobian program compiles once for all rows."""
    shape = np.shape(xs)
    if len(shape) < 2:
        raise ValueError(
            f"xs must be a batch of inputs, shape (N, *input shape) with at least 2 axes, got "
            f"shape {shape}; for one input use certify(fn, x), for {shape[0] if shape else 0} "
            "scalar inputs xs[:, None]"
        )
    if shape[0] == 0:
        raise ValueError(f"xs must hold at least one input (leading axis), got shape {shape}")
    xs = _check(fn, xs, rtol, method, k, dense_limit, block, vectors)
    return _certify_all(
        fn,
        list(xs),
        rtol=rtol,
        method=method,
        k=k,
        key=key,
        dense_limit=dense_limit,
        block=block,
        vectors=vectors,
    )


#: The precisions every conclusion is stated at (:func:`nullities`): ``'exact'``, the float64
#: rule ``max(m, n) eps_64``; ``'float32'``, ``max(m, n) eps_32``, below the rounding of a
#: float32 forward pass; ``'8-bit'``, ``1/255``, below one grey level of 8-bit data.
PRECISIONS = ("exact", "float32", "8-bit")


def _rtols(cert: Certificate) -> dict[str, float]:
    size = max(cert.n_in, cert.n_out)
    return {
        "exact": cert.exact_rtol,
        "float32": size * float(np.finfo(np.float32).eps),
        "8-bit": RTOL_8BIT,
    }


def _at_least(value) -> str:
    return f"≥ {value:.6g}" if isinstance(value, float) else f"≥ {value}"


def _at_most(value) -> str:
    return f"≤ {value:.6g}" if isinstance(value, float) else f"≤ {value}"


def nullities(cert: Certificate) -> dict[str, int | str]:
    """The certificate's nullity at each of :data:`PRECISIONS`: an ``int`` when it is complete,
    else a lower bound written ``'≥ d'`` (a string, so that it is never read as a count)."""
    if not isinstance(cert, Certificate):
        raise TypeError(f"cert must be a Certificate, got {type(cert).__name__}")
    lower = {p: cert.nullity_lower_at(r) for p, r in _rtols(cert).items()}
    return lower if cert.complete else {p: _at_least(d) for p, d in lower.items()}


def summarize(certs) -> dict:
    """What certificates of one map at several inputs say at each of :data:`PRECISIONS`.

    Per precision: the nullity at each input, its maximum, and ``lossy_inputs``, the number of
    inputs with nullity > 0 (inputs near which directions are lost at that precision); plus the
    ranges of ``sigma_min`` and ``condition_number`` over the inputs. A value that only a
    bound is known for is a string: ``'≥ v'`` (nullities, counts, condition numbers, from the
    lower bounds) or ``'≤ v'`` (``sigma_min``, from its upper bounds)."""
    certs = list(certs)
    if not certs or not all(isinstance(c, Certificate) for c in certs):
        raise TypeError("certs must be a non-empty sequence of Certificate")
    complete = all(c.complete for c in certs)
    lower = [{p: c.nullity_lower_at(r) for p, r in _rtols(c).items()} for c in certs]
    out = {}
    for p in PRECISIONS:
        per_input = [
            d[p] if c.complete else _at_least(d[p]) for c, d in zip(certs, lower, strict=True)
        ]
        max_nullity = max(d[p] for d in lower)
        lossy = sum(d[p] > 0 for d in lower)
        # an incomplete input with no known loss may or may not lose directions
        lossy_known = all(c.complete or d[p] > 0 for c, d in zip(certs, lower, strict=True))
        out[p] = {
            "nullity_per_input": per_input,
            "max_nullity": max_nullity if complete else _at_least(max_nullity),
            "lossy_inputs": lossy if lossy_known else _at_least(lossy),
        }
    known_sigma = all(c.sigma_min is not None for c in certs)
    sigma = [c.sigma_min if known_sigma else c.sigma_min_upper for c in certs]
    sigma_range = [min(sigma), max(sigma)]
    known_cond = all(c.condition_number is not None for c in certs)
    cond = [c.condition_number if known_cond else c.condition_number_lower for c in certs]
    cond_range = [min(cond), max(cond)]
    out.update(
        inputs=len(certs),
        n_in=certs[0].n_in,
        n_out=certs[0].n_out,
        sigma_min_range=sigma_range if known_sigma else [_at_most(v) for v in sigma_range],
        condition_number_range=cond_range if known_cond else [_at_least(v) for v in cond_range],
        complete=complete,
    )
    return out
