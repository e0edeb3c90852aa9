"""U-Net layer by layer: how well does each intermediate activation determine the input?

Command:  python -m experiments.unet_layerwise [--out results] [--quick | --full] [--set k=v ...]
Runtime (2-core CPU, measured on a machine shared with other jobs, both U-Nets cached):
--quick 30-55 s, default 2-2.5 min, --full (12 images x 2,000 steps, not yet measured: expect
~15 min). A cold cache adds the training of the two U-Nets (quick ~20 s each, default and
full ~70 s each).

Method (Mahendran & Vedaldi 2015). Inputs ``x0`` are the centre 16x16 crops of test scenes
(the U-Nets are fully convolutional; input dimension n = 256, so dense Jacobians are cheap and
the inversions and the Jacobians see the same inputs). For every named layer ``l`` of the
trained seed U-Net (enc1, pool1, enc2, pool2, bottleneck, up2, cat2, dec2, up1, cat1, out) and
of the same U-Net trained without skip connections (same data, steps and init key), each
``x0`` is reconstructed from ``Phi_l(x0)`` by

    x_hat = argmin_{x in [0,1]^n}  ||Phi_l(x) - Phi_l(x0)||^2 / ||Phi_l(x0)||^2

(Adam, cosine-decayed learning rate 0.05; one start ``clip(0.5 + 0.1 N(0, I))`` shared by all
rows; quick 2 images x 200 steps, default 6 images x 600 steps, full 12 images x 2,000
steps). All (image, layer) pairs run as ONE batched engine call: ``fn`` maps ``x`` to all
activations concatenated, and the loss is the normalised loss restricted to the row's layer (a
one-hot layer selector is appended to each target). A row's objective is exactly that of
inverting ``Phi_l`` alone, but the step compiles once instead of once per layer.

Reported per layer (means over images; PSNR: median, since exact recoveries give ~150 dB): the
normalised feature error, the image relative error ``||x_hat - x0|| / ||x0||`` and PSNR, and the
numerical rank of the Jacobian ``d Phi_l / d x`` at each ``x0`` (rank = #{sigma_i > max(m, n)
eps_32 sigma_1}, via ``inversion.analysis.summarize_spectrum``; the smallest rank over the
images is reported), its nullity ``256 - rank`` (input directions the layer cannot see near
``x0``), the effective rank ``#{sigma_i > 1e-3 sigma_1}`` and the condition number.
``lossy``: layers with nullity > 0 (the network itself discards input directions).
``optimiser_limited``: layers with nullity 0 (the input is locally determined) whose image
error still exceeds 0.1 (the optimiser did not find it in the step budget).

Expected result (measured, default profile; quick gives the same classes):
* with skips: enc1 and pool1 are inverted exactly (PSNR ~150 dB, the first conv + ReLU with 16
  channels is injective here), enc2 / cat2 / cat1 to 3-8 % error. The bottleneck and up2 are
  the only lossy layers: rank 151 of 256 (nullity 105, dead ReLUs on a 4x4x64 map). The skip
  concatenations restore full rank (cat2, cat1: rank 256), so the OUTPUT of the seed U-Net has
  a full-rank Jacobian at every test input (nullity 0, condition number up to 2.4e4): its input
  is locally determined, yet 600 Adam steps recover it only to ~20 % relative error (PSNR
  ~19 dB), i.e. ``out`` is optimiser-limited (ill-conditioned), as are pool2, dec2 and up1.
  See ``preimage_spread`` for the output inverted with 12,000 steps (~1.8 % error).
* without skips: information is lost for good in the decoder: up1 (nullity 4) and out
  (nullity 22, effective rank 124 of 256); the output reconstruction has ~48 % error (PSNR
  ~11 dB), against ~20 % with skips.
* the reference row ("U-Net output cannot be inverted exactly", judged as nullity(out) > 0 for
  the seed U-Net) therefore does NOT agree: the seed U-Net's output keeps the input locally;
  the no-skip variant's output does lose it.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import models
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
from inversion.analysis.jacobian import summarize_spectrum
from inversion.engine import invert_batch
from inversion.metrics import psnr, relative_error

NAME = "unet_layerwise"
SIZE = 16  # inputs: the centre SIZE x SIZE crops of test scenes (input dimension 256)
FAILED_ERROR = 0.1  # image relative error above which a reconstruction counts as failed
EFFECTIVE_RTOL = 1e-3  # "effective rank": singular values above this fraction of sigma_1
VARIANTS = {"skips": True, "no_skips": False}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """Defaults: the ``default`` profile."""

    images: int = 6  # test scenes (centre crops) inverted from every layer
    steps: int = 600  # Adam steps per reconstruction
    lr: float = 0.05  # peak of the cosine-decayed learning rate
    seed: int = 0  # numpy seed of the shared start clip(0.5 + 0.1 N(0, I))
    train_profile: TrainProfile = "default"  # training sizes of the two U-Nets


def get_config(profile: str = "default") -> Config:
    """``'quick'``: 2 images x 200 steps (U-Nets trained quick); ``'default'``: 6 x 600;
    ``'full'``: 12 x 2,000."""
    return select_profile(
        profile,
        quick=Config(images=2, steps=200, train_profile="quick"),
        default=Config(),
        full=Config(images=12, steps=2000),
    )


def trained_unet(*, skips: bool, train_profile: str = "default"):
    """``(model, test_set, history)``: the seed U-Net (``skips=True``, shared with every
    experiment) or the same architecture without skips, trained the same way and cached."""
    return trained_seed_unet(train_profile=train_profile, skips=skips)


def stacked_features(model):
    """``(feats, names)``: ``feats(x)`` maps one ``(H, W, C)`` input to all named activations,
    flattened and concatenated in forward order (``names``)."""
    names = models.layer_names(model)
    graphdef, params = nnx.split(model)

    def feats(x):
        acts = nnx.merge(graphdef, params).features(x[None])
        return jnp.concatenate([acts[n].ravel() for n in names])

    return feats, names


def _segments(model, names, shape) -> tuple[np.ndarray, dict]:
    """Per entry of the stacked vector, the index of its layer; and each layer's shape."""
    graphdef, params = nnx.split(model)
    acts = jax.eval_shape(lambda x: nnx.merge(graphdef, params).features(x), jnp.zeros((1, *shape)))
    shapes = {n: tuple(acts[n].shape[1:]) for n in names}
    seg = np.concatenate([np.full(int(np.prod(shapes[n])), i) for i, n in enumerate(names)])
    return seg.astype(np.int32), shapes


