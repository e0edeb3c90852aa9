"""Inverting a single sigmoid unit: reachable targets converge, unreachable ones saturate.

Command:   python -m experiments.sigmoid_inversion [--out results] [--quick | --full] [--set k=v]
Runtime:   3.4 s (measured: ``make reproduce`` on a fresh clone, default profile, 2-core CPU;
           the Expected figures are from the same run); --quick and --full: not re-measured.
Profiles:  the unit trained 3,000 Adam steps (quick 1,000, full 10,000); inversion 5,000 steps
           (quick 2,000, full 20,000; whether y0 = 0.999 converges there: not re-measured).
Expected:  a sigmoid unit y = σ(w·u + b), u = x/1000, trained with Adam on x ~ U(0, 1000),
           y = σ((x − 500)/100) + N(0, 0.02²), fits w = 10.06, b = −5.03. Gradient descent on
           the input from x = 1 reaches the closed form x = 1000·(logit(y0) − b)/w for
           y0 ∈ {0.1, 0.5, 0.9} (status 'converged' after 180, 244 and 1,565 steps; relative gap
           1.5e-5 at most); for y0 = 0.999 the gradient σ'(z) ≈ 1e-3 vanishes and the run creeps
           (status 'max_steps': x = 987 against 1,187, residual 0.0064); y0 = 1.2 is outside the
           range (0, 1): the closed form refuses it (ValueError) and gradient descent saturates
           (status 'max_steps') with a residual of 0.1672, just above the floor
           |1.2 − 1|/1.2 = 0.1667.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import inversion
import models
from experiments.common import cli, experiment_dir, reference, save_figure, write_metrics
from experiments.config import ExperimentConfig, select_profile
from inversion import closed_form, invert_batch

NAME = "sigmoid_inversion"
TARGETS = (0.1, 0.5, 0.9, 0.999, 1.2)
SCALE = 1000.0  # the unit sees u = x / SCALE


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """Defaults: the ``default`` profile."""

    train_steps: int = 3000  # full-batch Adam steps fitting the unit
    steps: int = 5000  # Adam steps on the inputs (at most: a row stops when converged)
    lr: float = 2.0  # learning rate of the inputs' Adam
    tol: float = 1e-10  # convergence tolerance of the inversion
    seed: int = 0  # PRNG key of the data and of the unit's init


def get_config(profile: str = "default") -> Config:
    """``'quick'``: 1,000 training and 2,000 inversion steps; ``'default'``: 3,000 and 5,000;
    ``'full'``: 10,000 and 20,000."""
    return select_profile(
        profile,
        quick=Config(train_steps=1000, steps=2000),
        default=Config(),
        full=Config(train_steps=10000, steps=20000),
    )


def fit_sigmoid_unit(*, steps: int, key: int = 0):
    """Train ``MLP(1, (1,), 'sigmoid', activate_output=True)`` on the seed-style data."""
    kx, kn = jax.random.split(jax.random.key(key))
    x = jax.random.uniform(kx, (1000, 1)) * SCALE
    y = jax.nn.sigmoid((x - 500.0) / 100.0) + 0.02 * jax.random.normal(kn, (1000, 1))
    model = models.MLP(1, (1,), "sigmoid", activate_output=True, rngs=nnx.Rngs(key))
    config = models.TrainConfig(
        task="regression", steps=steps, batch_size=1000, learning_rate=0.1, eval_every=steps
    )
    models.train(model, (x / SCALE, y), config=config, progress=False)
    dense = model.dense[0]
    return model, float(dense.kernel[...][0, 0]), float(dense.bias[...][0]), (x, y)


def run(config: Config, out: pathlib.Path) -> dict:
    folder = experiment_dir(out, NAME)
    model, w, b, (x_data, y_data) = fit_sigmoid_unit(steps=config.train_steps, key=config.seed)

    def unit(x):  # input in the data's units
        return model(x / SCALE)

    targets = jnp.asarray(TARGETS)[:, None]
    result = invert_batch(
        unit,
        targets,
        x0=jnp.ones((len(TARGETS), 1)),
        steps=config.steps,
        tol=config.tol,
        solver=inversion.solvers.Optax.by_name("adam", config.lr),
    )
    rows = []
    for i, y0 in enumerate(TARGETS):
        try:
            exact = SCALE * (float(closed_form.sigmoid_inverse(jnp.asarray(y0))) - b) / w
            refusal = None
        except ValueError as err:
            exact, refusal = None, str(err)
        rows.append(
            {
                "y0": y0,
                "x_gradient": float(result.x[i, 0]),
                "x_closed_form": exact,
                "closed_form_error": refusal,
                "status": str(result.status[i]),
                "steps": int(result.steps[i]),
                "residual": float(result.residual[i]),
            }
        )

    fig, (ax_fit, ax_hist) = _figure()
    order = np.argsort(np.asarray(x_data[:, 0]))
    ax_fit.plot(np.asarray(x_data)[:, 0], np.asarray(y_data)[:, 0], ".", ms=2, alpha=0.3)
    ax_fit.plot(np.asarray(x_data)[order, 0], np.asarray(unit(x_data))[order, 0], "k-")
    for row in rows:
        ax_fit.plot([row["x_gradient"]], [row["y0"]], "o", label=f"y0={row['y0']}: {row['status']}")
    ax_fit.set(xlabel="x", ylabel="y", title="sigmoid unit and recovered inputs")
    ax_fit.legend(fontsize=7)
    for i, y0 in enumerate(TARGETS):
        ax_hist.semilogy(np.maximum(np.asarray(result.history[i]), 1e-16), label=f"y0={y0}")
    ax_hist.set(xlabel="step", ylabel="loss", title="loss per step")
    ax_hist.legend(fontsize=7)
    save_figure(fig, folder / "sigmoid_inversion.png")

    reachable = [r for r in rows if r["x_closed_form"] is not None and r["y0"] < 0.99]
    worst = max(
        abs(r["x_gradient"] - r["x_closed_form"]) / abs(r["x_closed_form"]) for r in reachable
    )
    unreachable = rows[-1]
    metrics = {
        "w": w,
        "b": b,
        "targets": rows,
        "max_relative_gap_reachable": worst,
        "references": [
            reference(
                "reachable targets: gradient x equals logit closed form (rel. gap)",
                "< 1e-3",
                worst,
                worst < 1e-3 and all(r["status"] == "converged" for r in reachable),
            ),
            reference(
                "unreachable y0 = 1.2: closed form refuses, gradient saturates",
                "ValueError; status max_steps, residual ≥ 0.16",
                f"{unreachable['status']}, residual {unreachable['residual']:.3f}",
                unreachable["closed_form_error"] is not None
                and unreachable["status"] == "max_steps"
                and unreachable["residual"] >= 0.16,
            ),
        ],
    }
    write_metrics(folder, metrics, config)
    return metrics


def _figure():
    import matplotlib.pyplot as plt

    return plt.subplots(1, 2, figsize=(11, 4))


def main(argv=None):
    return cli(run, get_config, NAME, __doc__, argv)


if __name__ == "__main__":
    main()
