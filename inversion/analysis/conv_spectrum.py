"""Singular values and pseudo-inverse of a multi-channel 2-D convolution, via the FFT.

Operator (circular padding, the cross-correlation that ``lax.conv_general_dilated``
computes, centred like ``padding='SAME'``): for a kernel ``K`` of shape ``(kh, kw, cin, cout)``
(HWIO) and ``x`` of shape ``(n1, n2, cin)``,

    y[p, o] = sum_{a, i} K[a, i, o] x[(p + a - c) mod n, i],    c = ((kh - 1)//2, (kw - 1)//2).

Taking the 2-D DFT of both sides, every frequency ``f`` decouples:
``y^(f) = T(f) x^(f)`` with the ``cout x cin`` transfer matrix

    T(f)[o, i] = sum_a K[a, i, o] exp(+2 pi i f.(a - c) / n) = n1 n2 · ifft2(K~)[f, i, o],

``K~`` being ``K`` wrapped onto the ``n1 x n2`` torus at offsets ``a - c``. The DFT is unitary up
to ``sqrt(n1 n2)`` on both sides, so the singular values of the whole
``(n1 n2 cout) x (n1 n2 cin)`` operator are the union over ``f`` of those of ``T(f)``
(Sedghi, Gupta & Long, *The singular values of convolutional layers*, ICLR 2019).
Convolution versus correlation and the centring offset ``c`` change ``T(f)`` only by complex
conjugation and unit-modulus phases, so the singular values do not depend on them.

The pseudo-inverse is also per frequency: ``x^(f) = pinv(T(f)) y^(f)``.
Zero padding or strides break the circulant structure; for those use
:func:`conv_singular_values_dense` (dense Jacobian, small inputs only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from inversion.analysis.jacobian import jacobian_spectrum


def _check_kernel(kernel, input_hw):
    kernel = np.asarray(kernel)
    if kernel.ndim != 4 or 0 in kernel.shape:
        raise ValueError(f"kernel must be HWIO (kh, kw, cin, cout), got shape {kernel.shape}")
    if not np.all(np.isfinite(kernel)):
        raise ValueError("kernel must be finite, got non-finite entries")
    hw = tuple(int(v) for v in input_hw)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"input_hw must be two positive sizes (n1, n2), got {input_hw!r}")
    return kernel, hw


def conv_transfer_matrices(
    kernel: Float[np.ndarray, "kh kw cin cout"], input_hw: tuple[int, int]
) -> Complex[np.ndarray, "n1 n2 cout cin"]:
    """``T(f)`` for every frequency ``f`` of an ``n1 x n2`` input (complex128)."""
    kernel, (n1, n2) = _check_kernel(kernel, input_hw)
    kh, kw, cin, cout = kernel.shape
    wrapped = np.zeros((n1, n2, cin, cout), dtype=np.float64)
    rows = (np.arange(kh) - (kh - 1) // 2) % n1
    cols = (np.arange(kw) - (kw - 1) // 2) % n2
    np.add.at(wrapped, (rows[:, None], cols[None, :]), kernel.astype(np.float64))
    transfer = n1 * n2 * np.fft.ifft2(wrapped, axes=(0, 1))
    return np.transpose(transfer, (0, 1, 3, 2))


def conv_singular_values(
    kernel: Float[np.ndarray, "kh kw cin cout"], input_hw: tuple[int, int]
) -> Float[np.ndarray, " r"]:
    """All ``n1 n2 min(cin, cout)`` singular values of the circular convolution, descending."""
    s = np.linalg.svd(conv_transfer_matrices(kernel, input_hw), compute_uv=False)
    return np.sort(s.ravel())[::-1]


class ConvSpectrum(NamedTuple):
    """Summary of a convolution's singular values as a map from ``n_in`` to ``n_out`` reals."""

    singular_values: Float[np.ndarray, " r"]
    operator_norm: float  # sigma_max: Lipschitz constant of the layer
    sigma_min: float  # smallest of the min(n_in, n_out) values (0 when n_out < n_in)
    condition_number: float  # sigma_max / sigma_min, inf when sigma_min == 0
    n_near_zero: int  # values <= tol
    rank: int
    nullity: int  # n_in - rank: input directions the layer cannot see
    n_in: int
    n_out: int
    tol: float


