"""How well does each U-Net layer segment? Linear probes on frozen activations (study 002).

Command:  python -m experiments.layer_probes [--out results] [--quick | --full] [--set k=v ...]
Runtime (2-core CPU shared with another job, both U-Nets cached): default 84.5 s (99 s before
the probe inputs were channel-padded to one compile per resolution); --quick 24 s (30 s in the
smoke test, which trains the quick no-skip U-Net); --full not yet measured. The learned
inverses add (same VM, load average 6-8 from other jobs, cold decoder cache, i.e. training
included) 45.1 s to the default profile (whole run 160 s) and 11.1 s to --quick (whole run
70 s); a second run restores them from the model cache (default 3.6 s, --quick 1.5 s).

Method. For every named layer ``l`` of the trained seed U-Net (enc1, pool1, enc2, pool2,
bottleneck, up2, cat2, dec2, up1, cat1, out) and of the same U-Net trained without skips
(``experiments.common.trained_seed_unet``), the frozen activation ``A_l(x)`` is computed once for
every image, and a linear probe (``models.probes``: a 1x1 convolution ``C_l -> 1`` on the
standardised activation, bilinearly resized to the 32x32 input) is trained with Adam on the
training masks with the U-Net's own loss, BCE + soft dice, full batch (quick 100 steps on 64
images, default 150 on 128, full 1,000 on 1,000; learning rate 0.1), then scored with the
per-image hard dice and IoU at ``sigma(z) > 0.5`` on held-out images (quick 32, default 128,
full 256; mean and standard deviation over images). Two tasks:

* ``scenes``: the synthetic scenes the U-Nets were trained on (probe training scenes drawn like
  the U-Nets' training set, key 0; held out: the U-Nets' own test scenes, key 1);
* ``phantoms``: CT-like Shepp-Logan phantoms with their tissue (body) masks
  (``models.data.phantoms(key, n, size=32)``, keys 20 train / 21 test). The U-Nets were trained
  on scenes only and never saw a phantom; only the probes are trained on phantoms.

Baselines per task: a probe on the raw input (the same probe on ``x`` itself) and the network's
own output thresholded at 0 (its own dice, without any probe).

Information content (main figure, third panel): the float64 certificate of ``d A_l / d x`` at
the centre 16x16 crops of test scenes (quick 1, default 2, full 8;
``experiments.common.layer_certificates``: ``inversion.analysis.certify_batch`` on the
dict of named activations, ``summarize``), the largest nullity over the crops at the exact,
float32 and 8-bit precisions. Inversion quality (fourth panel, when ``unet_layerwise`` ran into
the same output folder first, as in ``reproduce``): the median PSNR of the input reconstructed
from each layer, read from its ``metrics.json``.

Learned inverses (Dosovitskiy & Brox 2016; figure ``layer_probes_decoders.png``): for every
layer of the seed U-Net a convolutional decoder ``g_l`` (``models.layer_decoders``: the
``models.decoder`` structure with its sizes scaled to the layer, width ``clip(c_l, 16,
decoder_max_width)``, ``log2(16 / h_l)`` transposed convolutions, ``decoder_depth`` 3x3
convolutions; the activation scaled by ``1 / std`` over the training set, folded into the stem
afterwards) is trained to minimise ``mean ||g_l(A_l(x)) - x||^2`` on the four 16x16 quadrants
of the probes' training scenes (512 crops by default, 256 quick), all eleven decoders as ONE
compiled model (Adam 5e-3, cosine, batch 32; default 200 steps, max width 32, depth 2; quick 20
steps, max width 16, depth 0, only pool1, bottleneck and out; full 1,000, 64, 2), cached (``models.cached_train``). They decode
the centre 16x16 crops of the U-Net's test scenes that ``unet_layerwise`` inverts (its count,
when it ran into the same folder with the same U-Nets; else ``decoder_images``), clipped to
[0, 1]. Beside each layer's median decoder PSNR: the optimisation's median PSNR on the same
crops (``unet_layerwise``'s metrics) and the certificate's visible fraction ``1 - nullity / n``
at the exact, float32 and 8-bit precisions (``unet_layerwise``'s certificate at the same crops
when it ran; else this run's). A layer is "lossy or ill-conditioned" when its exact or float32
nullity is positive.

Reference rows. (1, 2) study 002 ("early layers capture low-level features, the deepest ones
semantics, and the last decoder layers produce the best masks"): on the scenes with the seed
U-Net, the mean probe dice of the early layers (enc1, pool1) below that of the last decoder
layers (dec2, up1, cat1, out), and the best probe among those last decoder layers. (3, only
when ``unet_layerwise`` ran first): the decoder's median PSNR above the optimisation's on every
lossy or ill-conditioned layer, and below it on every injective, well-conditioned one.

Result measured (default profile; held-out dice, mean over 128 images, std 0.005-0.05):

* scenes, seed U-Net: enc1 0.963, pool1 0.916, enc2 0.944, pool2 0.905, bottleneck 0.915,
  up2 0.886, cat2 0.964, dec2 0.972, up1 0.951, cat1 0.991, out 0.997 (its own output 0.998;
  probe on the raw input 0.968). No skips: enc1 0.963, pool1 0.912, enc2 0.954, pool2 0.914,
  bottleneck 0.936, up2 0.941, dec2 0.972, up1 0.948, out 0.978 (own 0.979). The curve is a
  U: high at enc1, lowest around pool2/bottleneck/up2, highest at cat1/out. Early (enc1,
  pool1) mean 0.940 < late decoder (dec2, up1, cat1, out) mean 0.978, best layer ``out``: both
  reference rows agree. But the task is nearly linear in the input: the raw-input probe (0.968)
  beats every intermediate layer except dec2, cat1 and out, so "early layers weak" holds only
  relative to the last decoder layers, by 0.02-0.08 dice.
* phantoms (U-Nets never trained on them): the opposite order. Seed U-Net: enc1 0.930, pool1
  0.905, enc2 0.934, pool2 0.915, bottleneck 0.949, up2 0.861, cat2 0.954, dec2 0.848, up1
  0.647, cat1 0.932, out 0.607 (its own output 0.274; raw-input probe 0.917); no skips: out
  0.592 (own 0.412). Encoder and bottleneck features are generic; the late decoder features are
  specialised to scenes (cat1 is good only through the enc1 half it concatenates).
* information content (2 crops, 16x16, of 256 directions): with skips only the bottleneck and
  up2 lose directions in exact arithmetic (61), yet probes on them still reach 0.89-0.92 dice
  and the full-rank out reaches 0.997; without skips nothing is lost exactly but up1 and out
  lose 1 and 22 directions below float32 rounding (72 and 184 at 8-bit) while being good
  probes (0.948, 0.978). Segmentation quality and input information are unrelated here: the
  mask is a small part of what the input holds.
* learned inverses (``python -m experiments.unet_layerwise --out D`` then ``python -m
  experiments.layer_probes --out D``; 6 test crops; median PSNR, decoder vs optimisation, dB):
  enc1 18.7 vs 157.7, pool1 19.4 vs 152.9, enc2 18.9 vs 27.6, pool2 18.1 vs 18.4, bottleneck
  16.4 vs 15.0, up2 16.6 vs 15.2, cat2 19.0 vs 24.8, dec2 18.4 vs 20.5, up1 17.7 vs 17.8, cat1
  19.5 vs 28.9, out 14.6 vs 16.7. Visible fraction 0.605 (101 of 256 directions lost, exactly)
  at bottleneck and up2, 1.000 elsewhere (out: 1 direction below float32 rounding, 4 at
  8-bit, condition number 3.9e4; up1: 1 at 8-bit). The decoders' PSNR is flat (14.6-19.5 dB: an averaged, blurred
  reconstruction whatever the layer); optimisation's ranges from exact (enc1, pool1) to 15 dB.
  The decoder beats optimisation on the two lossy layers (by 1.3 and 1.4 dB) and optimisation
  beats it on all eight injective, well-conditioned layers (narrowly at pool2 and up1, by 0.3
  and 0.04 dB), but not on the ill-conditioned ``out`` (16.7 vs 14.6): reference row 3 **no**,
  on that one layer. A decoder of 200 steps on 512 crops is a weak learned inverse; the
  comparison is of these sizes, not of the best decoder possible.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import jax
import numpy as np
from flax import nnx

import models
from experiments.common import (
    TrainProfile,
    cli,
    experiment_dir,
    layer_certificates,
    reference,
    save_figure,
    trained_seed_unet,
    write_metrics,
)
from experiments.config import ExperimentConfig, select_profile
from inversion.metrics import psnr as psnr_db
from models.layer_decoders import decode_layers, train_layer_decoders
from models.losses import dice, iou
from models.probes import evaluate_probe, probe_predict, train_probe

NAME = "layer_probes"
VARIANTS = {"skips": True, "no_skips": False}
TASKS = ("scenes", "phantoms")
EARLY = ("enc1", "pool1")
LATE = ("dec2", "up1", "cat1", "out")
CERT_SIZE = 16  # certificates at the centre CERT_SIZE x CERT_SIZE crops (input dimension 256)
BATCH = 128  # images per forward pass when caching activations
PAD_CHANNELS = 64  # probe inputs are zero-padded to this many channels (one compile per size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """Defaults: the ``default`` profile."""

    probe_train: int = 128  # training images of every probe (per task)
    probe_test: int = 128  # held-out images the probes are scored on (per task)
    steps: int = 150  # full-batch Adam steps per probe
    lr: float = 0.1  # Adam learning rate of the probes
    cert_images: int = 2  # test-scene crops certified per layer
    train_profile: TrainProfile = "default"  # training sizes of the two U-Nets
    decoder_steps: int = 200  # Adam steps of the per-layer decoders (learned inverses)
    decoder_max_width: int = 32  # widest decoder (width = clip(channels, 16, this))
    decoder_depth: int = 2  # 3x3 convolutions after a decoder's upsampling
    decoder_images: int = 6  # test crops decoded when unet_layerwise did not run first
    decoder_layers: tuple[str, ...] = ()  # layers given a decoder (empty: every named layer)


def get_config(profile: str = "default") -> Config:
    """``'quick'``: 64/32 images, 100 steps, 1 crop (U-Nets trained quick); ``'default'``:
    128/128, 150 steps, 2 crops; ``'full'``: 1,000/256, 1,000 steps, 8 crops."""
    return select_profile(
        profile,
        quick=Config(
            probe_train=64,
            probe_test=32,
            steps=100,
            cert_images=1,
            train_profile="quick",
            decoder_steps=20,
            decoder_max_width=16,
            decoder_depth=0,
            decoder_images=2,
            decoder_layers=("pool1", "bottleneck", "out"),
        ),
        default=Config(),
        full=Config(
            probe_train=1000,
            probe_test=256,
            steps=1000,
            cert_images=8,
            decoder_steps=1000,
            decoder_max_width=64,
            decoder_images=12,
        ),
    )


def _tasks(config: Config, test_scenes) -> dict:
    """Per task, ``(train images, train masks, test images, test masks)``."""
    scenes = models.data.synthetic_scenes(jax.random.key(0), config.probe_train, size=32)
    train_ph = models.data.phantoms(jax.random.key(20), config.probe_train, size=32)
    test_ph = models.data.phantoms(jax.random.key(21), config.probe_test, size=32)
    n = config.probe_test
    return {
        "scenes": (scenes.images, scenes.masks, test_scenes.images[:n], test_scenes.masks[:n]),
        "phantoms": (train_ph.images, train_ph.masks, test_ph.images, test_ph.masks),
    }


def activations(model, images) -> dict[str, np.ndarray]:
    """Every named activation of the frozen ``model`` for ``images``, in chunks of ``BATCH``."""
    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p).features(x))
    parts = [forward(params, images[i : i + BATCH]) for i in range(0, images.shape[0], BATCH)]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def _pad_channels(features, channels: int = PAD_CHANNELS) -> np.ndarray:
    """``features`` with zero channels appended up to ``channels``. The probe is unchanged (a
    constant channel is standardised to 0, so its weight gets zero gradient and stays 0), but
    all layers of one resolution share one compiled training loop."""
    extra = channels - features.shape[-1]
    if extra <= 0:
        return features
    return np.concatenate([features, np.zeros((*features.shape[:-1], extra), np.float32)], -1)


def _probe(features_train, masks_train, features_test, masks_test, config):
    features_train, features_test = _pad_channels(features_train), _pad_channels(features_test)
    params = train_probe(features_train, masks_train, steps=config.steps, learning_rate=config.lr)
    result = evaluate_probe(params, features_test, masks_test)
    example = np.asarray(probe_predict(params, features_test[:1], masks_test.shape[1:3]))[0, ..., 0]
    return result, example


def _summary(result: dict) -> dict:
    return {
        "dice": result["dice_mean"],
        "dice_std": result["dice_std"],
        "iou": result["iou_mean"],
        "iou_std": result["iou_std"],
        "dice_per_image": result["dice"],
        "iou_per_image": result["iou"],
    }


def _own(logits, masks) -> dict:
    d, j = np.asarray(dice(logits, masks)), np.asarray(iou(logits, masks))
    return {
        "dice": float(d.mean()),
        "dice_std": float(d.std()),
        "iou": float(j.mean()),
        "iou_std": float(j.std()),
    }


def probe_layers(model, data, config) -> tuple[dict, dict]:
    """Per layer, the held-out probe scores; and each layer's probe logits on test image 0."""
    x_train, y_train, x_test, y_test = data
    acts_train, acts_test = activations(model, x_train), activations(model, x_test)
    per_layer, examples = {}, {}
    for name in models.layer_names(model):
        result, examples[name] = _probe(acts_train[name], y_train, acts_test[name], y_test, config)
        per_layer[name] = {"shape": list(acts_test[name].shape[1:]), **_summary(result)}
    own = _own(acts_test["out"], y_test)
    return {"per_layer": per_layer, "own_output": own}, examples


