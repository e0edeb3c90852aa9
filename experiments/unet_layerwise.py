"""U-Net layer by layer: how well does each intermediate activation determine the input?

Command:  python -m experiments.unet_layerwise [--out results] [--quick | --full] [--set k=v ...]
Runtime (2-core CPU): default 140 s in a cold ``make reproduce`` on a fresh clone of an
otherwise idle machine (5 min 56 s for all experiments; 274 s and 10 min 12 s beside other
jobs), most of it training the six U-Nets of the output verdict (seed and no-skip U-Net x
init keys 0, 1, 2; cached afterwards); --quick 124 s in the test suite (two quick U-Nets trained); --full (12 images x 2,000
steps, 16 verdict scenes) not yet measured.

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
float64 certificate of ``d Phi_l / d x`` at each ``x0`` (``inversion.analysis.certify_batch``,
one Jacobian per input for all layers): the nullity at the three precisions of
``inversion.analysis.PRECISIONS`` (exact ``max(m, n) eps_64``; float32 ``max(m, n) eps_32``;
8-bit ``1/255``; each the largest over the images) and the largest condition number. Classes
(:func:`classify`): ``lossy`` (exact nullity > 0: the network destroys input directions),
``lost_below_float32`` (exact 0, float32 > 0), ``optimiser_limited`` (float32 nullity 0, image
error > 0.1), ``lost_at_8bit`` and ``recovered`` (image error <= 0.1).

The reference rows (one per precision) state the U-Net *output* conclusion from
``experiments.unet_verdict``: certificates at full 32x32 test scenes for the seed U-Net and the
no-skip U-Net, each trained with init keys 0, 1 and 2; ``preimage_spread`` shows the same rows.

Expected result (measured: ``python -m experiments reproduce --only unet_layerwise
preimage_spread``, default profile, 2-core CPU; the same figures in ``make reproduce``):
* with skips (16x16 crops, 6 images): enc1, pool1, enc2, cat2 and cat1 are recovered (error
  <= 0.1; enc1 and pool1 exactly). The bottleneck and up2 are the only lossy layers: exact
  nullity 101 of 256 (dead ReLUs on a 4x4x64 map). The skip concatenations restore full rank,
  so ``out`` has exact nullity 0 but 1 direction below float32 rounding and 4 below 1/255
  (condition number up to 3.9e4); 600 Adam steps leave 25 % image error there, and pool2, dec2
  and up1 are optimiser-limited (16-23 %).
* without skips: no layer is lossy in exact arithmetic, but up1 and out lose 3 and 22
  directions below float32 rounding and 72 and 184 at 8-bit precision (out: condition number
  2.4e8); the output reconstruction has 46 % error.
* the U-Net output verdict (32x32 scenes, init keys 0, 1, 2): exact nullity 0 at all 6 scenes
  for every key, with and without skips: the network does not destroy information; below
  float32 rounding the seed U-Net loses 1-2 directions at 4, 4 and 6 of the 6 scenes
  (condition numbers 5.0e3 to 4.1e6), the no-skip U-Net 196-286 at every scene; at 8-bit
  precision 12-33 directions (no skips: 727-777 of 1024). Reference rows: exact **no**,
  float32 yes, 8-bit yes; the same for all three keys. Quick profile: one key, 2 scenes.
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
    save_figure,
    trained_seed_unet,
    write_metrics,
)
from experiments.config import ExperimentConfig, select_profile
from experiments.unet_verdict import describe, output_verdict, references
from inversion.analysis import PRECISIONS, certify_batch, summarize
from inversion.engine import invert_batch
from inversion.metrics import psnr, relative_error

NAME = "unet_layerwise"
SIZE = 16  # inputs: the centre SIZE x SIZE crops of test scenes (input dimension 256)
FAILED_ERROR = 0.1  # image relative error above which a reconstruction counts as failed
VARIANTS = {"skips": True, "no_skips": False}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """Defaults: the ``default`` profile."""

    images: int = 6  # test scenes (centre crops) inverted from every layer
    steps: int = 600  # Adam steps per reconstruction
    lr: float = 0.05  # peak of the cosine-decayed learning rate
    seed: int = 0  # numpy seed of the shared start clip(0.5 + 0.1 N(0, I))
    train_profile: TrainProfile = "default"  # training sizes of the two U-Nets
    init_keys: tuple[int, ...] = (0, 1, 2)  # U-Net init keys of the output verdict's spread
    verdict_scenes: int = 6  # full 32x32 test scenes certified for the output verdict


def get_config(profile: str = "default") -> Config:
    """``'quick'``: 2 images x 200 steps (U-Nets trained quick); ``'default'``: 6 x 600;
    ``'full'``: 12 x 2,000."""
    return select_profile(
        profile,
        quick=Config(images=2, steps=200, train_profile="quick", init_keys=(0,), verdict_scenes=2),
        default=Config(),
        full=Config(images=12, steps=2000, verdict_scenes=16),
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


def layer_certificates(model, inputs) -> dict:
    """Per layer, the float64 certificate of ``d Phi_l / d x`` at every input
    (``inversion.analysis.certify_batch`` on the dict of named activations: one Jacobian per
    input, one certificate per layer), summarised over the inputs at the three precisions
    (``inversion.analysis.summarize``): the largest nullity, the largest condition number and
    the smallest ``sigma_min`` over the inputs."""
    names = models.layer_names(model)
    graphdef, params = nnx.split(model)

    def layers(x):
        acts = nnx.merge(graphdef, params).features(x[None])
        return {n: acts[n][0] for n in names}

    certs = certify_batch(layers, np.asarray(inputs, np.float32))
    out = {}
    for name in names:
        s = summarize([c[name] for c in certs])
        out[name] = {
            "nullity": s["exact"]["max_nullity"],
            "nullity_float32": s["float32"]["max_nullity"],
            "nullity_8bit": s["8-bit"]["max_nullity"],
            "condition_number": s["condition_number_range"][1],
            "sigma_min": s["sigma_min_range"][0],
            "n_in": s["n_in"],
            "n_out": s["n_out"],
            "nullity_per_image": {p: s[p]["nullity_per_input"] for p in PRECISIONS},
        }
    return out


def classify(per_layer: dict) -> dict:
    """The layers in each class, from their certificates and reconstruction errors:

    * ``lossy``: exact nullity > 0 at some input (the network destroys input directions);
    * ``lost_below_float32``: exact nullity 0 but float32 nullity > 0 (the directions exist
      but no float32 computation can resolve them);
    * ``optimiser_limited``: float32 nullity 0 (the input is determined even in float32), yet
      the image error exceeds ``FAILED_ERROR``: the optimiser did not find it;
    * ``lost_at_8bit``: nullity at 1/255 > 0 (not recoverable from 8-bit-accurate features);
    * ``recovered``: image error <= ``FAILED_ERROR``.
    """
    layers = list(per_layer)
    return {
        "lossy": [n for n in layers if per_layer[n]["nullity"] > 0],
        "lost_below_float32": [
            n
            for n in layers
            if per_layer[n]["nullity"] == 0 and per_layer[n]["nullity_float32"] > 0
        ],
        "optimiser_limited": [
            n
            for n in layers
            if per_layer[n]["nullity_float32"] == 0
            and per_layer[n]["relative_error"] > FAILED_ERROR
        ],
        "lost_at_8bit": [n for n in layers if per_layer[n]["nullity_8bit"] > 0],
        "recovered": [n for n in layers if per_layer[n]["relative_error"] <= FAILED_ERROR],
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
        certs = layer_certificates(model, x_true)
        for name in names:
            per_layer[name].update(certs[name])
        results[variant] = {
            "layers": names,
            "test_dice": history["eval"][-1]["dice"],
            "per_layer": per_layer,
            **classify(per_layer),
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
            ("nullity", "nullity, exact (float64)", False),
            ("nullity_float32", "nullity below float32 rounding", False),
            ("nullity_8bit", "nullity at 8-bit precision (1/255)", False),
            ("condition_number", "condition number", True),
        ],
        f"input directions each layer loses ({SIZE}x{SIZE} inputs, of {SIZE * SIZE}; "
        "max over images; inversion.analysis.certify)",
    )
    _plot_grid(directory / "layerwise_reconstructions.png", results, np.asarray(x_true), images)
    verdict = output_verdict(
        train_profile=config.train_profile, init_keys=config.init_keys, scenes=config.verdict_scenes
    )
    print(describe(verdict))
    metrics = {
        "constants": {"size": SIZE, "failed_error": FAILED_ERROR},
        **results,
        "output_verdict": verdict,
        "references": references(verdict),
    }
    write_metrics(directory, metrics, config)
    return metrics


def main(argv=None):
    return cli(run, get_config, NAME, __doc__, argv)


if __name__ == "__main__":
    main()