def conv_spectrum(
    kernel: Float[np.ndarray, "kh kw cin cout"],
    input_hw: tuple[int, int],
    *,
    tol: float | None = None,
) -> ConvSpectrum:
    """Operator norm, ``sigma_min``, condition number and near-zero count of a circular conv.

    ``tol`` defaults to ``max(n_in, n_out) * eps(float32) * sigma_max``, the resolution of a
    float32 layer.
    """
    kernel, (n1, n2) = _check_kernel(kernel, input_hw)
    cin, cout = kernel.shape[2:]
    s = conv_singular_values(kernel, (n1, n2))
    n_in, n_out = n1 * n2 * cin, n1 * n2 * cout
    top = float(s[0])
    tol = max(n_in, n_out) * float(np.finfo(np.float32).eps) * top if tol is None else float(tol)
    rank = int(np.sum(s > tol))
    smin = float(s[-1]) if n_out >= n_in else 0.0
    return ConvSpectrum(
        singular_values=s,
        operator_norm=top,
        sigma_min=smin,
        condition_number=top / smin if smin > tol else float("inf"),
        n_near_zero=int(np.sum(s <= tol)),
        rank=rank,
        nullity=n_in - rank,
        n_in=n_in,
        n_out=n_out,
        tol=tol,
    )


def _check_x(x, kernel, channels, name):
    x = jnp.asarray(x)
    if x.ndim != 4 or x.shape[-1] != channels:
        raise ValueError(
            f"{name} must be NHWC with {channels} channels for kernel "
            f"{tuple(kernel.shape)}, got shape {x.shape}"
        )
    return x


def circular_conv2d(
    x: Float[Array, "b h w cin"], kernel: Float[Array, "kh kw cin cout"]
) -> Float[Array, "b h w cout"]:
    """The circular convolution of the module docstring, applied by FFT (any batch size)."""
    kernel_np, _ = _check_kernel(kernel, (1, 1))
    x = _check_x(x, kernel_np, kernel_np.shape[2], "x")
    T = jnp.asarray(conv_transfer_matrices(kernel_np, x.shape[1:3]).astype(np.complex64))
    return _apply_per_frequency(T, x)


@jax.jit
def _apply_per_frequency(T, x):
    """ifft2(T(f) fft2(x)(f)) for T of shape (h, w, out, in) and x of shape (b, h, w, in)."""
    xf = jnp.fft.fft2(x, axes=(1, 2))
    yf = jnp.einsum("hwoi,bhwi->bhwo", T, xf)
    return jnp.real(jnp.fft.ifft2(yf, axes=(1, 2))).astype(x.dtype)


def circular_conv2d_pinv(
    y: Float[Array, "b h w cout"], kernel: Float[Array, "kh kw cin cout"], *, rcond: float = 1e-6
) -> Float[Array, "b h w cin"]:
    """Moore-Penrose pseudo-inverse of :func:`circular_conv2d` applied to ``y``.

    Per frequency ``x^(f) = pinv(T(f)) y^(f)``, singular values below ``rcond * sigma_max(T(f))``
    treated as zero. For an injective layer this is its exact left inverse; otherwise it
    returns the minimum-norm input, i.e. the true input with its null-space part removed.
    """
    kernel_np, _ = _check_kernel(kernel, (1, 1))
    y = _check_x(y, kernel_np, kernel_np.shape[3], "y")
    T = conv_transfer_matrices(kernel_np, y.shape[1:3])
    P = jnp.asarray(np.linalg.pinv(T, rcond=rcond).astype(np.complex64))
    return _apply_per_frequency(P, y)


def conv_singular_values_dense(
    conv_fn: Callable[[Array], Array], input_shape: tuple[int, ...]
) -> Float[np.ndarray, " r"]:
    """Singular values of a linear ``conv_fn`` (any padding or stride) from its dense Jacobian.

    ``input_shape`` is the full NHWC shape (batch 1); small inputs only (the Jacobian is
    ``n_out x n_in``). The map must be linear (no bias), so the point does not matter.
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 0 or min(shape) < 1:
        raise ValueError(f"input_shape must be positive sizes, got {input_shape!r}")
    return jacobian_spectrum(conv_fn, jnp.zeros(shape, jnp.float32), method="dense").singular_values
