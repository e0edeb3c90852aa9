"""Pure-function layers on NHWC arrays.

Every function here is a plain ``jnp`` computation: jit-, vmap- and grad-safe, and written
so that the gradient with respect to the *input* (what inversion needs) is cheap on CPU as
well as on accelerators:

* k×k/k pooling is a reshape followed by a reduction (no ``reduce_window``, whose max
  gradient is a slow select-and-scatter on XLA:CPU);
* a k×k/k transposed convolution (kernel size equal to the stride, the U-Net case) is one
  matrix product followed by a depth-to-space reshape (no dilated convolution);
* a stride-1 'SAME' convolution with ONE input or ONE output channel (a network's first and
  last layer) is a matrix product with the kernel's taps plus shifted slices ("taps-major"
  im2col), instead of a generic convolution kernel that vectorises over channels and so runs
  at a few percent of its speed when one side has a single channel. On XLA:CPU this took the
  seed U-Net's first and last layers (forward and input-gradient, 32 images, one core) from
  6.9 and 8.0 ms with ``lax`` to 3.0 and 5.4 ms (``python -m benchmarks.layer_costs``,
  BENCHMARKS.md); results equal ``lax.conv_general_dilated`` up to float32 rounding
  (tests/models/test_layers.py).

Conventions: images are ``(batch, height, width, channels)``; kernels are HWIO
``(kh, kw, c_in, c_out)``. ``conv_transpose2d`` follows ``jax.lax.conv_transpose`` with
``transpose_kernel=False`` (the Flax ``ConvTranspose`` convention).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _check_image(x, name: str = "x") -> None:
    if getattr(x, "ndim", None) != 4:
        raise ValueError(
            f"{name} must be an NHWC array of rank 4, got shape {getattr(x, 'shape', None)}"
        )


def _check_kernel(x, kernel, *, in_axis: int = 2) -> None:
    _check_image(x)
    if getattr(kernel, "ndim", None) != 4:
        raise ValueError(
            f"kernel must be HWIO of rank 4, got shape {getattr(kernel, 'shape', None)}"
        )
    if kernel.shape[in_axis] != x.shape[-1]:
        raise ValueError(
            f"kernel expects {kernel.shape[in_axis]} input channels (kernel shape "
            f"{kernel.shape}), but x has {x.shape[-1]} channels (x shape {x.shape})"
        )


def _check_stride(stride) -> int:
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    return int(stride)


def _check_window(x, window: int) -> None:
    _check_image(x)
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    h, w = x.shape[1:3]
    if h % window or w % window:
        raise ValueError(f"spatial size {h}×{w} is not divisible by the pooling window {window}")


def _promote(x, kernel):
    """Both operands in their promoted dtype (``jnp.result_type``), as the ``jnp`` paths do:
    a float64 input to float32 weights is computed in float64 (``analysis.certify``), a
    bfloat16 input to float32 weights in float32; ``lax`` convolutions need equal dtypes."""
    dtype = jnp.result_type(x, kernel)
    return x.astype(dtype), kernel.astype(dtype)


def conv2d(
    x: Float[Array, "b h w ci"],
    kernel: Float[Array, "kh kw ci co"],
    bias: Float[Array, " co"] | None = None,
    *,
    stride: int = 1,
    padding: str = "SAME",
) -> Float[Array, "b ho wo co"]:
    """2-D cross-correlation: y[b,i,j,o] = Σ_{a,c,ci} x[b, s·i+a, s·j+c, ci] · K[a,c,ci,o] + bias[o].

    ``padding='SAME'`` zero-pads so that ``ho = ceil(h / s)``; ``'VALID'`` does not pad.
    """
    _check_kernel(x, kernel)
    stride = _check_stride(stride)
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    kh, kw, ci, co = kernel.shape
    if stride == 1 and padding == "SAME" and kh % 2 and kw % 2 and (ci == 1 or co == 1):
        y = _conv_one_channel(x, kernel)
    else:
        x, kernel = _promote(x, kernel)
        y = jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), padding, dimension_numbers=_DIMENSIONS
        )
    return y if bias is None else y + bias


def _taps(x: Float[Array, "... h w"], kh: int, kw: int) -> Float[Array, "t ... h w"]:
    """Shifted copies of ``x``, taps first: ``out[a·kw+e, ..., i, j] = x[..., i+a−p, j+e−q]``
    (zero outside), with ``p = kh // 2``, ``q = kw // 2`` (the 'SAME' neighbourhood)."""
    h, w = x.shape[-2:]
    p, q = kh // 2, kw // 2
    xp = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(p, p), (q, q)])
    return jnp.stack([xp[..., a : a + h, e : e + w] for a in range(kh) for e in range(kw)])


def _sum_taps(z: Float[Array, "t ... h w"], kh: int, kw: int) -> Float[Array, "... h w"]:
    """``y[..., i, j] = Σ_{a,e} z[a·kw+e, ..., i+a−p, j+e−q]`` (zero outside)."""
    h, w = z.shape[-2:]
    p, q = kh // 2, kw // 2
    zp = jnp.pad(z, [(0, 0)] * (z.ndim - 2) + [(p, p), (q, q)])
    return sum(zp[a * kw + e, ..., a : a + h, e : e + w] for a in range(kh) for e in range(kw))


