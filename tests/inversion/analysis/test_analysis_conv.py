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
    """Independent circular convolution: wrap padding then a VALID lax convolution."""
    kh, kw = kernel.shape[:2]
    lo_h, lo_w = (kh - 1) // 2, (kw - 1) // 2
    xp = jnp.pad(x, ((0, 0), (lo_h, kh - 1 - lo_h), (lo_w, kw - 1 - lo_w), (0, 0)), mode="wrap")
    return jax.lax.conv_general_dilated(xp, kernel, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _kernel(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


CASES = [((3, 3, 2, 3), (5, 5)), ((3, 3, 3, 2), (4, 6)), ((2, 2, 1, 4), (6, 6)),
         ((5, 3, 2, 2), (4, 5))]


@pytest.mark.parametrize("kshape,hw", CASES)
def test_fft_singular_values_match_dense_svd(kshape, hw):
    kernel = _kernel(sum(kshape), kshape)
    dense = conv_singular_values_dense(lambda v: _wrap_conv(v, kernel), (1, *hw, kshape[2]))
    fft = conv_singular_values(kernel, hw)
    assert fft.shape == dense.shape == (hw[0] * hw[1] * min(kshape[2:]),)
    np.testing.assert_allclose(fft, dense, atol=1e-4)


@pytest.mark.parametrize("kshape,hw", CASES)
def test_fft_convolution_matches_wrap_padding(kshape, hw):
    kernel = _kernel(1, kshape)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, *hw, kshape[2])), jnp.float32)
    np.testing.assert_allclose(circular_conv2d(x, kernel), _wrap_conv(x, kernel), atol=1e-4)


def test_pinv_inverts_an_injective_conv_and_projects_otherwise():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 6, 6, 2)), jnp.float32)
    wide = _kernel(4, (3, 3, 2, 5))  # cout > cin: injective for a generic kernel
    np.testing.assert_allclose(circular_conv2d_pinv(circular_conv2d(x, wide), wide), x, atol=1e-4)
    narrow = _kernel(5, (3, 3, 2, 1))  # cout < cin: the pinv returns the row-space part
    rec = circular_conv2d_pinv(circular_conv2d(x, narrow), narrow)
    J = np.asarray(jax.jacfwd(lambda v: _wrap_conv(v.reshape(1, 6, 6, 2), narrow).ravel())(
        jnp.zeros(72)), np.float64)
    expected = np.linalg.pinv(J) @ (J @ np.asarray(x, np.float64).ravel())
    np.testing.assert_allclose(np.asarray(rec).ravel(), expected, atol=1e-4)


def test_spectrum_summary():
    kernel = _kernel(6, (3, 3, 2, 1))
    spec = conv_spectrum(kernel, (4, 4))
    assert (spec.n_in, spec.n_out, spec.singular_values.size) == (32, 16, 16)
    assert spec.sigma_min == 0.0 and spec.condition_number == float("inf")
    assert spec.nullity == 32 - spec.rank and spec.rank <= 16
    assert spec.operator_norm == pytest.approx(spec.singular_values[0])
    identity = np.zeros((3, 3, 2, 2), np.float32)
    identity[1, 1] = 2 * np.eye(2)
    spec = conv_spectrum(identity, (4, 4))
    np.testing.assert_allclose(spec.singular_values, 2.0, atol=1e-12)
    assert spec.condition_number == pytest.approx(1.0) and spec.nullity == 0
    zero = conv_spectrum(np.zeros((1, 1, 1, 1)), (2, 2), tol=0.0)
    assert zero.n_near_zero == 4 and zero.rank == 0


def test_bad_input_raises():
    with pytest.raises(ValueError, match="HWIO"):
        conv_singular_values(np.ones((3, 3, 2)), (4, 4))
    with pytest.raises(ValueError, match="input_hw"):
        conv_singular_values(np.ones((3, 3, 1, 1)), (4, 0))
    with pytest.raises(ValueError, match="channels"):
        circular_conv2d(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 2, 1)))
