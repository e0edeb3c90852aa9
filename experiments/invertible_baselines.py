"""Invertible baselines on the seed U-Net's task: Glow, i-RevNet, i-ResNet, an invertible U-Net
and RealNVP beside the seed U-Net (inverted by the engine) and its learned inverse (decoder).

Command:   python -m experiments.invertible_baselines [--out results] [--quick | --full] [--set k=v]
Runtime:   default 152 s (measured: 2-core shared CPU, peak RSS 1.4 GB, the seed U-Net from the
           model cache, the decoder and the five networks trained here), 44 s with every model
           cached; quick (IRevNet and IResNet only) 33 s in the test suite with a cold cache;
           --full not measured. In ``reproduce`` the decoder comes from alternatives' cached run.
Measured (default profile, the 152 s run; 16 test scenes; ``table.md``):

    model           params  dice    round trip median / max   inverse s  train-step MiB (vs U-Net)
    UNet (engine)   52,337  0.9980  4.99e-01 / 5.67e-01       3.0        30.8 (1.00×)
    Decoder         28,353  —       2.77e-01 / 3.48e-01       0.0094     45.9 (1.49×)
    Glow            14,958  0.9828  6.05e-05 / 1.05e-04       0.0033      7.7 (0.25×)
    IRevNet         15,126  0.9877  1.62e-06 / 1.98e-06       0.0030      6.1 (0.20×)
    IResNet          1,230  0.9728  7.31e-08 / 1.09e-07       0.55       42.9 (1.39×)
    InvertibleUNet  16,032  0.9942  1.41e-05 / 2.32e-05       0.011      26.5 (0.86×)
    Flow (RealNVP)  11,092  0.9977  1.56e-07 / 2.21e-07       0.016      41.0 (1.33×)

Every invertible network segments at dice >= 0.95 after 200 steps, but the trained Glow's
round trip reaches 1.05e-4 on one scene and is FLAGGED (not exact to 1e-4), and the invertible
U-Net misses the 1e-5 goal: stacked affine couplings amplify float32 rounding (see
tests/models/test_flows_roundtrip.py), while the additive i-RevNet, the contractive i-ResNet
and the 4-coupling RealNVP stay below 2e-6. (An earlier run whose Glow 1×1 convs were
initialised from a float64 QR gave 7.3e-5: the margin is thin.) The i-ResNet's fixed point
reaches the float32 floor (~2e-6..8e-6 in norm) after 10-15 iterations, far ahead of its
a-priori bound with the certified L = 0.9 (the Schur bound on each conv is loose).

Every network is trained on the SAME synthetic segmentation scenes as the seed U-Net (2,000
scenes of 32×32, Adam 5e-3, batch 32, ``train_steps`` steps), its output (shaped like the image)
used as mask logits; the invertible ones start from a data-dependent ActNorm initialisation
(:meth:`models.flows.Bijector.initialize` on 256 training scenes). On ``targets`` held-out test
scenes ``x`` the table reports, per model (``metrics.json``: under the class name):

* ``params``: trainable parameters;
* ``dice``: test dice of the trained segmenter on 128 test scenes (the decoder has none);
* ``round_trip_median``, ``round_trip_max``: ``‖x̂ − x‖/‖x‖`` over the test scenes, float32,
  with ``x̂ = f⁻¹(f(x))`` for the invertible networks, ``x̂`` = the engine's Adam inversion of
  ``y = Φ(x)`` (``invert_steps`` steps from ``0.1·N(0, I)``, box [0, 1]) for the U-Net and
  ``x̂ = g(Φ(x))`` for the decoder;
* ``inverse_seconds``: wall time of the inverse of all test scenes at once (compiled, after a
  warm-up call; for the U-Net the whole ``invert_batch`` call, compilation included);
* ``train_step_bytes`` and ``memory_vs_unet``: the peak memory of one training step (loss and
  gradient, batch 32) as XLA's buffer assignment plans it (arguments + outputs + temporaries −
  aliased, ``compiled.memory_analysis()``), and its ratio to the seed U-Net's.

A diagnostic flags every invertible model whose trained round trip is not exact to 1e-4
(``inexact`` in ``metrics.json``, a ``RuntimeWarning``, and a failed reference row): an inverse
that fails after training never passes silently.

``iresnet_iterations.png``: for each block of the trained i-ResNet, the error
``‖x_k − x*‖`` of the fixed-point inverse after ``k`` iterations (median over the test scenes;
``x*`` the block's true input) beside the a-priori bound ``L_g^k/(1 − L_g)·‖x₁ − x₀‖`` with the
block's certified Lipschitz constant ``L_g`` (:class:`models.flows.IResNetBlock`); "below the
bound" allows the float32 floor ``10·eps32·(‖y‖ + ‖g(y)‖)/(1 − L_g)`` where the iterates stall.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import models
from experiments.alternatives import learned_inverse
from experiments.common import (
    TrainProfile,
    cli,
    experiment_dir,
    reference,
    save_figure,
    trained_seed_unet,
    write_metrics,
)
from experiments.config import ExperimentConfig, select_profile
from inversion import invert_batch, metrics
from models import flows

NAME = "invertible_baselines"
EXACT = 1e-4  # a trained round trip above this is flagged as not exact
GOAL = 1e-5  # issue 12's bar for the round trip after training
DICE_GOAL = 0.95
INVERTIBLE = ("Glow", "IRevNet", "IResNet", "InvertibleUNet", "Flow")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """Defaults: the ``default`` profile."""

    targets: int = 16  # held-out test scenes of the round trips
    train_steps: int = 200  # training steps of each invertible network
    n_train: int = 2000  # training scenes
    hidden: int = 16  # conditioner / residual width of the invertible networks
    iresnet_iterations: int = 100  # fixed-point iterations of each i-ResNet block's inverse
    plot_iterations: int = 100  # iterations shown in iresnet_iterations.png
    invert_steps: int = 200  # Adam steps of the engine's inversion of the U-Net
    decoder_steps: int = 400  # the decoder's training (alternatives' sizes: one cached run)
    decoder_n_train: int = 2000
    train_profile: TrainProfile = "default"  # training sizes of the seed U-Net
    networks: tuple[str, ...] = INVERTIBLE  # the invertible networks trained (IResNet: plotted)


def get_config(profile: str = "default") -> Config:
    """``'quick'``: 4 targets, networks trained 20 steps on 128 scenes, width 8, 30 engine
    steps; ``'default'``: 16 targets, 200 steps on 2,000 scenes, width 16, 200 engine steps;
    ``'full'``: 64 targets, 1,000 training steps, 1,000 engine steps."""
    return select_profile(
        profile,
        quick=Config(
            targets=4,
            train_steps=20,
            n_train=128,
            hidden=8,
            iresnet_iterations=60,
            plot_iterations=40,
            invert_steps=30,
            decoder_steps=30,
            decoder_n_train=128,
            train_profile="quick",
        ),
        default=Config(),
        full=Config(targets=64, train_steps=1000, invert_steps=1000),
    )


def architectures(cfg: Config) -> dict[str, dict]:
    """The constructor arguments of each invertible network."""
    h = cfg.hidden
    return {
        "Glow": dict(channels=1, hidden=h, levels=2, depth=2),
        "IRevNet": dict(channels=1, hidden=h, levels=2, depth=2),
        "IResNet": dict(
            channels=1, hidden=h, blocks=4, lipschitz=0.9, iterations=cfg.iresnet_iterations
        ),
        "InvertibleUNet": dict(channels=1, hidden=h, levels=2, depth=1),
        "Flow": dict(channels=1, hidden=h, couplings=4),
    }


def _train_config(steps: int) -> models.TrainConfig:
    return models.TrainConfig(
        task="segmentation", steps=steps, batch_size=32, learning_rate=5e-3, eval_every=steps
    )


def _invertible(name: str, arch: dict, cfg: Config, train_set, test_set):
    """``(model, history)``: network ``name`` trained on the segmentation scenes."""
    init_x = train_set.images[:256]

    def build():
        model = getattr(flows, name)(**arch, rngs=nnx.Rngs(params=0))
        model.initialize(init_x)  # data-dependent ActNorm init
        return model

    result = models.cached_train(
        build,
        {"model": f"flows.{name}", "init_key": 0, "init": "actnorm_data_256", **arch},
        train_set,
        config=_train_config(cfg.train_steps),
        eval_data=test_set,
        progress=False,
    )
    return result.model, result.history


def _jitted(model, method: str = "__call__"):
    """``jit(x ↦ model.<method>(x))`` with the weights as constants."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda x: getattr(nnx.merge(graphdef, state), method)(x))