def selected_layer_loss(segment: np.ndarray):
    """Normalised loss on one layer of the stacked activations.

    ``target = [Phi(x0) (all layers, D entries), onehot(l) (L entries)]``, ``pred = [Phi(x),
    zeros(L)]``; with ``w_i = onehot[segment_i]`` the loss is
    ``sum_i w_i (Phi_i(x) - Phi_i(x0))^2 / sum_i w_i Phi_i(x0)^2`` (denominator 1 if zero).
    """
    seg, d = jnp.asarray(segment), int(segment.size)

    def loss(pred, target):
        w = target[d:][seg]
        feats = target[:d]
        den = jnp.sum(w * feats**2)
        return jnp.sum(w * (pred[:d] - feats) ** 2) / jnp.where(den > 0, den, 1.0)

    return loss


def _invert_layers(model, x_true, *, steps, lr, seed):
    """Reconstruct every image from every layer; returns per-layer metrics and images."""
    feats, names = stacked_features(model)
    seg, shapes = _segments(model, names, x_true.shape[1:])
    n_img, n_lay = x_true.shape[0], len(names)
    phi0 = np.asarray(jax.jit(jax.vmap(feats))(x_true))  # (n_img, D)
    onehot = np.tile(np.eye(n_lay, dtype=np.float32), (n_img, 1))
    targets = np.concatenate([np.repeat(phi0, n_lay, axis=0), onehot], axis=1)
    noise = np.random.default_rng(seed).normal(size=x_true.shape[1:])
    start = np.clip(0.5 + 0.1 * noise, 0.0, 1.0).astype(np.float32)
    result = invert_batch(
        lambda x: jnp.concatenate([feats(x), jnp.zeros((n_lay,), x.dtype)]),
        targets,
        x0=np.broadcast_to(start, (n_img * n_lay, *start.shape)),
        loss=selected_layer_loss(seg),
        optimizer=optax.adam(optax.cosine_decay_schedule(lr, steps)),
        steps=steps,
        bounds=(0.0, 1.0),
    )
    x_hat = np.asarray(result.x).reshape(n_img, n_lay, *x_true.shape[1:])
    feat_err = np.asarray(result.loss).reshape(n_img, n_lay)  # the row's own objective
    per_layer = {}
    for i, name in enumerate(names):
        img_err = relative_error(x_hat[:, i], x_true, reduce=False)
        img_psnr = psnr(x_hat[:, i], x_true, reduce=False)
        per_layer[name] = {
            "shape": list(shapes[name]),
            "feature_error": float(np.mean(feat_err[:, i])),
            "feature_error_per_image": feat_err[:, i],
            "relative_error": float(np.mean(img_err)),
            "relative_error_per_image": img_err,
            "psnr": float(np.median(img_psnr)),  # median: exact recoveries give ~150 dB
            "psnr_per_image": img_psnr,
        }
    return names, per_layer, x_hat


