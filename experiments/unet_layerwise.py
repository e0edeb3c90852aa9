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
steps). The algorithm is the library's, ``inversion.analysis.layerwise`` on
``models.activations_fn(model)``: all (image, layer) pairs run as ONE batched engine call (a
one-hot layer selector appended to each target restricts the normalised loss to the row's
layer, so a row's objective is exactly that of inverting ``Phi_l`` alone, and the step
compiles once), and one float64 Jacobian per input certifies every layer.

Reported per layer (means over images; PSNR: median, since exact recoveries give ~150 dB): the
normalised feature error, the image relative error ``||x_hat - x0|| / ||x0||`` and PSNR, and the
float64 certificate of ``d Phi_l / d x`` at each ``x0``: the nullity at the three precisions of
``inversion.analysis.PRECISIONS`` (exact ``max(m, n) eps_64``; float32 ``max(m, n) eps_32``;
8-bit ``1/255``; each the largest over the images) and the largest condition number. Classes
(``inversion.analysis.CLASSES``): ``lossy`` (exact nullity > 0: the network destroys input
directions), ``lost_below_float32`` (exact 0, float32 > 0), ``optimiser_limited`` (float32
nullity 0, image error > 0.1), ``lost_at_8bit`` and ``recovered`` (image error <= 0.1).

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

import numpy as np

import models
from experiments.common import (
    TrainProfile,
    cli,
    experiment_dir,
    layer_metrics,
    save_figure,
    trained_seed_unet,
    write_metrics,
)
from experiments.config import ExperimentConfig, select_profile
from experiments.unet_verdict import describe, output_verdict, references
from inversion.analysis import layerwise

NAME = "unet_layerwise"
SIZE = 16  # inputs: the centre SIZE x SIZE crops of test scenes (input dimension 256)
FAILED_ERROR = 0.1  # image relative error above which a reconstruction counts as failed
VARIANTS = {"skips": True, "no_skips": False}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """Defaults: the ``default`` profile."""

    positive = ("images", "steps", "lr", "verdict_scenes")
    non_empty = ("init_keys",)

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
        noise = np.random.default_rng(config.seed).normal(size=x_true.shape[1:])
        report = layerwise(
            models.activations_fn(model),
            np.asarray(x_true, np.float32),
            steps=config.steps,
            lr=config.lr,
            start=np.clip(0.5 + 0.1 * noise, 0.0, 1.0).astype(np.float32),
            bounds=(0.0, 1.0),
            failed_error=FAILED_ERROR,
        )
        images[variant] = report.x_hat
        results[variant] = {
            "layers": report.names,
            "test_dice": history["eval"][-1]["dice"],
            "per_layer": {layer.name: layer_metrics(layer) for layer in report},
            **report.by_class(),
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
