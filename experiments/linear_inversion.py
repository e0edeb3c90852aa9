"""The seed study's linear inversion: gradient descent on the input of a trained Dense(1).

Command:   python -m experiments.linear_inversion [--out results] [--quick | --full] [--set k=v]
Runtime:   12.1 s (measured: ``make reproduce`` on a fresh clone, default profile, 2-core CPU;
           the Expected figures are from the same run); --quick and --full: not re-measured.
Profiles:  Dense(1) trained 3,000 Adam steps (full: 10,000); inversion 3,000 steps (quick 2,000,
           full 10,000); the x-over-iterations path sampled at 24 step counts (quick 12,
           full 48).
Expected:  data x ~ U(0, 1000), y = 0.4·x − 50·U(0, 1); a Dense(1) trained with Adam (full
           batch) fits w = 0.398, b = −23.66 (least-squares line: 0.398, −23.69). Inverting
           y0 = 100 by Adam on the input from x0 = 1 climbs and saturates at x0 = 310.6 (status
           'max_steps' after 3,000 steps, residual 1.6e-6; seed study: ≈ 312 with its own random
           draws), 4.0e-4 from the closed form (y0 − b)/w (relative 1.3e-6).

Figures: x over iterations (each point is a run of that many steps from x0 = 1, i.e. the same
trajectory), the loss per step, and the data with the fitted line and the recovered point.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import models
from experiments.common import cli, experiment_dir, reference, save_figure, write_metrics
from experiments.config import ExperimentConfig, select_profile
from inversion import closed_form, invert, solvers

NAME = "linear_inversion"
Y0, X_START = 100.0, 1.0
SEED_X0 = 312.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """Defaults: the ``default`` profile."""

    train_steps: int = 3000  # full-batch Adam steps fitting the Dense(1)
    steps: int = 3000  # Adam steps on the input
    lr: float = 1.0  # learning rate of the input's Adam
    path_points: int = 24  # step counts (geometric) at which x is shown over iterations
    seed: int = 0  # PRNG key of the data and of the Dense(1) init


def get_config(profile: str = "default") -> Config:
    """``'quick'``: 2,000 inversion steps, 12 path points; ``'default'``: 3,000 and 24;
    ``'full'``: the fit and the inversion 10,000 steps each, 48 path points."""
    return select_profile(
        profile,
        quick=Config(steps=2000, path_points=12),
        default=Config(),
        full=Config(train_steps=10000, steps=10000, path_points=48),
    )


def fit_dense(*, steps: int, key: int = 0):
    """Seed data and a Dense(1) trained on it with Adam (full batch, lr 0.2)."""
    kx, kn = jax.random.split(jax.random.key(key))
    x = jax.random.uniform(kx, (1000, 1)) * 1000.0
    y = 0.4 * x - 50.0 * jax.random.uniform(kn, (1000, 1))
    model = models.Linear(1, 1, rngs=nnx.Rngs(key))
    config = models.TrainConfig(
        task="regression", steps=steps, batch_size=1000, learning_rate=0.2, eval_every=steps
    )
    models.train(model, (x, y), config=config, progress=False)
    return model, (x, y)


def run(config: Config, out: pathlib.Path) -> dict:
    folder = experiment_dir(out, NAME)
    model, (x_data, y_data) = fit_dense(steps=config.train_steps, key=config.seed)
    w, b = float(model.kernel[...][0, 0]), float(model.bias[...][0])
    design = np.c_[np.asarray(x_data), np.ones(len(x_data))]
    w_ls, b_ls = np.linalg.lstsq(design, np.asarray(y_data)[:, 0], rcond=None)[0]

    steps = config.steps
    options = dict(x0=jnp.array([X_START]), solver=solvers.Optax.by_name("adam", config.lr))
    result = invert(model, jnp.array([Y0]), steps=steps, **options)
    x0 = float(result.x[0])
    exact = closed_form.affine_inverse(np.array([[w]]), np.array([b]), np.array([Y0]))
    x_closed = float(exact.x[0])

    grid = np.unique(np.geomspace(1, steps, config.path_points).astype(int))
    path = [float(invert(model, jnp.array([Y0]), steps=int(s), **options).x[0]) for s in grid]

    import matplotlib.pyplot as plt

    fig, (ax_x, ax_loss, ax_fit) = plt.subplots(1, 3, figsize=(15, 4))
    ax_x.plot(np.r_[0, grid], [X_START, *path], "o-")
    ax_x.axhline(x_closed, color="k", ls="--", label=f"closed form {x_closed:.1f}")
    ax_x.set(xscale="symlog", xlabel="step", ylabel="x", title=f"input recovered for y0 = {Y0:g}")
    ax_x.legend()
    ax_loss.semilogy(np.maximum(np.asarray(result.history), 1e-16))
    ax_loss.set(xlabel="step", ylabel="(w·x + b − y0)²", title="loss per step")
    ax_fit.plot(np.asarray(x_data)[:, 0], np.asarray(y_data)[:, 0], ".", ms=2, alpha=0.3)
    line = np.array([0.0, 1000.0])
    ax_fit.plot(line, w * line + b, "k-", label=f"fit y = {w:.3f}·x {b:+.1f}")
    ax_fit.plot([x0], [Y0], "ro", label=f"recovered x0 = {x0:.1f}")
    ax_fit.set(xlabel="x", ylabel="y", title="data, fitted line, recovered point")
    ax_fit.legend()
    save_figure(fig, folder / "linear_inversion.png")

    metrics = {
        "w": w,
        "b": b,
        "w_least_squares": float(w_ls),
        "b_least_squares": float(b_ls),
        "x0": x0,
        "x0_closed_form": x_closed,
        "difference": x0 - x_closed,
        "status": result.status,
        "residual": float(result.residual),
        "path_steps": grid.tolist(),
        "path_x": path,
        "references": [
            reference("x0 recovered for y0 = 100", f"≈ {SEED_X0:g}", x0, 305.0 <= x0 <= 320.0),
            reference(
                "x0 against closed form (y0 − b)/w (relative)",
                "< 1%",
                abs(x0 - x_closed) / abs(x_closed),
                abs(x0 - x_closed) <= 0.01 * abs(x_closed),
            ),
        ],
    }
    write_metrics(folder, metrics, config)
    return metrics


def main(argv=None):
    return cli(run, get_config, NAME, __doc__, argv)


if __name__ == "__main__":
    main()
