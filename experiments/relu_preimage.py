"""ReLU preimages: when can an input be recovered from y = relu(W x)?

Command:  python -m experiments.relu_preimage [--out results] [--quick | --full] [--set k=v ...]
Runtime (2-core CPU): default 25.6 s (measured: ``make reproduce`` on a fresh clone, default
profile, 2-core CPU; the expected results below are from the same run); --quick and --full: not
re-measured.

Expected result (default: n = 20, m/n from 1 to 8):
* the seed example relu([-1, 2, -3, 4]) = [0, 2, 0, 4]: its preimage is
  {x : x1 = 2, x3 = 4, x0 <= 0, x2 <= 0}, dimension 2 and unbounded — the negative entries
  cannot be recovered, by any method;
* for Gaussian W (m x n, no bias) the fraction of inputs whose preimage is a single point rises
  from 0 at m/n = 1 (0.06 at 1.5, 0.56 at 2, 0.92 at 2.5) to 1 from m/n = 3 on, crossing 1/2 at
  m/n = 1.95 (the active set must have >= n rows; about half the rows are active); the fraction
  with a bounded preimage rises earlier (0.77 at 1.5, 0.95 at 1.8, >= 0.996 from 2 on); a layer
  is injective on a whole sample of 1,000 inputs for 2 of 30 layers at m/n = 3 and for all from
  m/n = 4 on, crossing 1/2 at m/n = 3.46 (>= 2 is necessary; Puthawala et al. 2022);
* gradient inversion of such layers (1,000 Adam steps from a random start): the error splits
  into a part the optimiser could remove (distance to the preimage) and a part the network
  destroyed (distance within the preimage). Relative to ||x||: optimiser 0.59 and network 0.89
  at m/n = 1 (output residual 0.38, not converged), 0.14 and 0.13 at m/n = 2 (residual 0.047),
  3.9e-7 and 1.7e-15 at m/n = 4, where the preimage is a point (residual 1.5e-7).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax.numpy as jnp
import numpy as np

import inversion
from experiments.common import cli, experiment_dir, reference, save_figure, write_metrics
from experiments.config import ExperimentConfig, select_profile
from inversion.analysis.relu import locally_injective, relu_preimage
from inversion.analysis.relu_distance import preimage_error_split
from inversion.engine import invert_batch
from models.layers import relu

NAME = "relu_preimage"
SEED_X = np.array([-1.0, 2.0, -3.0, 4.0])


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """Defaults: the ``default`` profile."""

    positive = ("n", "ratios", "layers", "inputs", "sample", "inj_layers", "steps", "split_inputs")
    non_empty = ("ratios",)

    n: int = 20  # input dimension of the Gaussian layers
    ratios: tuple[float, ...] = (1.0, 1.5, 1.8, 2.0, 2.2, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)  # m/n
    layers: int = 10  # Gaussian layers per ratio for the preimage fractions
    inputs: int = 25  # inputs per layer
    sample: int = 1000  # inputs on which a layer's injectivity is checked
    inj_layers: int = 30  # layers per ratio for the injectivity fraction
    steps: int = 1000  # gradient-inversion steps of the error split
    split_inputs: int = 20  # inputs per ratio in the error split
    seed: int = 0  # numpy seed of every draw


def get_config(profile: str = "default") -> Config:
    """``'quick'``: n = 10, 7 ratios; ``'default'``: n = 20, 11 ratios; ``'full'``: n = 30,
    13 ratios up to m/n = 10, twice the samples and steps."""
    return select_profile(
        profile,
        quick=Config(
            n=10,
            ratios=(1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0),
            layers=4,
            inputs=12,
            sample=200,
            inj_layers=12,
            steps=300,
            split_inputs=6,
        ),
        default=Config(),
        full=Config(
            n=30,
            ratios=(1.0, 1.5, 1.8, 2.0, 2.2, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0),
            sample=2000,
            inj_layers=40,
            steps=2000,
            split_inputs=40,
        ),
    )


def _crossing(ratios, fractions, level=0.5):
    """First expansion at which ``fractions`` reaches ``level`` (linear interpolation)."""
    for i in range(1, len(ratios)):
        f0, f1 = fractions[i - 1], fractions[i]
        if f0 < level <= f1:
            return ratios[i - 1] + (level - f0) / (f1 - f0) * (ratios[i] - ratios[i - 1])
    return ratios[0] if fractions[0] >= level else float("nan")


def _sweep(cfg: Config, rng):
    n = cfg.n
    unique, bounded, injective, dims = [], [], [], []
    for r in cfg.ratios:
        m = int(round(r * n))
        u, bd, d = [], [], []
        for _ in range(cfg.layers):
            W = rng.normal(size=(m, n)) / np.sqrt(n)
            for x in rng.normal(size=(cfg.inputs, n)):
                pre = relu_preimage(W, None, np.maximum(W @ x, 0.0))
                u.append(pre.unique)
                bd.append(pre.bounded)
                d.append(pre.dim)
        inj = [
            locally_injective(W, None, rng.normal(size=(cfg.sample, n))).all()
            for W in rng.normal(size=(cfg.inj_layers, m, n))
        ]
        unique.append(float(np.mean(u)))
        bounded.append(float(np.mean(bd)))
        dims.append(float(np.mean(d)))
        injective.append(float(np.mean(inj)))
    return dict(unique=unique, bounded=bounded, injective_on_sample=injective, mean_dim=dims)


def _error_split(cfg: Config, rng, ratios=(1.0, 2.0, 4.0)):
    """Gradient inversion of Gaussian layers, error split into optimiser and network parts."""
    n, rows = cfg.n, {}
    for r in ratios:
        m = int(round(r * n))
        W = rng.normal(size=(m, n)) / np.sqrt(n)
        X = rng.normal(size=(cfg.split_inputs, n))
        Y = np.maximum(X @ W.T, 0.0)
        Wj = jnp.asarray(W, jnp.float32)
        x0 = jnp.asarray(rng.normal(size=X.shape), jnp.float32)  # a random start per target
        res = invert_batch(
            lambda x, Wj=Wj: relu(Wj @ x),
            jnp.asarray(Y, jnp.float32),
            x0=x0,
            steps=cfg.steps,
            solver=inversion.solvers.Optax.by_name("adam", 0.05),
        )
        splits = [
            preimage_error_split(W, None, y, np.asarray(xr, np.float64), x, tol=1e-4)
            for x, y, xr in zip(X, Y, res.x, strict=True)
        ]
        norm = np.linalg.norm(X, axis=1)
        rows[f"{r:g}"] = {
            "total_relative": float(np.mean([s.total for s in splits] / norm)),
            "optimiser_relative": float(np.mean([s.optimiser for s in splits] / norm)),
            "network_relative": float(np.mean([s.network for s in splits] / norm)),
            "residual": float(np.mean(np.asarray(res.residual))),
        }
    return rows


def _figures(directory, cfg, sweep, seed_pre, seed_y, split):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    r = cfg.ratios
    ax.plot(r, sweep["unique"], "o-", label="preimage is a single point")
    ax.plot(r, sweep["bounded"], "s-", label="preimage is bounded")
    ax.plot(r, sweep["injective_on_sample"], "^-", label=f"injective on {cfg.sample} inputs")
    ax.axvline(2.0, color="gray", ls="--", lw=1, label="m/n = 2")
    ax.set(xlabel="expansion m/n", ylabel="fraction", title=f"Gaussian ReLU layers, n = {cfg.n}")
    ax.legend(fontsize=8)
    save_figure(fig, directory / "relu_fractions.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    idx = np.arange(4)
    ax.bar(idx - 0.2, SEED_X, 0.4, label="input x")
    ax.bar(idx + 0.2, seed_y, 0.4, label="relu(x)")
    free = np.flatnonzero(~seed_pre.active)
    ax.bar(free + 0.2, -5.0, 0.4, color="r", alpha=0.25, label="preimage: any x_i in (-inf, 0]")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(
        title=f"preimage of relu(x): dimension {seed_pre.dim}, "
        f"{'bounded' if seed_pre.bounded else 'unbounded'}",
        xticks=idx,
        ylim=(-5, 5),
    )
    ax.legend(fontsize=8)
    save_figure(fig, directory / "relu_seed_example.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    keys = list(split)
    ax.bar(
        np.arange(len(keys)) - 0.2,
        [split[k]["optimiser_relative"] for k in keys],
        0.4,
        label="optimiser (distance to preimage)",
    )
    ax.bar(
        np.arange(len(keys)) + 0.2,
        [split[k]["network_relative"] for k in keys],
        0.4,
        label="network (distance within preimage)",
    )
    ax.set(
        xticks=np.arange(len(keys)),
        xticklabels=[f"m/n = {k}" for k in keys],
        ylabel="relative input error",
        title="gradient inversion error, split",
    )
    ax.legend(fontsize=8)
    save_figure(fig, directory / "relu_error_split.png")


def run(config: Config, out: pathlib.Path) -> dict:
    directory = experiment_dir(out, NAME)
    rng = np.random.default_rng(config.seed)

    seed_y = np.asarray(relu(jnp.asarray(SEED_X, jnp.float32)), np.float64)
    seed_pre = relu_preimage(np.eye(4), None, seed_y)
    sweep = _sweep(config, rng)
    split = _error_split(config, rng)
    unique_at = _crossing(config.ratios, sweep["unique"])
    inj_at = _crossing(config.ratios, sweep["injective_on_sample"])
    _figures(directory, config, sweep, seed_pre, seed_y, split)

    metrics = {
        "seed_example": {
            "x": SEED_X,
            "y": seed_y,
            "active": seed_pre.active,
            "dim": seed_pre.dim,
            "bounded": seed_pre.bounded,
            "unique": seed_pre.unique,
            "ray": seed_pre.ray,
        },
        "sweep": sweep,
        "unique_transition_ratio": unique_at,
        "injective_on_sample_ratio": inj_at,
        "error_split": split,
        "references": [
            reference(
                "relu([-1, 2, -3, 4])",
                [0, 2, 0, 4],
                seed_y,
                bool(np.array_equal(seed_y, [0, 2, 0, 4])),
            ),
            reference(
                "preimage of [0, 2, 0, 4] (identity layer)",
                "dimension 2, unbounded",
                f"dimension {seed_pre.dim}, {'bounded' if seed_pre.bounded else 'unbounded'}",
                seed_pre.dim == 2 and not seed_pre.bounded,
            ),
            reference(
                "expansion m/n where a unique preimage becomes typical",
                "near 2",
                round(unique_at, 2),
                1.5 <= unique_at <= 2.5,
                source="active set needs >= n of m rows, each active w.p. 1/2",
            ),
            reference(
                "expansion m/n where Gaussian layers are injective on a sample",
                ">= 2 necessary; 3.4-10.5 for global injectivity",
                round(inj_at, 2),
                bool(inj_at >= 2.0),
                source="Puthawala et al. 2022",
            ),
        ],
    }
    write_metrics(directory, metrics, config)
    return metrics


def main(argv=None):
    return cli(run, get_config, NAME, __doc__, argv)


if __name__ == "__main__":
    main()
