"""Convolutions: singular values through the FFT, and why a transposed conv is not an inverse.

Command:  python -m experiments.conv_spectrum [--out results] [--quick | --full] [--set k=v ...]
Runtime (2-core CPU): default 22.4 s (measured: ``make reproduce`` on a fresh clone, default
profile, 2-core CPU; the expected results below are from the same run); --quick and --full: not
re-measured.

Expected result (default: 10x10 spectra, 32x32 camera image):
* the singular values of a multi-channel circular convolution computed per frequency from the
  FFT of the kernel (Sedghi, Gupta & Long 2019) equal those of the dense Jacobian to 4.3e-14
  (largest difference over the four kernels; reference bound 1e-4); zero padding (no longer
  circulant) lowers the spectrum, most at its small end (3x3 conv 1->16: operator norm 6.72
  against 6.79 circular), a boundary effect that shrinks as the image grows (not measured
  here: one size per run);
* a transposed convolution with the same kernel is the adjoint A^T, not the inverse: even after
  the best scalar rescale, A^T A x misses x by 4.4 % (3x3 conv 1->16, circular: 16 random
  filters form a nearly tight frame), 14 % (the same kernel, zero padding) and 78 % (the
  U-Net's 2x2/2 conv + up-conv), because A^T A is a filter, the identity only for tight-frame
  kernels; the pseudo-inverse (per-frequency pinv, or a dense pinv for zero padding /
  stride 2) recovers x to float32 round-off when the layer is injective (c_out >= c_in and no
  zero frequency): relative error 1.6e-7 circular, 9.7e-9 zero padding, 7.9e-8 stride 2.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import cli, experiment_dir, reference, save_figure, write_metrics
from experiments.config import ExperimentConfig, select_profile
from inversion.analysis.conv_spectrum import (
    circular_conv2d,
    circular_conv2d_pinv,
    conv_singular_values,
    conv_singular_values_dense,
    conv_spectrum,
)
from inversion.analysis.jacobian import dense_jacobian
from models.layers import conv2d, conv_transpose2d

NAME = "conv_spectrum"
KERNELS = [(3, 3, 1, 16), (3, 3, 16, 8), (3, 3, 4, 4), (2, 2, 3, 5)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """Defaults: the ``default`` profile."""

    n: int = 10  # side of the n x n grid of the FFT-vs-dense spectra (dense SVDs: (n^2 c)^2)
    image_size: int = 32  # side of the camera image of the inverse comparison


def get_config(profile: str = "default") -> Config:
    """``'quick'``: 6x6 spectra, 16x16 image; ``'default'``: 10, 32; ``'full'``: 16, 32."""
    return select_profile(
        profile,
        quick=Config(n=6, image_size=16),
        default=Config(),
        full=Config(n=16, image_size=32),
    )


def _he(seed, shape):
    """He-normal HWIO kernel: std sqrt(2 / (kh kw cin)), float32."""
    fan_in = shape[0] * shape[1] * shape[2]
    w = np.random.default_rng(seed).normal(size=shape) * np.sqrt(2.0 / fan_in)
    return jnp.asarray(w, jnp.float32)


def _wrap_conv(x, kernel):
    """Circular convolution by wrap padding + VALID lax convolution (the dense reference)."""
    kh, kw = kernel.shape[:2]
    lo_h, lo_w = (kh - 1) // 2, (kw - 1) // 2
    xp = jnp.pad(x, ((0, 0), (lo_h, kh - 1 - lo_h), (lo_w, kw - 1 - lo_w), (0, 0)), mode="wrap")
    return conv2d(xp, kernel, padding="VALID")


def _image(size):
    from skimage.data import camera

    im = camera().astype(np.float32) / 255.0
    f = im.shape[0] // size
    return im[: size * f, : size * f].reshape(size, f, size, f).mean(axis=(1, 3))[None, ..., None]


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _scaled_error(rec, x):
    """Relative error after the best scalar rescale alpha = <rec, x> / <rec, rec>."""
    rec, x = np.asarray(rec, np.float64), np.asarray(x, np.float64)
    alpha = float(np.vdot(rec, x) / np.vdot(rec, rec))
    return _rel(alpha * rec, x), alpha


def _inverse_errors(x, kernel):
    """Adjoint (transposed conv) versus pseudo-inverse, for circular, zero-padded, stride 2."""
    out = {}
    # circular padding: adjoint by autodiff transpose, pinv per frequency
    y = circular_conv2d(x, kernel)
    adj = jax.linear_transpose(lambda v: circular_conv2d(v, kernel), x)(y)[0]
    err, alpha = _scaled_error(adj, x)
    pinv = circular_conv2d_pinv(y, kernel)
    out["circular"] = {"transposed_rescaled": err, "alpha": alpha, "pinv": _rel(pinv, x)}
    images = {
        "circular: transposed conv (rescaled)": alpha * np.asarray(adj),
        "circular: pseudo-inverse": pinv,
    }
    # zero padding ('SAME'): the dense Jacobian's pseudo-inverse
    same = lambda v: conv2d(v, kernel)  # noqa: E731
    J = dense_jacobian(same, x)
    y = same(x)
    adj = jax.linear_transpose(same, x)(y)[0]
    err, alpha = _scaled_error(adj, x)
    x_pinv = np.linalg.pinv(J) @ np.asarray(y, np.float64).ravel()
    out["zero_padding"] = {
        "transposed_rescaled": err,
        "alpha": alpha,
        "pinv": _rel(x_pinv.reshape(x.shape).astype(np.float32), x),
    }
    # the U-Net case: 2x2/2 conv down, 2x2/2 transposed conv (models.layers) up, same kernel
    k2 = _he(7, (2, 2, x.shape[-1], 4 * x.shape[-1]))
    down = lambda v: conv2d(v, k2, stride=2, padding="VALID")  # noqa: E731
    y = down(x)
    up = conv_transpose2d(y, jnp.asarray(np.swapaxes(np.asarray(k2)[::-1, ::-1], 2, 3)), stride=2)
    adj = jax.linear_transpose(down, x)(y)[0]
    err, alpha = _scaled_error(up, x)
    x_pinv = np.linalg.pinv(dense_jacobian(down, x)) @ np.asarray(y, np.float64).ravel()
    out["stride2_unet"] = {
        "transposed_rescaled": err,
        "alpha": alpha,
        "transposed_is_adjoint": float(np.max(np.abs(np.asarray(up) - np.asarray(adj)))),
        "pinv": _rel(x_pinv.reshape(x.shape).astype(np.float32), x),
    }
    images["2x2/2 conv, then transposed conv (rescaled)"] = alpha * np.asarray(up)
    return out, images


def _figures(directory, n, spectra, x, images):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (label, s), style in zip(spectra.items(), ("o", "-", "--"), strict=True):
        ax.semilogy(
            np.arange(1, s.size + 1),
            np.maximum(s, 1e-12),
            style,
            label=label,
            lw=1,
            ms=4,
            mfc="none",
        )
    ax.set(
        xlabel="index",
        ylabel="singular value",
        title=f"3x3 conv 1->16 on {n}x{n}: FFT (circular) vs dense Jacobians",
    )
    ax.legend(fontsize=8)
    save_figure(fig, directory / "conv_singular_values.png")

    panels = [("input x", x), *images.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
    for ax, (name, im) in zip(axes, panels, strict=True):
        ax.imshow(np.asarray(im)[0, ..., 0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle("a transposed convolution is the adjoint, not the inverse", fontsize=9)
    save_figure(fig, directory / "conv_inverse.png")


def run(config: Config, out: pathlib.Path) -> dict:
    directory = experiment_dir(out, NAME)
    n, size = config.n, config.image_size
    agreement, summaries = {}, {}
    for seed, shape in enumerate(KERNELS):
        kernel = _he(seed, shape)
        fft = conv_singular_values(kernel, (n, n))
        dense = conv_singular_values_dense(
            lambda v, k=kernel: _wrap_conv(v, k), (1, n, n, shape[2])
        )
        name = "x".join(map(str, shape))
        agreement[name] = float(np.max(np.abs(fft - dense)))
        spec = conv_spectrum(kernel, (n, n))._asdict()
        spec.pop("singular_values")
        summaries[name] = spec
    max_diff = max(agreement.values())

    seed_kernel = _he(0, KERNELS[0])
    spectra = {
        "FFT, circular": conv_singular_values(seed_kernel, (n, n)),
        "dense, circular": conv_singular_values_dense(
            lambda v: _wrap_conv(v, seed_kernel), (1, n, n, 1)
        ),
        "dense, zero padding": conv_singular_values_dense(
            lambda v: conv2d(v, seed_kernel), (1, n, n, 1)
        ),
    }
    x = jnp.asarray(_image(size))
    inverse, images = _inverse_errors(x, seed_kernel)
    _figures(directory, n, spectra, x, images)

    circ, up = inverse["circular"], inverse["stride2_unet"]
    metrics = {
        "constants": {"kernels": KERNELS},
        "fft_vs_dense_max_abs_diff": agreement,
        "spectra": summaries,
        "zero_padding_operator_norm": float(spectra["dense, zero padding"][0]),
        "inverse": inverse,
        "references": [
            reference(
                "FFT singular values of a circular conv equal the dense SVD",
                "< 1e-4",
                max_diff,
                max_diff < 1e-4,
                source="Sedghi, Gupta & Long 2019",
            ),
            reference(
                "transposed convolution does not invert a convolution",
                "transposed conv is not an inverse",
                f"relative error after best rescale: transposed conv "
                f"{circ['transposed_rescaled']:.3f} (3x3 1->16, circular), "
                f"{up['transposed_rescaled']:.3f} (2x2/2 up-conv); pseudo-inverse "
                f"{max(circ['pinv'], up['pinv']):.1e}",
                min(circ["transposed_rescaled"], up["transposed_rescaled"]) > 0.01
                and max(circ["pinv"], up["pinv"]) < 1e-3,
            ),
        ],
    }
    write_metrics(directory, metrics, config)
    return metrics


def main(argv=None):
    return cli(run, get_config, NAME, __doc__, argv)


if __name__ == "__main__":
    main()