def singular_values(jac: np.ndarray) -> np.ndarray:
    """Singular values of a tall ``(m, n)`` matrix as ``sqrt(eig(J^T J))`` in float64.

    The eigenvalues carry an absolute error of about ``1e-16 sigma_1^2``, so every singular
    value above ``~1e-8 sigma_1`` is exact to float32 precision, far below the rank threshold
    ``max(m, n) eps_32 sigma_1 >= 3e-5 sigma_1``. (LAPACK's SVD of the tall blocks was 5-20x
    slower next to XLA's thread pool on 2 cores.)
    """
    gram = jac.T @ jac
    return np.sqrt(np.maximum(np.linalg.eigvalsh(gram), 0.0))[::-1]


def _jacobian_ranks(model, inputs):
    """Numerical rank, nullity and effective rank of each layer's Jacobian at every input;
    aggregated as the smallest rank (largest nullity) over the inputs.

    ``J = d Phi / d x`` of the stacked activations is built once per input by forward-mode
    autodiff (the ``jacfwd`` of :func:`inversion.analysis.dense_jacobian`, vmapped over the
    inputs so it compiles once); each layer's rows are one block, summarised by
    :func:`inversion.analysis.summarize_spectrum`.
    """
    feats, names = stacked_features(model)
    seg, _ = _segments(model, names, inputs.shape[1:])
    jacs = np.asarray(jax.jit(jax.vmap(jax.jacfwd(feats)))(inputs), np.float64)
    jacs = jacs.reshape(inputs.shape[0], seg.size, -1)  # (images, D, n_in)
    n_in = jacs.shape[2]
    rows = {n: [] for n in names}
    for jac in jacs:
        for i, name in enumerate(names):
            block = jac[seg == i]
            s = singular_values(block)
            spec = summarize_spectrum(s, n_in=n_in, n_out=block.shape[0])
            eff = summarize_spectrum(
                s, n_in=n_in, n_out=block.shape[0], tol=EFFECTIVE_RTOL * float(s[0])
            )
            rows[name].append(
                {
                    "rank": spec.rank,
                    "nullity": spec.nullity,
                    "effective_rank": eff.rank,
                    "condition_number": spec.condition_number,
                    "n_in": n_in,
                    "n_out": spec.n_out,
                }
            )
    return {
        n: {
            "rank": min(r["rank"] for r in v),
            "nullity": max(r["nullity"] for r in v),
            "effective_rank": min(r["effective_rank"] for r in v),
            "condition_number": max(r["condition_number"] for r in v),
            "n_in": n_in,
            "n_out": v[0]["n_out"],
            "per_image": v,
        }
        for n, v in rows.items()
    }


def _order(results) -> list[str]:
    """Union of the variants' layer names in forward order (the skip variant has them all)."""
    names = list(results["skips"]["layers"])
    for n in results["no_skips"]["layers"]:
        if n not in names:
            names.append(n)
    return names


