"""Local invertibility certificate of ``fn`` at ``x``, from its Jacobian taken in float64.

For ``fn : R^n -> R^m`` (any array shapes, flattened; ``n`` inputs, ``m`` outputs) and
``J = d fn / d x`` at ``x`` with singular values ``sigma_1 >= ... >= sigma_n`` (``sigma_i = 0``
for ``i > m`` when ``m < n``), the certificate states, at three precisions:

* **exact** (float64): ``nullity = #{i : sigma_i <= tau_64}`` with
  ``tau_64 = max(m, n) * eps_64 * sigma_1`` (numpy's ``matrix_rank`` rule, ``eps_64 = 2.2e-16``).
  ``J`` is computed in float64 whatever the model's dtype: inside ``jax.enable_x64`` the input
  is cast to float64 and float32 weights promote to float64, so the float32 *network* is
  differentiated in (almost) exact arithmetic. ``nullity > 0`` means the network itself
  destroys input directions near ``x``.
* **working precision**: ``effective_nullity = #{i : sigma_i <= rtol * sigma_1}``, with
  ``rtol`` defaulting to ``max(m, n) * eps`` of ``x``'s dtype (float32: ``1.19e-7``). Directions
  counted here survive in exact arithmetic but are below the rounding of a float32 forward
  pass: no float32 computation can tell them apart. ``null_space`` is an orthonormal basis of
  these directions (the right singular vectors of ``sigma_i <= rtol * sigma_1``).
* **any other tolerance** through :meth:`Certificate.nullity_at`, e.g. ``1 / 255`` for data
  quantised to 8 bits: directions amplified less than ``sigma_1 / 255`` are lost below one
  grey level of the strongest response.

``condition_number = sigma_1 / sigma_n`` (``inf`` when the exact nullity is > 0), and
:meth:`Certificate.input_error_bound` turns an output residual into an input error:
``||x_hat - x|| <= ||fn(x_hat) - fn(x)|| / sigma_n`` to first order. For a piecewise-linear
network (ReLU, max pooling) ``fn`` is affine on the linear region that contains ``x``, so the
bound is exact for any ``x_hat`` in that region and says nothing outside it.

Methods. ``'dense'`` builds ``J`` column block by column block from ``jax.linearize`` (row
blocks of ``jax.linear_transpose`` when ``m < n``) and takes LAPACK's SVD in float64; every
field is exact up to float64 rounding (``complete=True``). ``'lanczos'`` never forms ``J``: it
runs ``k`` steps of Golub-Kahan bidiagonalisation with full reorthogonalisation
(``matfree.decomp.bidiag``) on the float64 JVP/VJP, ``J V_k = U_k B_k``, and takes the SVD of
the small ``B_k``. Since ``V_k`` has orthonormal columns, the Ritz values interlace with the
true ones (``sigma_{n-k+j}(J) <= theta_j``): the smallest Ritz value is an **upper bound** on
``sigma_n``, and the number of Ritz values below a threshold is a **lower bound** on the
nullity at that threshold. ``residuals[j] = |beta_k| |p_j[k-1]|`` (``p_j`` the left singular
vector of ``B_k``) bounds the distance from ``theta_j`` to the nearest singular value of
``J``. With ``k = min(m, n)`` the factorisation is complete and the fields are exact.
``'auto'`` is dense when ``m * n <= dense_limit`` (default ``2**24`` entries, 128 MiB).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

_METHODS = ("auto", "dense", "lanczos")
EPS64 = float(np.finfo(np.float64).eps)
#: Relative precision of data quantised to 8 bits (one grey level of the full range).
RTOL_8BIT = 1.0 / 255.0


class Certificate(NamedTuple):
    """A local invertibility certificate of ``fn`` at one ``x`` (see the module docstring)."""

    singular_values: Float[np.ndarray, " r"]  # descending; dense: all min(m, n); lanczos: k
    sigma_max: float
    sigma_min: float  # sigma_n (0 when m < n); lanczos and not complete: an upper bound
    condition_number: float  # sigma_max / sigma_min (inf when sigma_min = 0 or nullity > 0)
    nullity: int  # exact: #{sigma_i <= max(m, n) eps_64 sigma_1}; lanczos: a lower bound
    effective_nullity: int  # #{sigma_i <= rtol sigma_1}; lanczos: a lower bound
    null_space: Float[np.ndarray, "n d"]  # orthonormal basis of the effective null space
    rtol: float  # the relative tolerance of effective_nullity
    n_in: int
    n_out: int
    dtype: str  # the working precision of x (what rtol's default refers to)
    jacobian_dtype: str  # the dtype J was computed in ('float64' unless fn forces another)
    method: str  # 'dense' or 'lanczos'
    complete: bool  # every singular value known (dense, or lanczos with k = min(m, n))
    residuals: Float[np.ndarray, " r"]  # per singular value: distance bound to the true one

    @property
    def exact_rtol(self) -> float:
        """``max(m, n) * eps_64``: the relative tolerance of :attr:`nullity`."""
        return max(self.n_in, self.n_out) * EPS64

    def nullity_at(self, rtol: float) -> int:
        """``#{i <= n : sigma_i <= rtol * sigma_1}``, counting the ``n - m`` zero singular
        values of a wide Jacobian (a lower bound when the certificate is not complete)."""
        if not (isinstance(rtol, int | float | np.floating) and rtol >= 0):
            raise ValueError(f"rtol must be a non-negative number, got {rtol!r}")
        return _count_small(self.singular_values, rtol, self.n_in, self.n_out)

    def input_error_bound(self, residual_norm) -> float | np.ndarray:
        """``||r|| / sigma_min``: the input error that an output residual ``r`` allows, to first
        order around ``x`` (exactly, inside ``x``'s linear region of a piecewise-linear net).
        ``inf`` when ``sigma_min = 0``. Accepts a scalar or an array of residual norms."""
        r = np.asarray(residual_norm, dtype=np.float64)
        if not np.all(np.isfinite(r)) or np.any(r < 0):
            raise ValueError(f"residual_norm must be finite and >= 0, got {residual_norm!r}")
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = np.where(r == 0, 0.0, r / self.sigma_min)
        return float(bound) if bound.ndim == 0 else bound


def _count_small(s, rtol, n_in, n_out) -> int:
    top = float(s[0]) if s.size else 0.0
    implied_zeros = max(n_in - n_out, 0)  # a wide Jacobian has n - m zero singular values
    return int(np.sum(s <= rtol * top)) + implied_zeros


def _check(fn, x, rtol, method, k, dense_limit, block):
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
    if rtol is not None and not (isinstance(rtol, int | float | np.floating) and rtol >= 0):
        raise ValueError(f"rtol must be a non-negative number or None, got {rtol!r}")
    if k is not None and (not isinstance(k, int | np.integer) or k < 1):
        raise ValueError(f"k must be a positive integer or None, got {k!r}")
    if not isinstance(dense_limit, int | np.integer) or dense_limit < 1:
        raise ValueError(f"dense_limit must be a positive integer, got {dense_limit!r}")
    if not isinstance(block, int | np.integer) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
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
    low = sorted({str(leaf.dtype) for leaf in leaves if leaf.dtype != jnp.float64})
    if low and input_dtype == jnp.float64:  # (a refused float64 input was warned about above)
        warnings.warn(
            f"fn returns {', '.join(low)} for a float64 input (it casts internally), so its "
            f"Jacobian is only that accurate; the exact nullity then refers to that precision",
            RuntimeWarning,
            stacklevel=4,
        )
    return y, (low[0] if low else str(jnp.dtype(input_dtype))), input_dtype


def _jacobian_builder(fn, x_shape, block: int, dtype=jnp.float64):
    """``jac(x) -> (m, n)`` float64 NumPy Jacobian of ``fn`` at ``x`` (call under x64).

    ``fn``'s outputs (an array or a pytree of arrays) are flattened and concatenated. Tall maps
    (``m >= n``) are built ``block`` columns at a time from forward-mode products, wide maps
    ``block`` rows at a time from reverse-mode products; one compiled function serves every
    block and every ``x`` of the same shape."""

    def flat(x):
        return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(fn(x))])

    m = int(jax.eval_shape(flat, jax.ShapeDtypeStruct(x_shape, dtype)).size)
    n = int(np.prod(x_shape))
    tall = m >= n

    def forward(x, basis):
        return jax.vmap(lambda e: jax.jvp(flat, (x,), (e.reshape(x_shape),))[1])(basis)

    def reverse(x, basis):
        _, pullback = jax.vjp(flat, x)
        return jax.vmap(lambda e: pullback(e)[0].ravel())(basis)

    products = jax.jit(forward if tall else reverse)
    size = n if tall else m

    def jac(x):
        x = jnp.asarray(x, dtype)
        parts = []
        for start in range(0, size, block):
            stop = min(start + block, size)
            basis = np.zeros((min(block, size), size))
            basis[np.arange(stop - start), np.arange(start, stop)] = 1.0
            products_block = products(x, jnp.asarray(basis, dtype))
            parts.append(np.asarray(products_block, np.float64)[: stop - start])
        stacked = np.concatenate(parts)  # tall: the columns of J; wide: its rows
        return stacked.T if tall else stacked

    return jac


def _from_dense(jac, *, rtol, n_in, n_out, dtype, jacobian_dtype):
    if not np.all(np.isfinite(jac)):
        raise ValueError("the Jacobian of fn at x is not finite (NaN or inf entries)")
    # tall: the thin SVD already gives all n right singular vectors (and no m x m U)
    _, s, vt = np.linalg.svd(jac, full_matrices=jac.shape[0] < jac.shape[1])
    s_full = np.zeros(n_in)
    s_full[: s.size] = s[:n_in]  # sigma_i = 0 for i > m
    small = s_full <= rtol * (s_full[0] if n_in else 0.0)
    null_space = vt[small].T  # (n, d): right singular vectors of the small sigma_i
    return _certificate(
        s,
        np.zeros_like(s),
        null_space,
        rtol=rtol,
        n_in=n_in,
        n_out=n_out,
        dtype=dtype,
        jacobian_dtype=jacobian_dtype,
        method="dense",
        complete=True,
    )


def _certificate(
    s, residuals, null_space, *, rtol, n_in, n_out, dtype, jacobian_dtype, method, complete
) -> Certificate:
    sigma_max = float(s[0])
    sigma_min = float(s[n_in - 1]) if complete and s.size >= n_in else float(s[-1])
    if n_out < n_in:
        sigma_min = 0.0
    nullity = _count_small(s, max(n_in, n_out) * EPS64, n_in, n_out)
    # a Jacobian singular in float64 has condition number inf, not sigma_1 / (rounding noise)
    cond = float(sigma_max / sigma_min) if sigma_min > 0 and nullity == 0 else float("inf")
    return Certificate(
        singular_values=s,
        sigma_max=sigma_max,
        sigma_min=sigma_min,
        condition_number=cond,
        nullity=nullity,
        effective_nullity=_count_small(s, rtol, n_in, n_out),
        null_space=null_space,
        rtol=float(rtol),
        n_in=n_in,
        n_out=n_out,
        dtype=dtype,
        jacobian_dtype=jacobian_dtype,
        method=method,
        complete=bool(complete),
        residuals=residuals,
    )


def _lanczos(fn, x, k, key, *, rtol, dtype, jacobian_dtype, input_dtype):
    from matfree import decomp

    x64 = jnp.asarray(x, input_dtype)
    m, n = int(jax.eval_shape(fn, x64).size), int(x64.size)
    if m < n:
        raise ValueError(
            f"method='lanczos' needs a tall or square Jacobian (m >= n) to bound "
            f"sigma_n, got m = {m} outputs < n = {n} inputs; use method='dense'"
        )
    k = min(n, 256) if k is None else k
    if k > n:
        raise ValueError(f"k must be <= n = {n} for method='lanczos', got {k}")
    _, jvp = jax.linearize(fn, x64)
    v0 = jax.random.normal(jax.random.key(0) if key is None else key, (n,), input_dtype)
    bidiag = decomp.bidiag(k, materialize=True, reortho="full")
    result = jax.jit(lambda v: bidiag(lambda z: jvp(z.reshape(x64.shape)).ravel(), v))(v0)
    (_, v_basis), b_small = result.Q_tall, np.asarray(result.J_small, np.float64)
    beta = float(np.linalg.norm(np.asarray(result.residual)))
    p, theta, qt = np.linalg.svd(b_small)
    if not np.all(np.isfinite(theta)):
        raise ValueError("the Jacobian of fn at x is not finite (NaN or inf entries)")
    residuals = beta * np.abs(p[-1, :])  # ||J^T u_j - theta_j v_j|| for the Ritz triplets
    ritz_vectors = np.asarray(v_basis, np.float64).T @ qt.T  # (n, k) right Ritz vectors
    small = theta <= rtol * theta[0]
    return _certificate(
        theta,
        residuals,
        ritz_vectors[:, small],
        rtol=rtol,
        n_in=n,
        n_out=m,
        dtype=dtype,
        jacobian_dtype=jacobian_dtype,
        method="lanczos",
        complete=k == n,
    )


def _default_rtol(m, n, dtype) -> float:
    return max(m, n) * float(jnp.finfo(dtype).eps)


def _certify_all(fn, xs, *, rtol, method, k, key, dense_limit, block):
    """Certificates of ``fn`` at every ``x`` in ``xs`` (same-shape arrays); a dict per ``x``
    when ``fn`` returns a dict (one certificate per entry, from one Jacobian)."""
    dtype = str(xs[0].dtype)
    n = int(np.prod(xs[0].shape))
    with jax.enable_x64(True):
        y, jacobian_dtype, input_dtype = _output_dtype64(fn, xs[0])
        if isinstance(y, dict):
            if method == "lanczos":
                raise ValueError("method='lanczos' needs fn to return one array, got a dict")
            names = list(y)
            sizes = [int(np.prod(y[name].shape)) for name in names]
            jac = _jacobian_builder(
                lambda x: [fn(x)[name] for name in names], xs[0].shape, block, input_dtype
            )
            out = []
            for x in xs:
                blocks = np.split(jac(x), np.cumsum(sizes)[:-1])
                out.append(
                    {
                        name: _from_dense(
                            b,
                            rtol=_default_rtol(b.shape[0], n, dtype) if rtol is None else rtol,
                            n_in=n,
                            n_out=b.shape[0],
                            dtype=dtype,
                            jacobian_dtype=jacobian_dtype,
                        )
                        for name, b in zip(names, blocks, strict=True)
                    }
                )
            return out
        if not isinstance(y, jax.ShapeDtypeStruct):
            raise TypeError(f"fn must return an array or a dict of arrays, got {type(y)}")
        m = int(np.prod(y.shape))
        rtol = _default_rtol(m, n, dtype) if rtol is None else float(rtol)
        if method == "auto":
            method = "dense" if m * n <= dense_limit or m < n else "lanczos"
        if method == "lanczos":
            return [
                _lanczos(
                    fn,
                    x,
                    k,
                    key,
                    rtol=rtol,
                    dtype=dtype,
                    jacobian_dtype=jacobian_dtype,
                    input_dtype=input_dtype,
                )
                for x in xs
            ]
        jac = _jacobian_builder(fn, xs[0].shape, block, input_dtype)
        return [
            _from_dense(
                jac(x), rtol=rtol, n_in=n, n_out=m, dtype=dtype, jacobian_dtype=jacobian_dtype
            )
            for x in xs
        ]


def certify(
    fn: Callable[[Array], Array],
    x: Array,
    *,
    rtol: float | None = None,
    method: str = "auto",
    k: int | None = None,
    key: Array | None = None,
    dense_limit: int = 2**24,
    block: int = 256,
) -> Certificate:
    """Local invertibility certificate of ``fn`` at one input ``x`` (see the module docstring).

    ``rtol``: relative tolerance of ``effective_nullity`` and ``null_space`` (default
    ``max(m, n) * eps`` of ``x``'s dtype). ``method``: ``'auto'``, ``'dense'`` or ``'lanczos'``
    (``k`` bidiagonalisation steps, default ``min(n, 256)``; ``key`` seeds its start vector).
    ``block``: Jacobian columns per compiled call of the dense method (bounds memory).
    When ``fn`` returns a dict of arrays (e.g. a network's named intermediates), the result is
    a dict with one certificate per entry, all from one Jacobian (dense method).

    >>> import jax.numpy as jnp
    >>> c = certify(lambda x: jnp.array([2.0, 1.0, 0.0]) * x, jnp.ones(3))
    >>> c.nullity, c.sigma_max, c.sigma_min
    (1, 2.0, 0.0)
    """
    x = _check(fn, x, rtol, method, k, dense_limit, block)
    return _certify_all(
        fn, [x], rtol=rtol, method=method, k=k, key=key, dense_limit=dense_limit, block=block
    )[0]


def jacobian64(fn: Callable[[Array], Array], x: Array, *, block: int = 256) -> np.ndarray:
    """``d fn / d x`` at ``x`` as an ``(m, n)`` float64 NumPy matrix (inputs and outputs
    flattened; a dict or pytree output is concatenated in its leaf order), computed in float64
    as :func:`certify` computes it (``x`` cast to float64 under ``jax.enable_x64``)."""
    x = _check(fn, x, None, "dense", None, 1, block)
    with jax.enable_x64(True):
        _, _, input_dtype = _output_dtype64(fn, x)
        return _jacobian_builder(fn, x.shape, block, input_dtype)(x)


def certify_batch(
    fn: Callable[[Array], Array],
    xs: Array,
    *,
    rtol: float | None = None,
    method: str = "auto",
    k: int | None = None,
    key: Array | None = None,
    dense_limit: int = 2**24,
    block: int = 256,
) -> list:
    """:func:`certify` of ``fn`` at every row ``xs[i]`` of a leading axis (same options); the
    dense Jacobian program compiles once for all rows."""
    shape = np.shape(xs)
    if len(shape) < 2 or shape[0] == 0:
        raise ValueError(f"xs must have a non-empty leading axis over inputs, got shape {shape}")
    xs = _check(fn, xs, rtol, method, k, dense_limit, block)
    return _certify_all(
        fn, list(xs), rtol=rtol, method=method, k=k, key=key, dense_limit=dense_limit, block=block
    )


#: The precisions every conclusion is stated at (:func:`nullities`): ``'exact'``, the float64
#: rule ``max(m, n) eps_64``; ``'float32'``, ``max(m, n) eps_32``, below the rounding of a
#: float32 forward pass; ``'8-bit'``, ``1/255``, below one grey level of 8-bit data.
PRECISIONS = ("exact", "float32", "8-bit")


def nullities(cert: Certificate) -> dict[str, int]:
    """The certificate's nullity at each of :data:`PRECISIONS`."""
    size = max(cert.n_in, cert.n_out)
    return {
        "exact": cert.nullity,
        "float32": cert.nullity_at(size * float(np.finfo(np.float32).eps)),
        "8-bit": cert.nullity_at(RTOL_8BIT),
    }


def summarize(certs) -> dict:
    """What certificates of one map at several inputs say at each of :data:`PRECISIONS`.

    Per precision: the nullity at each input, its maximum, and ``lossy_inputs``, the number of
    inputs with nullity > 0 (inputs near which directions are lost at that precision); plus the
    ranges of ``sigma_min`` and ``condition_number`` over the inputs."""
    certs = list(certs)
    if not certs or not all(isinstance(c, Certificate) for c in certs):
        raise TypeError("certs must be a non-empty sequence of Certificate")
    per = [nullities(c) for c in certs]
    out = {
        p: {
            "nullity_per_input": [d[p] for d in per],
            "max_nullity": max(d[p] for d in per),
            "lossy_inputs": sum(d[p] > 0 for d in per),
        }
        for p in PRECISIONS
    }
    out.update(
        inputs=len(certs),
        n_in=certs[0].n_in,
        n_out=certs[0].n_out,
        sigma_min_range=[min(c.sigma_min for c in certs), max(c.sigma_min for c in certs)],
        condition_number_range=[
            min(c.condition_number for c in certs),
            max(c.condition_number for c in certs),
        ],
        complete=all(c.complete for c in certs),
    )
    return out