def _timed(fn, x, repeats: int = 3) -> tuple[jax.Array, float]:
    """``(fn(x), best wall time of `repeats` calls after one warm-up call)``."""
    out = jax.block_until_ready(fn(x))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(x))
        best = min(best, time.perf_counter() - start)
    return out, best


def train_step_bytes(model, x, y) -> int:
    """Peak memory of one training step (loss and parameter gradient on ``(x, y)``) as XLA's
    buffer assignment plans it: arguments + outputs + temporaries − aliased bytes."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        return models.segmentation_loss(nnx.merge(graphdef, p, rest, copy=True)(x), y)

    stats = jax.jit(jax.value_and_grad(loss)).lower(params).compile().memory_analysis()
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def _errors(x_hat, x) -> np.ndarray:
    return np.asarray(metrics.relative_error(x_hat, x, batched=True, reduce=False))


def iresnet_iterations(model: flows.IResNet, x, iterations: int) -> list[dict]:
    """Per block: the median over images of ``‖x_k − x*‖`` for ``k = 0 … iterations`` and of
    the a-priori bound ``L_g^k/(1 − L_g)·‖g(y)‖`` (``y`` the block's output at ``x*``)."""
    rows = []
    h = x
    for layer in model.layers:
        if isinstance(layer, flows.IResNetBlock):
            y = layer.forward(h)

            def step(xk, _, y=y, layer=layer, target=h):
                err = jnp.sqrt(jnp.sum((xk - target) ** 2, axis=(1, 2, 3)))
                return y - layer.residual(xk), err

            _, errs = jax.jit(lambda y, step=step: jax.lax.scan(step, y, None, iterations + 1))(y)
            lip = float(layer.lipschitz_bound())
            first = np.asarray(jnp.sqrt(jnp.sum(layer.residual(y) ** 2, axis=(1, 2, 3))))
            ks = np.arange(iterations + 1)
            bound = lip ** ks[:, None] / (1 - lip) * first[None, :]
            # float32: each step rounds at ~eps32 (|y| + |g|), so the iterates stall within
            # that over (1 - L) of x*; 10x for the conv sums' accumulated rounding
            size = np.asarray(jnp.sqrt(jnp.sum(y**2, axis=(1, 2, 3)))) + first
            floor = 10 * float(jnp.finfo(jnp.float32).eps) * size / (1 - lip)
            rows.append(
                {
                    "lipschitz_bound": lip,
                    "error": np.median(np.asarray(errs), axis=1),
                    "bound": np.median(bound, axis=1),
                    "float32_floor": float(np.median(floor)),
                    "below_bound": bool(np.all(np.asarray(errs) <= bound + floor[None, :])),
                }
            )
        h = layer.forward(h)
    return rows


def run(config: Config, out: pathlib.Path) -> dict:
    folder = experiment_dir(out, NAME)
    unet, test_set, unet_history = trained_seed_unet(train_profile=config.train_profile)
    train_set = models.data.synthetic_scenes(jax.random.key(0), config.n_train, size=32)
    x = test_set.images[: config.targets]
    step_x, step_y = train_set.images[:32], train_set.masks[:32]
    unet_bytes = train_step_bytes(unet, step_x, step_y)
    rows: dict[str, dict] = {}

    # the seed U-Net, inverted by the engine
    unet_fwd = _jitted(unet)
    y = unet_fwd(x)
    apply_fn, params = models.split(unet)
    start = time.perf_counter()
    x_hat = invert_batch(
        lambda v: apply_fn(params, v[None])[0],
        y,
        x_shape=x.shape[1:],
        key=jax.random.key(7),
        init_scale=0.1,
        optimizer="adam",
        learning_rate=0.05,
        steps=config.invert_steps,
        bounds=(0.0, 1.0),
    ).x
    seconds = time.perf_counter() - start
    rows[type(unet).__name__] = _row(
        "seed U-Net, engine inversion",
        unet,
        unet_history["eval"][-1]["dice"],
        _errors(x_hat, x),
        seconds,
        unet_bytes,
        unet_bytes,
    )

    # its learned inverse
    decoder = learned_inverse(
        unet, train_steps=config.decoder_steps, n_train=config.decoder_n_train
    )
    x_hat, seconds = _timed(_jitted(decoder), y)
    decoder_bytes = _regression_step_bytes(decoder, unet_fwd(step_x), step_x)
    rows[type(decoder).__name__] = _row(
        "learned inverse of the U-Net",
        decoder,
        None,
        _errors(x_hat, x),
        seconds,
        decoder_bytes,
        unet_bytes,
    )

    # the invertible networks
    trained = {}
    for name, arch in architectures(config).items():
        if name not in config.networks:
            continue
        model, history = _invertible(name, arch, config, train_set, test_set)
        trained[name] = model
        forward, inverse = _jitted(model), _jitted(model, "inverse")
        x_hat, seconds = _timed(inverse, forward(x))
        rows[name] = _row(
            "invertible",
            model,
            history["eval"][-1]["dice"],
            _errors(x_hat, x),
            seconds,
            train_step_bytes(model, step_x, step_y),
            unet_bytes,
        )

    inexact = flag_inexact(rows)
    iterations = []
    if "IResNet" in trained:
        iterations = iresnet_iterations(trained["IResNet"], x, config.plot_iterations)
        _plot_iterations(folder, iterations)
    _plot_table(folder, rows)
    table = _table(rows)
    (folder / "table.md").write_text(table + "\n")
    print(table)

    names = [n for n in INVERTIBLE if n in trained]
    goal = {n: rows[n]["dice"] >= DICE_GOAL and rows[n]["round_trip_max"] <= GOAL for n in names}
    unet_name = type(unet).__name__
    summary = {
        **rows,
        "inexact": inexact,
        "iresnet_iterations": iterations,
        "references": [
            reference(
                "invertible networks invert exactly; optimisation of the U-Net approximates",
                f"every invertible round-trip max < {EXACT:g}; U-Net engine median > 1e-2",
                {n: rows[n]["round_trip_max"] for n in (*names, unet_name)},
                not inexact and rows[unet_name]["round_trip_median"] > 1e-2,
            ),
            reference(
                "every invertible network segments and round-trips after training",
                f"dice >= {DICE_GOAL}, round-trip max <= {GOAL:g} (float32)",
                {n: [rows[n]["dice"], rows[n]["round_trip_max"]] for n in names},
                all(goal.values()),
                source="issue 12",
            ),
            reference(
                "i-ResNet fixed-point error below the a-priori bound L^k/(1-L)·‖x1-x0‖",
                "every block, every k",
                [r["lipschitz_bound"] for r in iterations],
                bool(iterations) and all(r["below_bound"] for r in iterations),
                source="Banach fixed-point theorem",
            ),
        ],
    }
    write_metrics(folder, summary, config)
    return summary


def flag_inexact(rows: dict) -> list[str]:
    """The invertible models among ``rows`` whose round-trip max exceeds :data:`EXACT`; each
    is named in a ``RuntimeWarning`` and on stderr, never passed over silently."""
    inexact = [n for n in INVERTIBLE if n in rows and not rows[n]["round_trip_max"] <= EXACT]
    if inexact:
        message = (
            f"{NAME}: the trained inverse of {inexact} is not exact to {EXACT:g} "
            f"(round-trip max {[rows[n]['round_trip_max'] for n in inexact]})"
        )
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        print(message, file=sys.stderr)
    return inexact


def _regression_step_bytes(model, x, y) -> int:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        return jnp.mean((nnx.merge(graphdef, p, rest, copy=True)(x) - y) ** 2)

    stats = jax.jit(jax.value_and_grad(loss)).lower(params).compile().memory_analysis()
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def _row(kind, model, dice, errors, seconds, step_bytes, unet_bytes) -> dict:
    return {
        "kind": kind,
        "params": models.count_parameters(model),
        "dice": None if dice is None else float(dice),
        "round_trip_median": float(np.median(errors)),
        "round_trip_max": float(np.max(errors)),
        "inverse_seconds": float(seconds),
        "train_step_bytes": step_bytes,
        "memory_vs_unet": step_bytes / unet_bytes,
    }


def _table(rows: dict) -> str:
    lines = [
        "| model | params | dice | round trip median | round trip max | inverse s | "
        "train-step memory (MiB) | vs U-Net |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        dice = "—" if r["dice"] is None else f"{r['dice']:.4f}"
        lines.append(
            f"| {name} | {r['params']:,} | {dice} | {r['round_trip_median']:.2e} | "
            f"{r['round_trip_max']:.2e} | {r['inverse_seconds']:.3g} | "
            f"{r['train_step_bytes'] / 2**20:.1f} | {r['memory_vs_unet']:.2f}× |"
        )
    return "\n".join(lines)


def _plot_iterations(folder, iterations: list[dict]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, r in enumerate(iterations):
        ks = np.arange(len(r["error"]))
        (line,) = ax.semilogy(ks, r["error"], label=f"block {i + 1}: measured")
        ax.semilogy(
            ks,
            r["bound"],
            "--",
            color=line.get_color(),
            label=f"block {i + 1}: bound, L = {r['lipschitz_bound']:.3f}",
        )
    ax.set_xlabel("fixed-point iterations k")
    ax.set_ylabel("‖x_k − x*‖ (median over test scenes)")
    ax.set_title("i-ResNet inverse: error vs a-priori bound L^k/(1−L)·‖x₁ − x₀‖", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, folder / "iresnet_iterations.png")


def _plot_table(folder, rows: dict):
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    med = [rows[n]["round_trip_median"] for n in names]
    mx = [rows[n]["round_trip_max"] for n in names]
    pos = np.arange(len(names))
    a.bar(pos - 0.2, med, 0.4, label="median")
    a.bar(pos + 0.2, mx, 0.4, label="max")
    a.set_yscale("log")
    a.axhline(EXACT, color="k", ls="--", lw=0.8, label=f"exact: {EXACT:g}")
    a.axhline(GOAL, color="r", ls=":", lw=0.8, label=f"goal: {GOAL:g}")
    a.set_xticks(pos, names, rotation=30, ha="right", fontsize=7)
    a.set_ylabel("round trip ‖x̂ − x‖/‖x‖ (float32)")
    a.set_xlabel("model")
    a.legend(fontsize=6)
    dice = [rows[n]["dice"] or 0.0 for n in names]
    b.bar(pos, dice)
    b.axhline(DICE_GOAL, color="r", ls=":", lw=0.8, label=f"goal: {DICE_GOAL}")
    b.set_ylim(0.9, 1.0)
    b.set_xticks(pos, names, rotation=30, ha="right", fontsize=7)
    b.set_ylabel("test dice (decoder: not a segmenter)")
    b.set_xlabel("model")
    b.legend(fontsize=6)
    save_figure(fig, folder / "summary.png")


def main(argv=None):
    return cli(run, get_config, NAME, __doc__, argv)


if __name__ == "__main__":
    main()
