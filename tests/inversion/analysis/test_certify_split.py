"""Certificate.split / recoverable / row_space / null_space against NumPy projections of
explicit rank-deficient matrices (P = pinv(A) A), wide and tall, dense and Lanczos."""

import jax.numpy as jnp
import numpy as np
import pytest

from inversion.analysis import certify


def _matrix(rng, m, n, singular_values):
    """``U diag(s) V^T`` with Haar-random orthonormal ``U`` (m x r), ``V`` (n x r)."""
    r = len(singular_values)
    u, _ = np.linalg.qr(rng.normal(size=(m, r)))
    v, _ = np.linalg.qr(rng.normal(size=(n, r)))
    return (u * singular_values) @ v.T


# projections built from two float64 SVDs of matrices with sigma in [0.2, 2] and exact zeros:
# they agree to a few eps / sigma_r ~ 1e-14; 1e-12 leaves room for the Lanczos run
ATOL = 1e-12


@pytest.mark.parametrize(
    "m,n,method", [(4, 9, "dense"), (4, 9, "lanczos"), (8, 5, "dense"), (8, 5, "lanczos")]
)
def test_split_is_the_projection_onto_the_row_space(m, n, method):
    rng = np.random.default_rng(m * n)
    a = _matrix(rng, m, n, [2.0, 1.0, 0.2])  # rank 3
    cert = certify(
        lambda x: jnp.asarray(a) @ x.ravel(),
        np.zeros((1, n)),
        method=method,
        k=min(m, n),
        vectors=True,
    )
    assert cert.rank == 3 and cert.x_shape == (1, n)
    proj = np.linalg.pinv(a) @ a
    dx = rng.normal(size=(1, n))
    visible, lost = cert.split(dx)
    assert visible.shape == lost.shape == (1, n)
    np.testing.assert_allclose(visible[0], proj @ dx[0], atol=ATOL)
    np.testing.assert_allclose(lost[0], dx[0] - proj @ dx[0], atol=ATOL)
    np.testing.assert_allclose(visible + lost, dx, rtol=0, atol=1e-15)
    np.testing.assert_allclose(a @ lost[0], 0.0, atol=ATOL)  # the output does not see it
    # leading batch axes
    batch = rng.normal(size=(3, 1, n))
    vis, _ = cert.split(batch)
    np.testing.assert_allclose(vis.reshape(3, n), batch.reshape(3, n) @ proj.T, atol=ATOL)
    # the null space: orthonormal, orthogonal to the row space, together all of R^n
    null = cert.null_space
    assert null.shape == (n, n - 3)
    np.testing.assert_allclose(null.T @ null, np.eye(n - 3), atol=ATOL)
    np.testing.assert_allclose(null @ null.T, np.eye(n) - proj, atol=ATOL)


def test_recoverable_is_the_nearest_point_with_the_same_output():
    rng = np.random.default_rng(0)
    a = _matrix(rng, 5, 12, [1.5, 1.0, 0.5, 0.0, 0.0])  # rank 3, wide
    cert = certify(lambda x: jnp.asarray(a) @ x, np.zeros(12), vectors=True)
    x_true, x_start = rng.normal(size=12), rng.normal(size=12)
    best = cert.recoverable(x_true, x_start)
    # minimum-norm correction of x_start that reproduces a x_true (affine map: exact)
    ref = x_start + np.linalg.pinv(a) @ (a @ x_true - a @ x_start)
    np.testing.assert_allclose(best, ref, atol=ATOL)
    np.testing.assert_allclose(a @ best, a @ x_true, atol=ATOL)
    assert np.linalg.norm(best - x_true) <= np.linalg.norm(x_start - x_true)
    with pytest.raises(ValueError, match="same shape"):
        cert.recoverable(np.zeros((2, 12)), np.zeros(12))


def test_row_space_at_a_tolerance_drops_small_singular_values():
    rng = np.random.default_rng(1)
    a = _matrix(rng, 6, 6, [1.0, 0.5, 1e-6])  # rank 3 exactly, 2 at rtol 1e-3
    cert = certify(lambda x: jnp.asarray(a) @ x, np.zeros(6), vectors=True)
    assert cert.row_space().shape == (6, 3) and cert.row_space(1e-3).shape == (6, 2)
    dx = rng.normal(size=6)
    visible, lost = cert.split(dx, rtol=1e-3)
    u, s, vt = np.linalg.svd(a)
    np.testing.assert_allclose(visible, vt[:2].T @ (vt[:2] @ dx), atol=1e-10)
    np.testing.assert_allclose(visible + lost, dx, atol=1e-15)


def test_split_refuses_what_it_cannot_answer():
    a = np.eye(3)[:2]
    fn = lambda x: jnp.asarray(a) @ x  # noqa: E731
    with pytest.raises(ValueError, match=r"vectors=True"):
        certify(fn, np.zeros(3)).split(np.ones(3))
    with pytest.raises(ValueError, match=r"vectors=True"):
        certify(fn, np.zeros(3)).null_space  # noqa: B018
    cert = certify(fn, np.zeros(3), vectors=True)
    with pytest.raises(ValueError, match=r"dx must have x's shape \(3,\)"):
        cert.split(np.ones(4))
    with pytest.raises(ValueError, match="dx must be finite"):
        cert.split(np.array([1.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="rtol must be"):
        cert.split(np.ones(3), rtol=-1.0)
    partial = certify(lambda x: jnp.asarray(np.eye(4)) @ x, np.zeros(4), method="lanczos", k=2)
    with pytest.raises(ValueError, match="needs the complete spectrum"):
        partial.row_space()


def test_part_errors_against_numpy_projections():
    """A = rank-2 wide map: visible/lost errors equal the NumPy projections' norm ratios; a
    full-rank map has no lost part (None)."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 5))
    cert = certify(lambda x: jnp.asarray(a) @ x, jnp.zeros(5), vectors=True)
    p = np.linalg.pinv(a) @ a
    x_true, x_start, x_hat = (rng.standard_normal(5) for _ in range(3))
    visible, lost = cert.part_errors(x_hat, x_true, x_start)
    d, d0 = x_hat - x_true, x_start - x_true
    np.testing.assert_allclose(visible, np.linalg.norm(p @ d) / np.linalg.norm(p @ d0), rtol=1e-10)
    q = np.eye(5) - p
    np.testing.assert_allclose(lost, np.linalg.norm(q @ d) / np.linalg.norm(q @ d0), rtol=1e-10)
    square = certify(lambda x: jnp.asarray(a[:, :2]) @ x, jnp.zeros(2), vectors=True)
    assert square.part_errors(x_hat[:2], x_true[:2], x_start[:2])[1] is None
