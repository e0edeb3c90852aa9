"""Convolution spectra via the FFT against dense Jacobians, and the per-frequency pseudo-inverse."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inversion.analysis.conv_spectrum import (
    circular_conv2d,
    circular_conv2d_pinv,
    conv_singular_values,
    conv_singular_values_dense,
    conv_spectrum,
)


def _wrap_conv(x, kernel):
    """Independent circular convolution: wrap padding then a VALID lax convolution (in x's
    dtype, so the dense Jacobian below is taken in float64)."""
    kh, kw = kernel.shape[:2]
    lo_h, lo_w = (kh - 1) // 2, (kw - 1) // 2
    xp = jnp.pad(x, ((0, 0), (lo_h, kh - 1 - lo_h), (lo_w, kw - 1 - lo_w), (0, 0)), mode="wrap")
    return jax.lax.conv_general_dilated(
        xp, kernel.astype(x.dtype), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _kernel(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


EPS32, EPS64 = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)


def _fft_error(kernel, hw, extra_terms=0):
    """Normwise bound on ||y - y_exact|| / ||x|| of the FFT route (complex64): fft2, a
    per-frequency product with T rounded to complex64 and ifft2, each FFT within
    5 log2(n) u of its output's norm (Higham, Accuracy and Stability, Thm 24.2), u = eps32/2."""
    k = np.asarray(kernel)
    smax = conv_singular_values(k, hw)[0]
    terms = 10 * np.log2(hw[0] * hw[1]) + max(k.shape[2:]) + 2 + extra_terms
    return terms * EPS32 / 2 * smax


CASES = [
    ((3, 3, 2, 3), (5, 5)),
    ((3, 3, 3, 2), (4, 6)),
    ((2, 2, 1, 4), (6, 6)),
    ((5, 3, 2, 2), (4, 5)),
]


@pytest.mark.parametrize("kshape,hw", CASES)
def test_fft_singular_values_match_dense_svd(kshape, hw):
    kernel = _kernel(sum(kshape), kshape)
    dense = conv_singular_values_dense(lambda v: _wrap_conv(v, kernel), (1, *hw, kshape[2]))
    fft = conv_singular_values(kernel, hw)
    assert fft.shape == dense.shape == (hw[0] * hw[1] * min(kshape[2:]),)
    # Both are float64 SVDs of the same operator built from the float32 kernel (the dense
    # Jacobian in float64; taps aliased onto one entry, 5 rows on 4, summed in float64):
    # |d sigma| <= 16 N eps64 sigma_max, N the matrix size
    n = hw[0] * hw[1] * max(kshape[2:])
    np.testing.assert_allclose(fft, dense, rtol=0, atol=16 * n * EPS64 * fft[0])


@pytest.mark.parametrize("kshape,hw", CASES)
def test_fft_convolution_matches_wrap_padding(kshape, hw):
    kernel = _kernel(1, kshape)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, *hw, kshape[2])), jnp.float32)
    diff = np.asarray(circular_conv2d(x, kernel), np.float64) - np.asarray(_wrap_conv(x, kernel))
    # per image, normwise: the FFT route (_fft_error ||x||) plus the direct convolution's
    # K-term sums (|dy| <= K u |K| * |x|, K = kh kw cin)
    taps = kshape[0] * kshape[1] * kshape[2]
    direct = taps * EPS32 / 2 * np.asarray(_wrap_conv(jnp.abs(x), jnp.abs(kernel)), np.float64)
    for b in range(2):
        bound = _fft_error(kernel, hw) * np.linalg.norm(x[b]) + np.linalg.norm(direct[b])
        assert np.linalg.norm(diff[b]) <= bound  # measured: 1-3 % of it


def test_pinv_inverts_an_injective_conv_and_projects_otherwise():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 6, 6, 2)), jnp.float32)

    # The forward and the pinv route each err by _fft_error ||input||; the pinv amplifies the
    # forward error by 1 / sigma_min, so ||x_rec - x|| <= 2 _fft_error cond ||x|| (normwise).
    def bound(kernel):
        s = conv_singular_values(kernel, (6, 6))
        s = s[s > s[0] * 1e-6]  # the pinv's rcond
        return 2 * _fft_error(kernel, (6, 6)) / s[-1] * np.linalg.norm(x)

    wide = _kernel(4, (3, 3, 2, 5))  # cout > cin: injective for a generic kernel
    rec = circular_conv2d_pinv(circular_conv2d(x, wide), wide)
    assert np.linalg.norm(np.asarray(rec, np.float64) - np.asarray(x)) <= bound(wide)
    narrow = _kernel(5, (3, 3, 2, 1))  # cout < cin: the pinv returns the row-space part
    rec = circular_conv2d_pinv(circular_conv2d(x, narrow), narrow)
    J = np.asarray(
        jax.jacfwd(lambda v: _wrap_conv(v.reshape(1, 6, 6, 2), narrow).ravel())(jnp.zeros(72)),
        np.float64,
    )  # exact: the kernel's entries
    expected = np.linalg.pinv(J) @ (J @ np.asarray(x, np.float64).ravel())
    assert np.linalg.norm(np.asarray(rec, np.float64).ravel() - expected) <= bound(narrow)


def test_spectrum_summary():
    kernel = _kernel(6, (3, 3, 2, 1))
    spec = conv_spectrum(kernel, (4, 4))
    assert (spec.n_in, spec.n_out, spec.singular_values.size) == (32, 16, 16)
    assert spec.sigma_min == 0.0 and spec.condition_number == float("inf")
    assert spec.nullity == 32 - spec.rank and spec.rank <= 16
    assert spec.operator_norm == spec.singular_values[0]  # the same float
    identity = np.zeros((3, 3, 2, 2), np.float32)
    identity[1, 1] = 2 * np.eye(2)
    spec = conv_spectrum(identity, (4, 4))
    # T(f) = 16 ifft2(delta) = 2 I exactly (dyadic); float64 SVD of 2 I: a few eps64
    np.testing.assert_allclose(spec.singular_values, 2.0, rtol=4 * EPS64, atol=0)
    assert spec.condition_number == pytest.approx(1.0, rel=8 * EPS64) and spec.nullity == 0
    zero = conv_spectrum(np.zeros((1, 1, 1, 1)), (2, 2), tol=0.0)
    assert zero.n_near_zero == 4 and zero.rank == 0


def test_bad_input_raises():
    with pytest.raises(ValueError, match="HWIO"):
        conv_singular_values(np.ones((3, 3, 2)), (4, 4))
    with pytest.raises(ValueError, match="input_hw"):
        conv_singular_values(np.ones((3, 3, 1, 1)), (4, 0))
    with pytest.raises(ValueError, match="channels"):
        circular_conv2d(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 2, 1)))