def _order(results) -> list[str]:
    names = list(results["skips"]["layers"])
    for n in results["no_skips"]["layers"]:
        if n not in names:
            names.append(n)
    return names


STYLES = {"skips": ("o-", "C0", "seed U-Net (skips)"), "no_skips": ("s--", "C1", "no-skip U-Net")}


def _plot_main(path, results, baselines, key, label, psnr=None):
    import matplotlib.pyplot as plt

    order = _order(results)
    fig, axes = plt.subplots(1, 4 if psnr else 3, figsize=(20 if psnr else 15, 4.4))
    for ax, task in zip(axes[:2], TASKS, strict=True):
        for variant, (style, color, name) in STYLES.items():
            rows = results[variant][task]["per_layer"]
            xs = [order.index(n) for n in rows]
            ax.errorbar(
                xs,
                [rows[n][key] for n in rows],
                yerr=[rows[n][f"{key}_std"] for n in rows],
                fmt=style,
                color=color,
                capsize=2,
                label=f"probe, {name}",
            )
            own = results[variant][task]["own_output"][key]
            ax.axhline(own, color=color, ls=":", lw=1.2, label=f"{name} own output (z > 0)")
        ax.axhline(baselines[task][key], color="k", ls="-.", lw=1, label="probe on the raw input")
        ax.set_xticks(range(len(order)), order, rotation=60, fontsize=8)
        ax.set_xlabel("layer (forward order)")
        ax.set_ylabel(f"held-out {label} (mean ± std over images)")
        trained = "the U-Nets' own task" if task == "scenes" else "U-Nets never saw phantoms"
        ax.set_title(f"{task} ({trained})", fontsize=9)
        values = [baselines[task][key]] + [results[v][task]["own_output"][key] for v in VARIANTS]
        for v in VARIANTS:
            rows = results[v][task]["per_layer"].values()
            values += [r[key] - r[f"{key}_std"] for r in rows]
        ax.set_ylim(max(0.0, min(values) - 0.05), 1.01)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="best")
    ax = axes[2]
    for variant, (style, color, name) in STYLES.items():
        rows = results[variant]["certificate"]
        xs = [order.index(n) for n in rows]
        for key_n, alpha, prec in (
            ("nullity", 1.0, "exact"),
            ("nullity_float32", 0.7, "float32"),
            ("nullity_8bit", 0.4, "8-bit"),
        ):
            ax.plot(
                xs,
                [rows[n][key_n] for n in rows],
                style,
                color=color,
                alpha=alpha,
                ms=4 if prec == "exact" else 3,
                label=f"{name}, {prec}",
            )
    n_in = CERT_SIZE * CERT_SIZE
    n_crops = len(
        next(iter(results["skips"]["certificate"].values()))["nullity_per_image"]["exact"]
    )
    ax.set_xticks(range(len(order)), order, rotation=60, fontsize=8)
    ax.set_xlabel("layer (forward order)")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=-0.2)
    ax.set_ylabel(f"input directions lost (nullity, of {n_in}; symlog)")
    ax.set_title(
        f"information content: float64 certificate, max over {n_crops} "
        f"{CERT_SIZE}x{CERT_SIZE} crop(s)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper left")
    if psnr:
        ax = axes[3]
        for variant, (style, color, name) in STYLES.items():
            rows = psnr.get(variant, {})
            names = sorted((n for n in rows if n in order), key=order.index)  # json sorts keys
            ax.plot(
                [order.index(n) for n in names],
                [rows[n] for n in names],
                style,
                color=color,
                label=name,
            )
        ax.set_xticks(range(len(order)), order, rotation=60, fontsize=8)
        ax.set_xlabel("layer (forward order)")
        ax.set_ylabel("input PSNR, reconstructed from the layer [dB]")
        ax.set_title("inversion quality (unet_layerwise, same run)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5)
    fig.suptitle(
        f"linear probe {label} of each layer's frozen activation (left, middle) "
        "beside the input information the layer keeps and how well it is inverted (right)",
        fontsize=10,
    )
    save_figure(fig, path)


def _plot_iou(path, results, baselines):
    """Held-out IoU per layer (``inversion.plots.layer_curve``), with the baselines."""
    from inversion.plots import layer_curve

    series = {
        f"{task}, {STYLES[v][2]}": {n: r["iou"] for n, r in results[v][task]["per_layer"].items()}
        for task in TASKS
        for v in VARIANTS
    }
    fig = layer_curve(
        series,
        ylabel="held-out IoU (mean over images)",
        xlabel="layer (forward order)",
        layers=_order(results),
        title="linear probe IoU of each layer (scenes: the U-Nets' task; phantoms: never seen)",
        figsize=(8.5, 4.2),
    )
    ax = fig.axes[0]
    for task, color in zip(TASKS, ("k", "gray"), strict=True):
        ax.axhline(
            baselines[task]["iou"], color=color, ls="-.", lw=1, label=f"{task}: probe on the input"
        )
    ax.legend(fontsize=7, loc="lower left")
    save_figure(fig, path)


def _plot_examples(path, results, examples, images, masks):
    import matplotlib.pyplot as plt

    order = _order(results)
    rows = [(t, v) for t in TASKS for v in VARIANTS]
    fig, axes = plt.subplots(
        len(rows), len(order) + 2, figsize=(1.2 * (len(order) + 2), 1.35 * len(rows)), squeeze=False
    )
    for r, (task, variant) in enumerate(rows):
        axes[r, 0].imshow(images[task][..., 0], cmap="gray", vmin=0, vmax=1)
        axes[r, 1].imshow(masks[task][..., 0], cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(f"{task}\n{variant.replace('_', ' ')}", fontsize=7)
        if r == 0:
            axes[r, 0].set_title("input", fontsize=7)
            axes[r, 1].set_title("true mask", fontsize=7)
        layers = results[variant][task]["per_layer"]
        for c, name in enumerate(order, start=2):
            ax = axes[r, c]
            if name in layers:
                ax.imshow(examples[task][variant][name] > 0, cmap="gray", vmin=0, vmax=1)
                d = float(layers[name]["dice_per_image"][0])
                ax.set_xlabel(f"dice {d:.2f}", fontsize=6, labelpad=1)
            else:
                ax.text(0.5, 0.5, "no such\nlayer", ha="center", va="center", fontsize=7)
                for spine in ax.spines.values():
                    spine.set_visible(False)
            if r == 0:
                ax.set_title(name, fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("probe masks (sigma(z) > 0.5) of held-out image 0 from each layer", fontsize=9)
    save_figure(fig, path)


def references(results) -> list[dict]:
    rows = results["skips"]["scenes"]["per_layer"]
    early = float(np.mean([rows[n]["dice"] for n in EARLY]))
    late = float(np.mean([rows[n]["dice"] for n in LATE]))
    best = max(rows, key=lambda n: rows[n]["dice"])
    source = "study 002 (layer-wise segmentation quality; measured: linear probes)"
    return [
        reference(
            f"seed U-Net on scenes: mean probe dice of the early layers {'/'.join(EARLY)} below "
            f"that of the last decoder layers {'/'.join(LATE)}",
            "early layers weak, late decoder layers strong",
            {"early": early, "late": late, "per_layer": {n: rows[n]["dice"] for n in rows}},
            early < late,
            source=source,
        ),
        reference(
            f"seed U-Net on scenes: the best probe is one of the last decoder layers {LATE}",
            "the last decoder layers produce the best masks",
            {"best_layer": best, "best_dice": rows[best]["dice"]},
            best in LATE,
            source=source,
        ),
    ]


def layerwise_psnr(out: pathlib.Path) -> dict | None:
    """Per variant and layer, the median PSNR of the input reconstructed from that layer, read
    from ``unet_layerwise``'s ``metrics.json`` in the same output folder (``reproduce`` runs it
    first); ``None`` when it has not run there."""
    path = pathlib.Path(out) / "unet_layerwise" / "metrics.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return {
        v: {name: float(row["psnr"]) for name, row in saved[v]["per_layer"].items()}
        for v in VARIANTS
        if v in saved
    }


def layerwise_saved(out: pathlib.Path, train_profile: str) -> dict | None:
    """``unet_layerwise``'s ``metrics.json`` in the same output folder when it ran there on the
    same crops (``size == CERT_SIZE``) of the same U-Nets (``train_profile``); else ``None``."""
    path = pathlib.Path(out) / "unet_layerwise" / "metrics.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    same = (
        saved.get("constants", {}).get("size") == CERT_SIZE
        and saved.get("config", {}).get("train_profile") == train_profile
    )
    if not same:
        print(f"{path}: other crops or U-Nets than this run's; its PSNR is not compared")
    return saved if same else None


def _quadrants(images, size: int = CERT_SIZE) -> np.ndarray:
    """The non-overlapping ``size x size`` crops of every image (4 per 32x32 scene)."""
    h, w = images.shape[1:3]
    tiles = [
        images[:, i : i + size, j : j + size] for i in range(0, h, size) for j in range(0, w, size)
    ]
    return np.concatenate([np.asarray(t) for t in tiles])


def learned_inverses(model, train_images, crops, config, *, train_profile: str) -> dict:
    """Per layer of the seed U-Net, its learned inverse (``models.layer_decoders``) trained on
    the ``CERT_SIZE`` crops of ``train_images`` and scored on ``crops``: PSNR per crop and the
    median, and the seconds it took (training or cache restore, and decoding)."""
    start = time.perf_counter()
    names = list(config.decoder_layers) or models.layer_names(model)
    decoders = train_layer_decoders(
        model,
        names,
        _quadrants(train_images),
        steps=config.decoder_steps,
        model_key={"network": "seed_unet", "train_profile": train_profile},
        max_width=config.decoder_max_width,
        depth=config.decoder_depth,
    )
    x_hat = decode_layers(decoders, model, crops)
    rows = {}
    for name in names:
        per_image = np.asarray(psnr_db(x_hat[name], crops, 1.0, reduce=False))
        rows[name] = {"psnr": float(np.median(per_image)), "psnr_per_image": per_image}
    return {"per_layer": rows, "seconds": time.perf_counter() - start, "x_hat": x_hat}


def _hard(cert: dict) -> bool:
    """Lossy (exact nullity > 0) or ill-conditioned (directions lost below float32 rounding)."""
    return cert["nullity"] > 0 or cert["nullity_float32"] > 0


def decoder_panel(decoded: dict, certificate: dict, saved: dict | None) -> dict:
    """Per layer: the decoder's median PSNR, the optimisation's (``unet_layerwise``, same crops;
    ``None`` without it), the certificate (``unet_layerwise``'s at the same crops when it ran,
    else this run's at the first ``cert_images``) as visible fractions ``1 - nullity / n`` at
    the three precisions, the condition number and whether the layer is lossy or
    ill-conditioned (:func:`_hard`)."""
    optimised = saved["skips"]["per_layer"] if saved else {}
    certs = optimised or certificate
    rows = {}
    for name, dec in decoded["per_layer"].items():
        c = certs[name]
        rows[name] = {
            "decoder_psnr": dec["psnr"],
            "decoder_psnr_per_image": dec["psnr_per_image"],
            "optimisation_psnr": optimised[name]["psnr"] if optimised else None,
            "optimisation_psnr_per_image": optimised[name]["psnr_per_image"] if optimised else None,
            **{
                f"visible_{p}": 1.0 - c[f"nullity{k}"] / c["n_in"]
                for p, k in (("exact", ""), ("float32", "_float32"), ("8bit", "_8bit"))
            },
            "nullity": c["nullity"],
            "nullity_float32": c["nullity_float32"],
            "nullity_8bit": c["nullity_8bit"],
            "condition_number": c["condition_number"],
            "lossy_or_ill_conditioned": _hard(c),
        }
    return {
        "per_layer": rows,
        "certificate_source": "unet_layerwise" if optimised else "layer_probes",
        "test_crops": len(next(iter(decoded["per_layer"].values()))["psnr_per_image"]),
        "seconds": decoded["seconds"],
    }


def decoder_reference(panel: dict) -> dict | None:
    """The reference row: the decoder beats optimisation on every lossy or ill-conditioned
    layer, and optimisation beats the decoder on every injective, well-conditioned one; ``None``
    when ``unet_layerwise`` did not run into the same folder first."""
    rows = panel["per_layer"]
    if any(r["optimisation_psnr"] is None for r in rows.values()):
        return None
    hard = [n for n in rows if rows[n]["lossy_or_ill_conditioned"]]
    easy = [n for n in rows if n not in hard]
    wins = lambda n: rows[n]["decoder_psnr"] > rows[n]["optimisation_psnr"]  # noqa: E731
    decoder_wins_hard = [n for n in hard if wins(n)]
    optimisation_wins_easy = [n for n in easy if not wins(n)]
    return reference(
        "seed U-Net, per layer: learned inverse (decoder) vs optimisation, median input PSNR on "
        "the same test crops; lossy or ill-conditioned = exact or float32 nullity > 0",
        "decoder > optimisation where the layer is lossy or ill-conditioned; optimisation > "
        "decoder where it is injective and well conditioned",
        {
            "lossy_or_ill_conditioned": hard,
            "decoder_wins_there": decoder_wins_hard,
            "injective_well_conditioned": easy,
            "optimisation_wins_there": optimisation_wins_easy,
            "psnr_decoder_vs_optimisation": {
                n: [rows[n]["decoder_psnr"], rows[n]["optimisation_psnr"]] for n in rows
            },
        },
        len(decoder_wins_hard) == len(hard) and len(optimisation_wins_easy) == len(easy),
        source="Dosovitskiy & Brox 2016 (learned inverses) vs Mahendran & Vedaldi 2015",
    )


PSNR_TOP = 60.0  # dB: the panel's top; exact recoveries (~150 dB) are marked above it


def _plot_decoders(path, panel, crops, x_hat):
    import matplotlib.pyplot as plt

    rows = panel["per_layer"]
    names = list(rows)
    xs = np.arange(len(names))
    fig = plt.figure(figsize=(12, 7.2))
    grid = fig.add_gridspec(3, len(names) + 1, height_ratios=(2.2, 1.2, 0.9), hspace=0.55)
    ax = fig.add_subplot(grid[0, :])
    for i, n in enumerate(names):
        if rows[n]["lossy_or_ill_conditioned"]:
            ax.axvspan(i - 0.45, i + 0.45, color="C3", alpha=0.12, lw=0)
    per_image = [rows[n]["decoder_psnr_per_image"] for n in names]
    for i, values in enumerate(per_image):
        ax.plot([i] * len(values), np.minimum(values, PSNR_TOP), ".", color="C2", alpha=0.35, ms=4)
    ax.plot(
        xs,
        [rows[n]["decoder_psnr"] for n in names],
        "o-",
        color="C2",
        label="learned inverse (decoder per layer), median",
    )
    opt = [rows[n]["optimisation_psnr"] for n in names]
    if opt[0] is not None:
        ax.plot(
            xs,
            np.minimum(opt, PSNR_TOP),
            "s--",
            color="C0",
            label="optimisation (unet_layerwise, same crops), median",
        )
        for i, v in enumerate(opt):
            if v > PSNR_TOP:
                ax.annotate(
                    f"{v:.0f} dB",
                    (i, PSNR_TOP),
                    textcoords="offset points",
                    xytext=(0, -11),
                    ha="center",
                    fontsize=7,
                    color="C0",
                )
    ax.set_ylim(0, PSNR_TOP + 2)
    ax.set_xticks(xs, names, fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("input PSNR from the layer [dB]")
    ax.grid(alpha=0.3)
    ax.plot([], [], "s", color="C3", alpha=0.25, ms=10, label="lossy or ill-conditioned layer")
    ax.legend(fontsize=7.5, loc="upper right")
    ax.set_title(
        f"seed U-Net, {panel['test_crops']} test crops of {CERT_SIZE}x{CERT_SIZE} "
        f"(dots: decoder per crop; capped at {PSNR_TOP:.0f} dB)",
        fontsize=9,
    )
    ax = fig.add_subplot(grid[1, :])
    for k, (p, label) in enumerate((("exact", "exact"), ("float32", "float32"), ("8bit", "8-bit"))):
        ax.bar(
            xs + (k - 1) * 0.27,
            [rows[n][f"visible_{p}"] for n in names],
            0.27,
            label=label,
            color=f"C{k + 4}",
        )
    for i, n in enumerate(names):
        lost = [rows[n][k] for k in ("nullity", "nullity_float32", "nullity_8bit")]
        if any(lost):
            ax.text(i, 1.03, "lost " + "/".join(map(str, lost)), ha="center", fontsize=6.5)
    ax.set_xticks(xs, names, fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(0, 1.32)
    ax.set_ylabel("visible fraction\n(rank / n)")
    ax.set_title(
        f"certificate ({panel['certificate_source']}): fraction of the {CERT_SIZE**2} "
        "input directions the layer determines, per precision (lost: nullity exact/f32/8-bit)",
        fontsize=9,
    )
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    examples = [("input", crops[0])] + [(n, x_hat[n][0]) for n in names]
    for c, (label, image) in enumerate(examples):
        ax = fig.add_subplot(grid[2, c])
        ax.imshow(np.asarray(image)[..., 0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(
            label if c == 0 else f"{label}\n{rows[label]['decoder_psnr_per_image'][0]:.1f} dB",
            fontsize=7,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "learned inverse per layer beside optimisation and the certificate "
        "(bottom: decoder reconstructions of test crop 0)",
        fontsize=10,
    )
    save_figure(fig, path)


def run(config: Config, out: pathlib.Path) -> dict:
    directory = experiment_dir(out, NAME)
    results, examples, baselines = {}, {t: {} for t in TASKS}, {}
    data = None
    for variant, skips in VARIANTS.items():
        model, test_set, history = trained_seed_unet(
            train_profile=config.train_profile, skips=skips
        )
        data = data or _tasks(config, test_set)
        res = {"layers": models.layer_names(model), "test_dice": history["eval"][-1]["dice"]}
        for task in TASKS:
            res[task], examples[task][variant] = probe_layers(model, data[task], config)
        lo = (test_set.images.shape[1] - CERT_SIZE) // 2
        crops = test_set.images[: config.cert_images, lo : lo + CERT_SIZE, lo : lo + CERT_SIZE]
        res["certificate"] = layer_certificates(model, crops)
        results[variant] = res
        if skips:  # the learned inverses: seed U-Net only, on unet_layerwise's test crops
            saved = layerwise_saved(out, config.train_profile)
            n = len(saved["skips"]["per_layer"]["out"]["psnr_per_image"]) if saved else None
            test_crops = np.asarray(
                test_set.images[
                    : n or config.decoder_images, lo : lo + CERT_SIZE, lo : lo + CERT_SIZE
                ]
            )
            decoded = learned_inverses(
                model, data["scenes"][0], test_crops, config, train_profile=config.train_profile
            )
            panel = decoder_panel(decoded, res["certificate"], saved)
            _plot_decoders(
                directory / "layer_probes_decoders.png", panel, test_crops, decoded["x_hat"]
            )
            print(f"learned inverses: {panel['seconds']:.1f} s")
    for task in TASKS:
        x_train, y_train, x_test, y_test = data[task]
        result, _ = _probe(x_train, y_train, x_test, y_test, config)
        baselines[task] = _summary(result)
    psnr = layerwise_psnr(out)
    _plot_main(directory / "layer_probes_dice.png", results, baselines, "dice", "dice", psnr)
    _plot_iou(directory / "layer_probes_iou.png", results, baselines)
    _plot_examples(
        directory / "layer_probes_examples.png",
        results,
        examples,
        {t: np.asarray(data[t][2][0]) for t in TASKS},
        {t: np.asarray(data[t][3][0]) for t in TASKS},
    )
    refs = references(results)
    decoder_row = decoder_reference(panel)
    if decoder_row is not None:
        refs.append(decoder_row)
    for row in refs:
        print(f"{row['quantity']}: {row['reproduced']} -> {'yes' if row['agrees'] else 'no'}")
    metrics = {
        "constants": {"early": list(EARLY), "late": list(LATE), "cert_size": CERT_SIZE},
        **results,
        "input_probe": baselines,
        "inversion_psnr": psnr,  # from unet_layerwise in the same output folder, if it ran
        "learned_inverses": panel,
        "references": refs,
    }
    write_metrics(directory, metrics, config)
    return metrics


def main(argv=None):
    return cli(run, get_config, NAME, __doc__, argv)


if __name__ == "__main__":
    main()
