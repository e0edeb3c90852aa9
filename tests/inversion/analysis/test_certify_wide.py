"""certify on wide Jacobians (m < n) in every method: dense (reverse-mode rows, thin SVD) and
Lanczos (Golub-Kahan on J^T) against NumPy's float64 SVD of the explicit matrix; the memory
report; method='auto'; Lanczos breakdowns (repeated singular values)."""

import jax.numpy as jnp
import numpy as np
import pytest

from inversion.analysis import certify, certify_batch

EPS64 = np.finfo(np.float64).eps


def _matrix(rng, m, n, singular_values):
    """``U diag(s) V^T`` with Haar-random orthonormal ``U`` (m x r), ``V`` (n x r)."""
    r = len(singular_values)
    u, _ = np.linalg.qr(rng.normal(size=(m, r)))
    v, _ = np.linalg.qr(rng.normal(size=(n, r)))
    return (u * singular_values) @ v.T


def _wide(seed=0, m=6, n=15):
    """A wide ``m x n`` matrix of rank ``m - 2`` (two exact zeros among its ``m`` values)."""
    s = np.array([3.0, 1.0, 0.5, 0.1, 0.0, 0.0])[:m]
    return _matrix(np.random.default_rng(seed), m, n, s)


@pytest.mark.parametrize("method,k", [("dense", None), ("lanczos", 6)])
def test_wide_linear_map_matches_numpy_svd(method, k):
    a = _wide()
    m, n = a.shape
    cert = certify(lambda x: jnp.asarray(a) @ x, np.ones(n), method=method, k=k, vectors=True)
    ref = np.linalg.svd(a, compute_uv=False)
    # dense: both are LAPACK float64 SVDs of the same matrix (1e-14); lanczos: a complete,
    # fully reorthogonalised float64 factorisation, exact to a few hundred eps * sigma_1
    np.testing.assert_allclose(cert.singular_values, ref, rtol=0, atol=1e-13)
    assert cert.complete and cert.method == method
    rank = np.linalg.matrix_rank(a)  # numpy's max(m, n) eps sigma_1 rule, as certify's
    assert rank == m - 2
    assert cert.nullity == n - rank and cert.rank == rank
    assert cert.sigma_min == 0.0 and cert.condition_number == np.inf
    assert cert.sigma_max == pytest.approx(ref[0], rel=1e-13)
    # the right singular vectors span the row space: V_r V_r^T = pinv(a) a
    basis = cert.row_space()
    assert basis.shape == (n, rank)
    np.testing.assert_allclose(basis @ basis.T, np.linalg.pinv(a) @ a, atol=1e-12)


def test_wide_nonlinear_map_lanczos_equals_dense():
    rng = np.random.default_rng(1)
    w1 = jnp.asarray(rng.normal(size=(10, 40)) / 6, jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(7, 10)) / 3, jnp.float32)

    def net(x):
        return w2 @ jnp.tanh(w1 @ x)

    x = rng.normal(size=40).astype(np.float32)
    dense = certify(net, x, method="dense")
    full = certify(net, x, method="lanczos", k=7)
    assert (dense.n_out, dense.n_in) == (7, 40) and full.complete
    # exact float64 spectra of one Jacobian by two algorithms: agreement to ~1e-13 sigma_1
    np.testing.assert_allclose(full.singular_values, dense.singular_values, atol=1e-12)
    assert full.nullity == dense.nullity == 33  # rank 7: only the structural n - m zeros
    assert full.effective_nullity == dense.effective_nullity


def test_partial_wide_lanczos_knows_the_structural_zeros_exactly():
    a = _wide(seed=2, m=6, n=15)
    cert = certify(lambda x: jnp.asarray(a) @ x, np.ones(15), method="lanczos", k=3)
    assert not cert.complete and cert.nullity is None
    # sigma_min = 0 and kappa = inf follow from the shape alone: exact even when partial
    assert cert.sigma_min == 0.0 and cert.condition_number == np.inf
    assert 9 <= cert.nullity_lower <= 15 - np.linalg.matrix_rank(a)


def test_block_size_does_not_change_the_jacobian_and_memory_is_reported():
    a = _wide(seed=3, m=5, n=40)
    one = certify(lambda x: jnp.tanh(jnp.asarray(a) @ x), np.full(40, 0.1), block=2)
    big = certify(lambda x: jnp.tanh(jnp.asarray(a) @ x), np.full(40, 0.1))
    # the same float64 products, two at a time or all at once: equal to float64 rounding
    np.testing.assert_allclose(one.singular_values, big.singular_values, rtol=1e-14, atol=1e-15)
    assert one.storage_bytes == big.storage_bytes == 8 * 5 * 40  # J in float64, no n x n
    # XLA's size of one block program: the basis (block x m), x and the products (block x n)
    assert one.block_bytes >= 8 * (2 * 5 + 40 + 2 * 40)
    assert big.block_bytes > one.block_bytes
    lanczos = certify(lambda x: jnp.asarray(a) @ x, np.ones(40), method="lanczos", k=2)
    assert lanczos.storage_bytes == 8 * 2 * (5 + 40)  # two Krylov bases of k vectors


def test_auto_is_dense_when_the_jacobian_fits_else_lanczos():
    a = _wide(seed=4, m=6, n=30)[:4]  # 4 x 30 of rank 4
    fn = lambda x: jnp.asarray(a) @ x  # noqa: E731
    assert certify(fn, np.ones(30)).method == "dense"
    small = certify(fn, np.ones(30), dense_limit=4 * 30 - 1)
    assert small.method == "lanczos" and small.complete  # k defaults to min(m, n, 256) = 4
    assert small.nullity == certify(fn, np.ones(30)).nullity == 26


def test_many_inputs_few_outputs_never_builds_an_n_by_n_matrix():
    """3 outputs of 20000 inputs: a full V would be 3.2 GB; the certificate holds 3 x n."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 20000))
    cert = certify(lambda x: jnp.asarray(a) @ x, np.zeros(20000), vectors=True)
    assert cert.nullity == 20000 - 3 and cert.vectors.shape == (20000, 3)
    np.testing.assert_allclose(cert.singular_values, np.linalg.svd(a, compute_uv=False), rtol=1e-13)


@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_repeated_singular_values_average_pooling(method):
    """2x2 average pooling of a 4x4 image: J J^T = I / 4, so all 4 singular values are 1/2 and
    12 of 16 directions are lost. A Krylov space breaks down after one step here (one
    eigenvalue); the complete Lanczos run restarts and still finds all four."""

    def pool(x):
        return x.reshape(2, 2, 2, 2).mean(axis=(1, 3))

    cert = certify(pool, np.arange(16.0).reshape(4, 4), method=method, k=4)
    np.testing.assert_allclose(cert.singular_values, np.full(4, 0.5), rtol=1e-14)
    assert cert.complete and cert.nullity == 12 and cert.rank == 4
    assert np.all(np.isfinite(cert.residuals))


def test_certify_batch_lanczos_equals_certify_per_row():
    rng = np.random.default_rng(6)
    a = jnp.asarray(rng.normal(size=(5, 12)))

    def fn(x):
        return jnp.tanh(a @ x)

    xs = rng.normal(size=(3, 12))

    for cert, x in zip(certify_batch(fn, xs, method="lanczos", k=3), xs, strict=True):
        one = certify(fn, x, method="lanczos", k=3)
        # the same compiled program and start vector: the same float64 Ritz values
        np.testing.assert_allclose(cert.singular_values, one.singular_values, rtol=1e-13)
        assert cert.nullity_lower == one.nullity_lower >= 7 and not cert.complete
