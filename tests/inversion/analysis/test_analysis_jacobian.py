"""Jacobian spectra: dense against numpy's SVD, matrix-free Lanczos against dense."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inversion.analysis.jacobian import jacobian_spectrum, layerwise_spectra, summarize_spectrum


@pytest.mark.parametrize("m,n", [(12, 7), (5, 9)])
def test_linear_map_equals_numpy_svd(m, n):
    rng = np.random.default_rng(m + n)
    A = rng.normal(size=(m, n)).astype(np.float32)
    A[:, -1] = A[:, 0]  # one exact rank defect
    spec = jacobian_spectrum(lambda x: jnp.asarray(A) @ x, jnp.ones(n))
    ref = np.linalg.svd(A.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(spec.singular_values, ref, rtol=1e-6, atol=1e-6)
    rank = np.linalg.matrix_rank(A.astype(np.float64), tol=spec.tol)
    assert spec.rank == rank == min(m, n - 1)
    assert spec.nullity == n - rank and spec.complete and spec.method == "dense"
    assert spec.log_volume == pytest.approx(np.sum(np.log(ref[:rank])), rel=1e-6)
    assert spec.condition_number == float("inf")


def test_image_shaped_map_and_condition_number():
    rng = np.random.default_rng(0)
    A = jnp.asarray(rng.normal(size=(2 * 3 * 4, 2 * 3 * 2)), jnp.float32)
    fn = lambda x: (A @ x.ravel()).reshape(2, 3, 4)  # noqa: E731
    spec = jacobian_spectrum(fn, jnp.zeros((2, 3, 2)))
    s = np.linalg.svd(np.asarray(A, np.float64), compute_uv=False)
    assert (spec.n_in, spec.n_out) == (12, 24)
    assert spec.condition_number == pytest.approx(s[0] / s[-1], rel=1e-5)


def test_lanczos_top_k_matches_dense():
    rng = np.random.default_rng(1)
    B = jnp.asarray(rng.normal(size=(150, 120)) / 12, jnp.float32)
    fn = lambda x: jnp.tanh(B @ x)  # noqa: E731
    x = jnp.asarray(rng.normal(size=120), jnp.float32)
    dense = jacobian_spectrum(fn, x, method="dense")
    top = jacobian_spectrum(fn, x, method="lanczos", k=8, key=jax.random.key(3))
    assert top.method == "lanczos" and not top.complete and top.rank == 8
    np.testing.assert_allclose(top.singular_values, dense.singular_values[:8], rtol=1e-4)


def test_lanczos_finds_exact_rank_when_tail_reached():
    rng = np.random.default_rng(2)
    A = jnp.asarray(rng.normal(size=(40, 3)) @ rng.normal(size=(3, 30)), jnp.float32)  # rank 3
    spec = jacobian_spectrum(lambda x: A @ x, jnp.zeros(30), method="lanczos", k=6)
    assert spec.complete and spec.rank == 3 and spec.nullity == 27


def test_layerwise_and_summary():
    out = layerwise_spectra(
        {"id": lambda x: x, "sum": lambda x: jnp.sum(x, keepdims=True)}, jnp.ones(4)
    )
    assert out["id"].rank == 4 and out["sum"].rank == 1 and out["sum"].nullity == 3
    summary = summarize_spectrum([3.0, 0.0, 1.0], n_in=3, n_out=3, tol=0.5)
    np.testing.assert_array_equal(summary.singular_values, [3.0, 1.0, 0.0])
    assert summary.rank == 2 and summary.log_volume == pytest.approx(np.log(3.0))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="method"):
        jacobian_spectrum(lambda x: x, jnp.ones(3), method="svd")
    with pytest.raises(TypeError, match="callable"):
        jacobian_spectrum(np.eye(3), jnp.ones(3))
    with pytest.raises(TypeError, match="floating"):
        jacobian_spectrum(lambda x: x, jnp.ones(3, jnp.int32))
    with pytest.raises(ValueError, match="k must be"):
        jacobian_spectrum(lambda x: x, jnp.ones(5), method="lanczos", k=5)
