"""certify: float64 local invertibility certificates against NumPy float64 SVDs of explicit
matrices, on a float32 network, matrix-free against dense, and bad input. Wide maps, partial
Lanczos bounds and Certificate.split: test_certify_wide.py, test_certify_partial.py,
test_certify_split.py."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inversion.analysis import PRECISIONS, RTOL_8BIT, certify, certify_batch, nullities, summarize

EPS64 = np.finfo(np.float64).eps
EPS32 = np.finfo(np.float32).eps


def _matrix(rng, m, n, singular_values):
    """``U diag(s) V^T`` with Haar-random orthonormal ``U`` (m x r), ``V`` (n x r)."""
    r = len(singular_values)
    u, _ = np.linalg.qr(rng.normal(size=(m, r)))
    v, _ = np.linalg.qr(rng.normal(size=(n, r)))
    return (u * singular_values) @ v.T


def _linear(a):
    """``x -> a x`` with ``a`` kept in NumPy float64: certify traces it under x64."""
    return lambda x: jnp.asarray(a) @ x


@pytest.mark.parametrize("m,n", [(30, 20), (20, 20), (12, 20)])
def test_dense_certificate_matches_numpy_svd(m, n):
    rng = np.random.default_rng(m + n)
    r = min(m, n)
    s = np.geomspace(1.0, 1e-9, r)
    s[-2:] = 0.0  # two exact zeros: exact nullity >= 2 (+ n - m for a wide matrix)
    a = _matrix(rng, m, n, s)
    cert = certify(_linear(a), np.ones(n, np.float32), vectors=True)
    ref = np.linalg.svd(a, compute_uv=False)
    # the SVD of a's float64 copy: both are LAPACK float64 SVDs of the same matrix
    np.testing.assert_allclose(cert.singular_values, ref, rtol=0, atol=1e-14)
    assert cert.nullity == n - np.linalg.matrix_rank(a)  # numpy's max(m, n) eps sigma_1 rule
    assert cert.effective_nullity == int(np.sum(ref <= max(m, n) * EPS32 * ref[0])) + max(n - m, 0)
    assert cert.nullity_at(RTOL_8BIT) == int(np.sum(ref <= ref[0] / 255)) + max(n - m, 0)
    assert cert.sigma_max == pytest.approx(ref[0], rel=1e-12)
    if m >= n:
        assert cert.sigma_min == pytest.approx(ref[-1], abs=1e-15)
    else:
        assert cert.sigma_min == 0.0 and cert.condition_number == np.inf
    # the null-space basis is orthonormal and a maps it below the effective tolerance
    basis = cert.null_space
    assert basis.shape == (n, cert.effective_nullity)
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-12)
    assert np.linalg.norm(a @ basis, 2) <= cert.rtol * cert.sigma_max * (1 + 1e-9)
    assert cert.complete and cert.method == "dense" and cert.jacobian_dtype == "float64"


def test_condition_number_and_input_error_bound_are_exact_for_a_linear_map():
    rng = np.random.default_rng(0)
    a = _matrix(rng, 15, 10, np.geomspace(3.0, 0.01, 10))
    cert = certify(_linear(a), np.zeros(10, np.float32))
    assert cert.nullity == 0 and cert.effective_nullity == 0
    assert cert.condition_number == pytest.approx(300.0, rel=1e-10)
    for _ in range(20):  # ||dx|| <= ||a dx|| / sigma_min for every dx (linear map)
        dx = rng.normal(size=10)
        assert np.linalg.norm(dx) <= cert.input_error_bound(np.linalg.norm(a @ dx)) * (1 + 1e-12)
    dx = np.linalg.svd(a)[2][-1]  # the worst direction attains the bound
    assert cert.input_error_bound(np.linalg.norm(a @ dx)) == pytest.approx(1.0, rel=1e-10)
    np.testing.assert_allclose(cert.input_error_bound([0.0, 0.01]), [0.0, 1.0], rtol=1e-10)


def test_jacobian_of_a_float32_network_is_taken_in_float64():
    """Weights stored in float32; the certificate differentiates them in float64, so its
    singular values match the float64 SVD of the float32 weights cast up, far below float32
    rounding, and a direction that float32 cannot resolve is counted as effective only."""
    rng = np.random.default_rng(1)
    s = np.array([1.0, 0.5, 0.1, 1e-8, 1e-9])
    # float32 rounding moves each sigma_i by <= ||dW||_F <= eps32/2 ||W||_F ~ 7e-8, so the two
    # small ones stay below the float32 threshold 8 eps_32 = 9.5e-7 and far above 8 eps_64
    w32 = jnp.asarray(_matrix(rng, 8, 5, s), jnp.float32)

    def net(x):
        return jnp.tanh(w32 @ x)

    x = np.full(5, 0.01, np.float32)
    cert = certify(net, x)
    w64 = np.asarray(w32, np.float64)
    jac = (1 - np.tanh(w64 @ x.astype(np.float64)) ** 2)[:, None] * w64
    ref = np.linalg.svd(jac, compute_uv=False)
    # float64 evaluation of the same float32 weights: agreement to float64 rounding of the
    # product (|J| <= 1, 5 terms): 1e-15 absolute; a float32 Jacobian would miss by ~1e-7
    np.testing.assert_allclose(cert.singular_values, ref, rtol=0, atol=1e-15)
    assert cert.jacobian_dtype == "float64" and cert.dtype == "float32"
    assert ref[-1] < 9.5e-7 * ref[0] and ref[-2] < 9.5e-7 * ref[0]
    assert cert.nullity == 0  # full rank in float64
    assert cert.effective_nullity == 2  # but two directions below float32 rounding
    assert cert.nullity_at(1e-5) == 2 and cert.nullity_at(0.2) == 3


def test_fn_that_casts_to_float32_is_flagged():
    a = jnp.asarray(np.eye(3), jnp.float32)
    with pytest.warns(RuntimeWarning, match="float32"):
        cert = certify(lambda x: a @ x.astype(jnp.float32), np.ones(3, np.float32))
    assert cert.jacobian_dtype == "float32"


def test_lanczos_complete_equals_dense_and_partial_gives_bounds():
    rng = np.random.default_rng(2)
    w1 = jnp.asarray(rng.normal(size=(40, 24)) / 5, jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(30, 40)) / 6, jnp.float32)

    def mlp(x):
        return w2 @ jnp.tanh(w1 @ x) + 0.01 * x.sum()

    x = rng.normal(size=24).astype(np.float32)
    dense = certify(mlp, x, method="dense")
    full = certify(mlp, x, method="lanczos", k=24)
    assert full.complete and full.method == "lanczos"
    # full reorthogonalised Golub-Kahan in float64 on a 30x24 map: exact to ~1e-12
    np.testing.assert_allclose(full.singular_values, dense.singular_values, rtol=1e-9, atol=1e-12)
    assert full.nullity == dense.nullity and full.effective_nullity == dense.effective_nullity
    part = certify(mlp, x, method="lanczos", k=12, key=jax.random.key(3))
    s = dense.singular_values
    assert not part.complete
    # interlacing: the j-th smallest Ritz value is >= the j-th smallest singular value
    for j in range(1, 13):
        assert part.singular_values[-j] >= s[-j] * (1 - 1e-10)
    assert part.sigma_min is None and part.nullity is None  # unknown, not guessed
    assert part.sigma_min_upper >= dense.sigma_min * (1 - 1e-10)  # an upper bound on sigma_n
    assert part.nullity_lower_at(0.5) <= dense.nullity_at(0.5)  # a lower bound on the nullity
    for theta, res in zip(part.singular_values, part.residuals, strict=True):
        assert np.min(np.abs(s - theta)) <= res * (1 + 1e-8) + 1e-12  # residual bound holds


def test_seed_unet_certificate_matches_numpy_svd():
    """The seed U-Net (untrained, init key 0) on an 8x8 input: certify against NumPy's float64
    SVD of the Jacobian built independently (jax.jacfwd of the net with float64 parameters)."""
    import models

    apply_fn, params = models.split(models.seed_unet(0))
    x = np.random.default_rng(4).uniform(size=(8, 8, 1)).astype(np.float32)
    cert = certify(lambda z: apply_fn(params, z[None])[0], x)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        jac = jax.jacfwd(lambda z: apply_fn(p64, z[None])[0])(jnp.asarray(x, jnp.float64))
    ref = np.linalg.svd(np.asarray(jac).reshape(64, 64), compute_uv=False)
    assert cert.nullity == 64 - np.linalg.matrix_rank(np.asarray(jac).reshape(64, 64))
    assert cert.sigma_min == pytest.approx(ref[-1], rel=0.05)
    assert cert.condition_number == pytest.approx(ref[0] / ref[-1], rel=0.05)
    assert abs(cert.effective_nullity - int(np.sum(ref <= 64 * EPS32 * ref[0]))) <= 2
    np.testing.assert_allclose(cert.singular_values, ref, rtol=1e-9, atol=1e-12 * ref[0])


def test_certify_batch_equals_certify_per_row():
    a = jnp.asarray(np.random.default_rng(5).normal(size=(6, 4)), jnp.float32)

    def fn(x):
        return jnp.maximum(a @ x, 0.0)

    xs = np.random.default_rng(6).normal(size=(3, 4)).astype(np.float32)
    for cert, x in zip(certify_batch(fn, xs), xs, strict=True):
        one = certify(fn, x)
        np.testing.assert_array_equal(cert.singular_values, one.singular_values)
        assert cert.nullity == one.nullity


def test_bad_input_is_refused_before_any_work():
    def fn(x):
        return 2 * x

    with pytest.raises(TypeError, match="fn must be callable"):
        certify(3, np.ones(2))
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        certify(fn, np.ones(2, np.int32))
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        certify(fn, "abc")
    with pytest.raises(ValueError, match="x must be finite"):
        certify(fn, np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="x must be non-empty"):
        certify(fn, np.ones(0))
    with pytest.raises(ValueError, match="rtol must be"):
        certify(fn, np.ones(2), rtol=-1.0)
    with pytest.raises(ValueError, match="method must be one of"):
        certify(fn, np.ones(2), method="arpack")
    with pytest.raises(ValueError, match="k must be"):
        certify(fn, np.ones(2), method="lanczos", k=0)
    with pytest.raises(ValueError, match="Jacobian of fn at x is not finite"):
        certify(lambda x: jnp.sqrt(x), np.zeros(2))
    with pytest.raises(ValueError, match=r"k must be <= min\(m, n\) = 1"):
        certify(lambda x: x[:1], np.ones(3), method="lanczos", k=2)
    with pytest.raises(ValueError, match="block must be"):
        certify(fn, np.ones(2), block=0)
    with pytest.raises(ValueError, match="dense_limit must be"):
        certify(fn, np.ones(2), dense_limit=0)
    with pytest.raises(TypeError, match="vectors must be True or False"):
        certify(fn, np.ones(2), vectors="yes")
    with pytest.raises(ValueError, match="xs must hold at least one input"):
        certify_batch(fn, np.ones((0, 2)))
    cert = certify(fn, np.ones(2))
    with pytest.raises(ValueError, match="residual_norm"):
        cert.input_error_bound(-1.0)


def test_dict_outputs_give_one_certificate_per_entry_from_one_jacobian():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(9, 5))

    def layers(x):
        return {"wide": jnp.asarray(a) @ x, "tall": jnp.tanh(jnp.asarray(b) @ x)}

    x = rng.normal(size=5).astype(np.float32)
    both = certify(layers, x)
    assert list(both) == ["wide", "tall"]
    for name in both:
        one = certify(lambda z, name=name: layers(z)[name], x)
        # same float64 Jacobian entries (forward mode either way): equal to rounding
        np.testing.assert_allclose(both[name].singular_values, one.singular_values, rtol=1e-14)
        assert both[name].nullity == one.nullity and both[name].rtol == one.rtol
    assert both["wide"].nullity == 2 and both["wide"].sigma_min == 0.0  # 5 inputs, 3 outputs


def test_nullities_and_summary_at_three_precisions():
    s = np.array([1.0, 1e-2, 1e-5, 1e-10, 0.0])  # 8-bit loses 3, float32 (5 eps) 2, exact 1
    a = _matrix(np.random.default_rng(8), 5, 5, s)
    b = _matrix(np.random.default_rng(9), 5, 5, np.ones(5))
    certs = [certify(_linear(a), np.ones(5, np.float32)), certify(_linear(b), np.ones(5))]
    assert nullities(certs[0]) == {"exact": 1, "float32": 2, "8-bit": 3}
    summary = summarize(certs)
    assert set(PRECISIONS) <= set(summary)
    assert summary["exact"] == {"nullity_per_input": [1, 0], "max_nullity": 1, "lossy_inputs": 1}
    assert summary["8-bit"]["nullity_per_input"] == [3, 0]
    assert summary["condition_number_range"][0] == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(TypeError, match="certs must be"):
        summarize([])


def test_fn_refusing_float64_falls_back_to_its_own_dtype_with_a_warning():
    kernel = jnp.asarray(np.random.default_rng(10).normal(size=(3, 3, 1, 2)), jnp.float32)

    def conv(x):  # lax needs equal dtypes: a float64 x with a float32 kernel is a TypeError
        return jax.lax.conv_general_dilated(
            x[None], kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )[0]

    x = np.random.default_rng(11).normal(size=(4, 4, 1)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="does not accept a float64 input"):
        cert = certify(conv, x)
    assert cert.jacobian_dtype == "float32" and cert.n_out == 32 and cert.n_in == 16


def test_certificate_module_doctests():
    from inversion.analysis import certificate

    result = doctest.testmod(certificate)
    assert result.attempted >= 5 and result.failed == 0
