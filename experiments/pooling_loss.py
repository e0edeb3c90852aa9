"""Max pooling: what 2x2/2 pooling keeps, what it loses, and what switches add back.

Command:  python -m experiments.pooling_loss [--out results] [--quick | --full] [--set k=v ...]
Runtime (2-core CPU): default 6.1 s (measured: ``make reproduce`` on a fresh clone, default
profile, 2-core CPU; the expected results below are from the same run); --quick and --full: not
re-measured.

Expected result (default: the ramp and a 64x64 camera image, 1,000 Adam steps):
* the seed example: 2x2/2 max pooling of the 4x4 ramp 1..16 gives [[6, 8], [14, 16]];
* the Jacobian of k x k/k pooling has rank = number of windows (4 for the ramp), nullity
  (1 - 1/k^2) n (12 of 16; 144 of 192 for k = 2 on 8x8x3, 64 of 72 for k = 3 on 6x6x2), for
  max and average pooling alike; each window's preimage has dimension k^2 - 1; argmax switches
  carry log2 k^2 bits per window;
* gradient inversion matches the output (relative residual <= 5.4e-8) but recovers only the
  maxima: from a zero start the gradient is shared by tied entries and every entry rises to its
  window maximum (= nearest-neighbour upsampling: relative input error 0.34 on the ramp and 0.16
  on the image for each); from a random start only the entry that is largest at the start moves
  (not necessarily the true argmax: without switches the location is lost too) and the other
  3/4 keep their random values (0.86, 0.93). Unpooling with switches places the maxima exactly
  and leaves 3/4 of the entries undetermined (shown as zeros; 0.79, 0.85). None of these
  recovers the ramp (for contrast, average pooling's pseudo-inverse: 0.21, 0.10).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import jax.numpy as jnp
import numpy as np
import optax

import inversion
from experiments.common import cli, experiment_dir, reference, save_figure, write_metrics
from experiments.config import ExperimentConfig, select_profile
from inversion.analysis.pooling import (
    avg_unpool,
    max_pool_with_switches,
    max_unpool,
    pooling_loss,
    project_to_max_pool_preimage,
)
from inversion.engine import invert
from models.layers import avg_pool2d, max_pool2d

NAME = "pooling_loss"
RAMP = np.arange(1.0, 17.0, dtype=np.float32).reshape(1, 4, 4, 1)
SEED_POOLED = [[6.0, 8.0], [14.0, 16.0]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """Defaults: the ``default`` profile."""

    image_size: int = 64  # side of the block-averaged camera image
    steps: int = 1000  # Adam steps of the gradient reconstructions


def get_config(profile: str = "default") -> Config:
    """``'quick'``: 32x32 image, 200 steps; ``'default'``: 64, 1,000; ``'full'``: 128, 2,000."""
    return select_profile(
        profile,
        quick=Config(image_size=32, steps=200),
        default=Config(),
        full=Config(image_size=128, steps=2000),
    )


def _image(size: int) -> np.ndarray:
    """The scikit-image camera picture, block-averaged to ``size x size``, in [0, 1]."""
    from skimage.data import camera

    im = camera().astype(np.float32) / 255.0
    f = im.shape[0] // size
    im = im[: size * f, : size * f].reshape(size, f, size, f).mean(axis=(1, 3))
    return im[None, :, :, None]


def _reconstructions(x, *, steps, seed):
    """Every reconstruction of ``x`` from its 2x2/2 max pooling (and avg pooling for contrast)."""
    x = jnp.asarray(x)
    y, switches = max_pool_with_switches(x, 2)
    pool = lambda v: max_pool2d(v[None])[0]  # noqa: E731  (invert works on one input)
    lr = 0.05 * float(np.max(np.abs(np.asarray(y))))
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps))
    from_zero = invert(
        pool, y[0], x0=jnp.zeros_like(x[0]), steps=steps, solver=inversion.solvers.Optax(opt)
    )
    start = jnp.asarray(0.1 * np.random.default_rng(seed).normal(size=x[0].shape), jnp.float32)
    from_noise = invert(pool, y[0], x0=start, steps=steps, solver=inversion.solvers.Optax(opt))
    recs = {
        "gradient, zero start": (from_zero.x[None], None),
        "gradient, random start": (from_noise.x[None], None),
        "unpool with switches (zeros)": (max_unpool(y, window=2, switches=switches), switches),
        "nearest upsampling": (max_unpool(y, window=2, fill="max"), None),
    }
    rows = {}
    xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
    norm = np.linalg.norm(xn)
    for name, (rec, sw) in recs.items():
        z = np.asarray(project_to_max_pool_preimage(rec, y, window=2, switches=sw), np.float64)
        r = np.asarray(rec, np.float64)
        rows[name] = {
            "relative_error": float(np.linalg.norm(r - xn) / norm),
            "output_residual": float(
                np.linalg.norm(np.asarray(max_pool2d(rec)) - yn) / np.linalg.norm(yn)
            ),
            "optimiser_relative": float(np.linalg.norm(r - z) / norm),
            "network_relative": float(np.linalg.norm(z - xn) / norm),
        }
    avg_y = np.asarray(avg_pool2d(x), np.float64)
    avg_rec = avg_unpool(avg_pool2d(x), window=2)
    rows["average pooling, pseudo-inverse"] = {
        "relative_error": float(np.linalg.norm(np.asarray(avg_rec, np.float64) - xn) / norm),
        "output_residual": float(
            np.linalg.norm(np.asarray(avg_pool2d(avg_rec)) - avg_y) / np.linalg.norm(avg_y)
        ),
    }
    images = {name: np.asarray(r[0])[0, ..., 0] for name, r in recs.items()}
    images["average pooling, pseudo-inverse"] = np.asarray(avg_rec)[0, ..., 0]
    return np.asarray(y), rows, images


def _figure(path, x, y, images, title):
    import matplotlib.pyplot as plt

    panels = [("input", x[0, ..., 0]), ("max pooled", y[0, ..., 0]), *images.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.6))
    vmin, vmax = float(x.min()), float(x.max())
    for ax, (name, im) in zip(axes, panels, strict=True):
        ax.imshow(im, cmap="viridis" if x.shape[1] <= 8 else "gray", vmin=vmin, vmax=vmax)
        if im.shape[0] <= 8:
            for (i, j), v in np.ndenumerate(im):
                ax.text(
                    j,
                    i,
                    f"{v:.0f}" if abs(v - round(v)) < 0.05 else f"{v:.1f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="w",
                )
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def run(config: Config, out: pathlib.Path) -> dict:
    directory = experiment_dir(out, NAME)
    size, steps = config.image_size, config.steps

    pooled = np.asarray(max_pool2d(jnp.asarray(RAMP)))[0, ..., 0]
    ranks = {}
    for k, shape in [(2, (1, 4, 4, 1)), (2, (1, 8, 8, 3)), (3, (1, 6, 6, 2))]:
        x = RAMP if shape == RAMP.shape else np.random.default_rng(k).normal(size=shape)
        for kind, fn in (("max", max_pool2d), ("avg", avg_pool2d)):
            loss = pooling_loss(
                lambda v, fn=fn, k=k: fn(v, k), jnp.asarray(x, jnp.float32), window=k
            )
            ranks[f"{kind} k={k} {'x'.join(map(str, shape[1:]))}"] = loss._asdict()
    ramp_loss = ranks["max k=2 4x4x1"]

    y_ramp, ramp_rows, ramp_images = _reconstructions(RAMP, steps=steps, seed=0)
    _figure(
        directory / "pooling_ramp.png",
        RAMP,
        y_ramp,
        ramp_images,
        "4x4 ramp through 2x2/2 max pooling: only the maxima survive",
    )
    image = _image(size)
    y_img, image_rows, image_images = _reconstructions(image, steps=steps, seed=1)
    _figure(
        directory / "pooling_image.png",
        image,
        y_img,
        image_images,
        f"{size}x{size} image through 2x2/2 max pooling",
    )

    metrics = {
        "ramp_pooled": pooled,
        "jacobian": ranks,
        "window_preimage": {
            "dimension": 3,
            "bounded": False,
            "switch_bits": math.log2(4),
            "free_reals_per_window": 3,
        },
        "ramp_reconstruction": ramp_rows,
        "image_reconstruction": image_rows,
        "references": [
            reference(
                "2x2/2 max pooling of the 4x4 ramp 1..16",
                SEED_POOLED,
                pooled,
                bool(np.array_equal(pooled, SEED_POOLED)),
            ),
            reference(
                "values of the ramp lost by pooling",
                12,
                ramp_loss["nullity"],
                ramp_loss["nullity"] == 12,
                source="seed study (Jacobian nullity, measured)",
            ),
        ],
    }
    write_metrics(directory, metrics, config)
    return metrics


def main(argv=None):
    return cli(run, get_config, NAME, __doc__, argv)


if __name__ == "__main__":
    main()