def _conv_one_channel(x, kernel):
    """Stride-1 'SAME' cross-correlation when ``ci == 1`` or ``co == 1`` (odd kernel sizes).

    With taps ``t = (a, e)`` and ``T_t x = x[i+a−p, j+e−q]``:

    * ``ci == 1``: ``y[..., o] = Σ_t (T_t x) · K[t, o]``: the taps of ``x`` (im2col with the tap
      axis first) times the ``(taps, co)`` kernel matrix;
    * ``co == 1``: ``y = Σ_t T_t (x · K[t, :])``: one product of ``x`` with the ``(ci, taps)``
      kernel matrix giving a plane per tap, then the shifted planes summed.

    The tap axis is kept first so that each tap's plane is contiguous (the slices and the
    small-width matrix products stay fast); autodiff of either form is the other form.
    """
    kh, kw, ci, co = kernel.shape
    if ci == 1:
        taps = _taps(x[..., 0], kh, kw)  # (t, b, h, w)
        return jnp.einsum("tbhw,to->bhwo", taps, kernel.reshape(kh * kw, co))
    planes = jnp.einsum("bhwc,tc->tbhw", x, kernel[..., 0].reshape(kh * kw, ci))
    return _sum_taps(planes, kh, kw)[..., None]


def conv_transpose2d(
    x: Float[Array, "b h w ci"],
    kernel: Float[Array, "kh kw ci co"],
    bias: Float[Array, " co"] | None = None,
    *,
    stride: int = 2,
) -> Float[Array, "b sh sw co"]:
    """Transposed convolution that upsamples by ``stride``: output ``(b, s·h, s·w, co)``.

    Equal to ``lax.conv_transpose(x, K, (s, s), padding, transpose_kernel=False)``: the
    input is dilated by s and cross-correlated with K. When the kernel size equals the
    stride (the U-Net's 2×2/2 up-convolution) the windows do not overlap and

        y[b, s·i+a, s·j+c, o] = Σ_ci x[b,i,j,ci] · K[s−1−a, s−1−c, ci, o] + bias[o],

    computed as one matrix product and a depth-to-space reshape. Other kernel sizes use
    ``'SAME'`` padding through ``lax.conv_transpose``.
    """
    _check_kernel(x, kernel)
    stride = _check_stride(stride)
    kh, kw = kernel.shape[:2]
    if (kh, kw) == (stride, stride):
        b, h, w, ci = x.shape
        co = kernel.shape[-1]
        # (b·h·w, ci) @ (ci, s·s·co): the one product is a plain row-major matmul, and the
        # depth-to-space transpose is the only data movement (an einsum straight into the
        # interleaved layout made XLA:CPU transpose operands around the product instead).
        flipped = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(ci, kh * kw * co)
        y = (x.reshape(b * h * w, ci) @ flipped).reshape(b, h, w, kh, kw, co)
        y = y.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * stride, w * stride, co)
    else:
        x, kernel = _promote(x, kernel)
        y = jax.lax.conv_transpose(
            x, kernel, (stride, stride), "SAME", dimension_numbers=_DIMENSIONS
        )
    return y if bias is None else y + bias


def _windows(x, window: int):
    b, h, w, c = x.shape
    return x.reshape(b, h // window, window, w // window, window, c)


def max_pool2d(x: Float[Array, "b h w c"], window: int = 2) -> Float[Array, "b hk wk c"]:
    """Non-overlapping k×k/k max pooling: y[b,i,j,c] = max_{a,e<k} x[b, k·i+a, k·j+e, c].

    The input-gradient is routed to the window's maximum (shared equally among exact ties,
    where ``reduce_window`` would pick one).
    """
    _check_window(x, window)
    return _windows(x, window).max(axis=(2, 4))


def avg_pool2d(x: Float[Array, "b h w c"], window: int = 2) -> Float[Array, "b hk wk c"]:
    """Non-overlapping k×k/k average pooling: y = (1/k²) Σ_{a,e<k} x[b, k·i+a, k·j+e, c]."""
    _check_window(x, window)
    return _windows(x, window).mean(axis=(2, 4))


def relu(x: Array) -> Array:
    """ReLU: max(x, 0). Not injective: every x ≤ 0 maps to 0."""
    return jax.nn.relu(x)


def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    """Leaky ReLU: x for x ≥ 0, a·x otherwise. Invertible for a > 0: x = y if y ≥ 0 else y/a."""
    return jnp.where(x >= 0, x, negative_slope * x)


def sigmoid(x: Array) -> Array:
    """Logistic sigmoid 1 / (1 + e^{−x}); its inverse on (0, 1) is logit(y) = log(y/(1−y))."""
    return jax.nn.sigmoid(x)


def tanh(x: Array) -> Array:
    """Hyperbolic tangent; its inverse on (−1, 1) is artanh."""
    return jnp.tanh(x)


def upsample_bilinear(x: Float[Array, "b h w c"], factor: int = 2) -> Float[Array, "b fh fw c"]:
    """Bilinear upsampling by an integer factor (half-pixel centres, edge-clamped).

    Linear in x: y = (A_h ⊗ A_w) x with fixed interpolation matrices, so it has full
    column rank and a linear left inverse.
    """
    _check_image(x)
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, h * factor, w * factor, c), method="bilinear")


def concat_skip(x: Float[Array, "b h w c1"], skip: Float[Array, "b h w c2"]) -> Array:
    """U-Net skip connection: concatenate ``x`` and ``skip`` along channels (lossless)."""
    _check_image(x)
    _check_image(skip, "skip")
    if x.shape[:3] != skip.shape[:3]:
        raise ValueError(
            f"skip connection needs equal batch and spatial sizes, got x {x.shape} "
            f"and skip {skip.shape}"
        )
    return jnp.concatenate([x, skip], axis=-1)


ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "sigmoid": sigmoid,
    "tanh": tanh,
}


def activation(name: str):
    """The activation function called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