def _plot_curves(path, results, keys, title):
    import matplotlib.pyplot as plt

    order = _order(results)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 3.4))
    for ax, (key, label, log) in zip(np.atleast_1d(axes), keys, strict=True):
        for variant, style in (("skips", "o-"), ("no_skips", "s--")):
            layers = results[variant]["per_layer"]
            xs = [order.index(n) for n in layers]
            ax.plot(xs, [layers[n][key] for n in layers], style, label=variant.replace("_", " "))
        if key == "rank":
            ax.axhline(
                results["skips"]["per_layer"]["enc1"]["n_in"],
                color="k",
                lw=0.8,
                ls=":",
                label="input dimension",
            )
        if log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(order)), order, rotation=60, fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def _plot_grid(path, results, x_true, images):
    import matplotlib.pyplot as plt

    order = _order(results)
    rows = [(v, i) for v in VARIANTS for i in range(min(2, x_true.shape[0]))]
    fig, axes = plt.subplots(
        len(rows), len(order) + 1, figsize=(1.25 * (len(order) + 1), 1.4 * len(rows)), squeeze=False
    )
    for r, (variant, i) in enumerate(rows):
        axes[r, 0].imshow(x_true[i, ..., 0], cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title("input" if r == 0 else "", fontsize=7)
        axes[r, 0].set_ylabel(f"{variant.replace('_', ' ')} #{i}", fontsize=7)
        layers = results[variant]["layers"]
        for c, name in enumerate(order, start=1):
            ax = axes[r, c]
            if name in layers:
                ax.imshow(
                    images[variant][i, layers.index(name), ..., 0], cmap="gray", vmin=0, vmax=1
                )
                psnr_i = results[variant]["per_layer"][name]["psnr_per_image"][i]
                ax.set_xlabel(f"{float(psnr_i):.1f} dB", fontsize=6, labelpad=1)
            if r == 0:
                ax.set_title(name, fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
    fig.suptitle("reconstruction of the input from each layer (PSNR below)", fontsize=9)
    save_figure(fig, path)


def run(config: Config, out: pathlib.Path) -> dict:
    directory = experiment_dir(out, NAME)
    results, images = {}, {}
    x_true = None
    for variant, skips in VARIANTS.items():
        model, test_set, history = trained_unet(skips=skips, train_profile=config.train_profile)
        lo = (test_set.images.shape[1] - SIZE) // 2
        x_true = test_set.images[: config.images, lo : lo + SIZE, lo : lo + SIZE]
        names, per_layer, images[variant] = _invert_layers(
            model, x_true, steps=config.steps, lr=config.lr, seed=config.seed
        )
        jac = _jacobian_ranks(model, x_true)
        for name in names:
            per_layer[name].update({k: v for k, v in jac[name].items() if k != "per_image"})
            per_layer[name]["jacobian_per_image"] = jac[name]["per_image"]
        results[variant] = {
            "layers": names,
            "test_dice": history["eval"][-1]["dice"],
            "per_layer": per_layer,
            "lossy": [n for n in names if per_layer[n]["nullity"] > 0],
            "optimiser_limited": [
                n
                for n in names
                if per_layer[n]["nullity"] == 0 and per_layer[n]["relative_error"] > FAILED_ERROR
            ],
            "recovered": [n for n in names if per_layer[n]["relative_error"] <= FAILED_ERROR],
        }
    _plot_curves(
        directory / "layerwise_error.png",
        results,
        [
            ("feature_error", "normalised feature error", True),
            ("relative_error", "image relative error", False),
            ("psnr", "PSNR [dB]", False),
        ],
        "reconstruction from each layer, with and without skips",
    )
    _plot_curves(
        directory / "layerwise_rank.png",
        results,
        [
            ("rank", f"Jacobian rank ({SIZE}x{SIZE} input)", False),
            ("effective_rank", f"rank at sigma > {EFFECTIVE_RTOL:g} sigma_1", False),
            ("condition_number", "condition number", True),
        ],
        "local information of each layer about the input (dense Jacobian at x0)",
    )
    _plot_grid(directory / "layerwise_reconstructions.png", results, np.asarray(x_true), images)
    out_skip, out_plain = (results[v]["per_layer"]["out"] for v in VARIANTS)
    metrics = {
        "constants": {
            "size": SIZE,
            "failed_error": FAILED_ERROR,
            "effective_rtol": EFFECTIVE_RTOL,
        },
        **results,
        "references": [
            reference(
                "U-Net output (with skips) loses input information (Jacobian nullity of out > 0)",
                "cannot be inverted exactly",
                {
                    "out_nullity": out_skip["nullity"],
                    "out_condition_number": out_skip["condition_number"],
                    "out_image_relative_error": out_skip["relative_error"],
                    "out_psnr": out_skip["psnr"],
                    "no_skips_out_nullity": out_plain["nullity"],
                    "lossy_layers": results["skips"]["lossy"],
                    "optimiser_limited_layers": results["skips"]["optimiser_limited"],
                },
                out_skip["nullity"] > 0,
                source="seed study (measured: Jacobian rank at x0)",
            )
        ],
    }
    write_metrics(directory, metrics, config)
    return metrics


def main(argv=None):
    return cli(run, get_config, NAME, __doc__, argv)


if __name__ == "__main__":
    main()
