"""What does a unit respond to? Feature visualisation of the seed U-Net and of a real detector.

Command:  python -m experiments.feature_visualisation [--out results] [--quick | --full] [--set k=v ...]
Runtime (2-core CPU shared with other jobs at load ~10, seed U-Net cached): default 97 s in
``run`` (109 s wall; U-Net program 23 s, detector program 48 s, the 1-D units 11 s and
figures); --quick and --full not yet measured.

Method (Olah et al. 2017, lucent's recipe; the algorithm is the library's,
``inversion.visualize``). For each layer, the first ``channels`` channels are visualised at
once, one vmapped program per layer: an input ``x = lo + (hi − lo) σ(irfft2(s ⊙ z) / 4)`` in
``[0, 1]`` (Fourier parameterisation with 1/f scaling; RGB inputs also colour-decorrelated)
maximises the channel's mean activation under random pad / jitter / scale / rotate transforms
(``inversion.visualize_transforms.standard``: pad 4, jitter 4, scale 0.9-1.1, rotate ±10°,
jitter 4), Adam (learning rate 0.05), ``steps`` steps:

* the trained seed U-Net (32x32 grey inputs): enc1, enc2 (encoder), bottleneck, dec2, up1
  (decoder);
* the PP-OCRv4 text detector (``models.pretrained.text_detector_path``, imported with
  ``models.from_onnx``) at ``detector_size`` x ``detector_size`` RGB: the last backbone layer
  of each of the first ``detector_layers`` resolutions (strides 2, 4, 8, ...).

Each visualised channel's mean activation is compared with the largest mean activation that
channel reaches on the 128 test scenes (U-Net): the first reference row counts the channels the
visualisation drives higher than every test scene.

Seed study 004 ("what input shuts a unit down?") on the two trained 1-D models of the seed
study (data and training as ``linear_inversion`` / ``sigmoid_inversion``): from a reference
input ``x0`` where the unit is on, ``inversion.visualize`` with goal ``'below'`` finds the least
change ``min |x − x0|`` with the unit's output ``<= v`` (Dense(1): ``v = 0``; sigmoid unit:
``v = 0.1``), beside the closed form: the boundary point ``(v − b)/w`` (Dense) and ``1000
(logit(v) − b)/w`` (sigmoid), shifted by the margin ``δ`` the penalty form aims below ``v``.

Measured (default profile):

* U-Net: 34 of the 40 visualised channels exceed the largest mean activation any of the 128
  test scenes gives them (e.g. dec2 ch 2: 6.2 against 2.6; up1 ch 4: 8.6 against 4.9). The
  other 6 (enc2 ch 3, 4; bottleneck ch 2, 3, 6; dec2 ch 3) stay at 0: their ReLU is off over
  the whole start image (grey 0.5 plus 0.01 noise), so the gradient is exactly zero and the
  image never moves (flat grey in the figure); 4 of them are 0 on every test scene too. enc1
  channels prefer bright blobs or oriented edges, the deeper ones textures; all up1 channels
  show the same checkerboard-like texture of the 2x2/2 transposed convolution.
* detector (64x64 RGB, layers p2o.Add.15 32x32x32, p2o.Add.43 16x16x48, p2o.Add.71
  8x8x96): oriented colour stripes at stride 2, dotted and woven textures at strides 4 and 8.
* shut down: Dense(1) (w = 0.398, b = −23.66) from x0 = 500 (output 175.4) to x = 59.4377,
  closed form 59.4377 (gap 2.7e-6), output −0.0010; sigmoid unit (w = 10.06, b = −5.03) from
  x0 = 800 (output 0.953) to 280.529, closed form 280.528 (gap 6.5e-4), output 0.0990.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import inversion
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
from inversion import solvers
from inversion.visualize import default_solver, units
from inversion.visualize_transforms import standard

NAME = "feature_visualisation"
UNET_LAYERS = ("enc1", "enc2", "bottleneck", "dec2", "up1")
TRANSFORMS = standard(pad=4, jitter=4, jitter_after=4)  # 32 + 8 - 4 - 4: the U-Net's 32x32
MARGIN = 1e-3  # the penalty form aims at s <= v - MARGIN
# penalty weight mu: s <= v holds when mu |ds/dx|^2 MARGIN >= s(x0) - v (visualize_units);
# here |ds/dx| = w = 0.4 (Dense) and ~4.5e-4 (the sigmoid at its level 0.1), s(x0) - v <= 175
PENALTY = 1e12
SIGMOID_SCALE = 1000.0  # the sigmoid unit reads x / 1000 (as in sigmoid_inversion)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """Defaults: the ``default`` profile."""

    steps: int = 128  # Adam steps per visualisation
    channels: int = 8  # channels visualised per U-Net layer
    lr: float = 0.05  # Adam learning rate on the Fourier coefficients
    detector_size: int = 64  # input side of the text detector (RGB)
    detector_layers: int = 3  # backbone resolutions visualised
    detector_channels: int = 8  # channels per detector layer
    dense_train_steps: int = 3000  # full-batch Adam steps of the Dense(1) and the sigmoid unit
    train_profile: TrainProfile = "default"  # training sizes of the seed U-Net
    seed: int = 0  # PRNG key of the visualisations


def get_config(profile: str = "default") -> Config:
    """``'quick'``: 8 steps, 2 channels, a 32x32 detector, 1 layer (U-Net trained quick);
    ``'default'``: 128 steps, 8 channels, 64x64 detector, 3 layers; ``'full'``: 512 steps,
    16 channels, 4 detector layers of 16 channels."""
    return select_profile(
        profile,
        quick=Config(
            steps=8,
            channels=2,
            detector_size=32,
            detector_layers=1,
            detector_channels=2,
            dense_train_steps=500,
            train_profile="quick",
        ),
        default=Config(),
        full=Config(steps=512, channels=16, detector_layers=4, detector_channels=16),
    )


def channel_means(model, layers: dict[str, int]):
    """``fn(x)``: the means over positions of the first ``layers[name]`` channels of each named
    layer, concatenated (one vector): every channel of every layer is then one read-out
    (``inversion.visualize.units``) of ONE function, so all are one compiled program."""
    features = models.activations_fn(model, list(layers))

    def fn(x):
        acts = features(x[None])
        return jnp.concatenate([acts[n][0].mean(axis=(0, 1))[:k] for n, k in layers.items()])

    return fn


def _visualise_layers(model, layers: dict[str, int], shape, key, config: Config) -> dict:
    start = time.perf_counter()
    res = inversion.visualize(
        channel_means(model, layers),
        units(range(sum(layers.values()))),
        shape=shape,
        key=key,
        transforms=TRANSFORMS,
        steps=config.steps,
        solver=default_solver(config.lr),
    )
    seconds = time.perf_counter() - start
    images, score, offset = {}, np.asarray(res.score[:, 0]), 0
    out = {}
    for name, k in layers.items():
        images[name] = np.asarray(res.images[offset : offset + k, 0])
        out[name] = {"score": score[offset : offset + k]}
        offset += k
    return {"images": images, "rows": out, "seconds": seconds}


def unet_visualisations(config: Config) -> dict:
    """The U-Net layers' visualised inputs, their channel means and the test scenes' largest."""
    model, test_set, _ = trained_seed_unet(train_profile=config.train_profile)
    acts = models.activations(model, test_set.images)
    layers = {n: min(config.channels, acts[n].shape[-1]) for n in UNET_LAYERS}
    key = jax.random.key(config.seed)
    res = _visualise_layers(model, layers, test_set.images.shape[1:], key, config)
    for name, k in layers.items():
        row = res["rows"][name]
        row["shape"] = list(acts[name].shape[1:])
        row["best_test_scene"] = np.asarray(acts[name].mean(axis=(1, 2)).max(axis=0))[:k]
        row["above_every_scene"] = int(np.sum(row["score"] > row["best_test_scene"]))
    return res


def detector_layers(model, size: int, count: int) -> list[tuple[str, tuple]]:
    """The last backbone layer at each of the first ``count`` resolutions below the input's:
    walk the layers in forward order until the resolution first grows again (the neck)."""
    acts = jax.eval_shape(
        lambda x: models.activations(model, x),
        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
    )
    picked: dict[int, tuple[str, tuple]] = {}
    last = size
    for name in models.layer_names(model):
        shape = tuple(acts[name].shape[1:])
        if len(shape) != 3:
            continue
        if shape[0] > last:
            break  # the neck upsamples: the backbone has ended
        last = shape[0]
        if shape[0] < size:
            picked[shape[0]] = (name, shape)
    return [picked[r] for r in sorted(picked, reverse=True)][:count]


def detector_visualisations(config: Config) -> dict:
    model = models.from_onnx(models.pretrained.text_detector_path())
    chosen = detector_layers(model, config.detector_size, config.detector_layers)
    layers = {name: min(config.detector_channels, shape[-1]) for name, shape in chosen}
    shape = (config.detector_size, config.detector_size, 3)
    res = _visualise_layers(model, layers, shape, jax.random.key(config.seed + 1), config)
    for name, layer_shape in chosen:
        res["rows"][name]["shape"] = list(layer_shape)
    return res


def _seed_data(key: int, sigmoid: bool):
    kx, kn = jax.random.split(jax.random.key(key))
    x = jax.random.uniform(kx, (1000, 1)) * 1000.0
    if sigmoid:
        y = jax.nn.sigmoid((x - 500.0) / 100.0) + 0.02 * jax.random.normal(kn, (1000, 1))
    else:
        y = 0.4 * x - 50.0 * jax.random.uniform(kn, (1000, 1))
    return x, y


def shut_down(config: Config) -> dict:
    """The least change of ``x0`` that brings each trained 1-D unit to ``<= v``, and the
    closed form beside it."""
    out = {}
    for kind in ("dense", "sigmoid"):
        x, y = _seed_data(config.seed, kind == "sigmoid")
        if kind == "dense":
            model = models.Linear(1, 1, rngs=nnx.Rngs(config.seed))
            lr, scale, value, x0 = 0.2, 1.0, 0.0, 500.0
        else:
            model = models.MLP(1, (1,), "sigmoid", activate_output=True, rngs=nnx.Rngs(config.seed))
            lr, scale, value, x0 = 0.1, SIGMOID_SCALE, 0.1, 800.0
        train = models.TrainConfig(
            task="regression",
            steps=config.dense_train_steps,
            batch_size=1000,
            learning_rate=lr,
            eval_every=config.dense_train_steps,
        )
        models.train(model, (x / scale, y), config=train, progress=False)
        dense = model if kind == "dense" else model.dense[0]
        w, b = float(dense.kernel[...][0, 0]), float(dense.bias[...][0])
        apply_fn, params = models.split(model)
        fn = lambda u, apply_fn=apply_fn, params=params, scale=scale: apply_fn(  # noqa: E731
            params, u[None] / scale
        )[0]
        res = inversion.visualize(
            fn,
            units([0], goal="below", value=value, penalty=PENALTY, margin=MARGIN),
            shape=(1,),
            key=jax.random.key(config.seed),
            param="pixels",
            bounds=None,
            reference=jnp.array([x0]),
            solver=solvers.LBFGS(),
            steps=100,
        )
        if kind == "dense":
            boundary = (value - MARGIN - b) / w  # w x + b = v - δ
        else:
            logit = math.log((value - MARGIN) / (1 - value + MARGIN))
            boundary = scale * (logit - b) / w
        found = float(res.images[0, 0, 0])
        out[kind] = {
            "w": w,
            "b": b,
            "x0": x0,
            "output_at_x0": float(fn(jnp.array([x0]))[0]),
            "value": value,
            "found": found,
            "output_found": float(res.score[0, 0]),
            "closed_form": boundary,
            "gap": abs(found - boundary),
            "data": (np.asarray(x[:200, 0]), np.asarray(y[:200, 0])),
            "curve": np.asarray(jax.vmap(fn)(jnp.linspace(0, 1000, 201)[:, None])[:, 0]),
        }
    return out


def _plot_grid(path, images, rows, title, rgb: bool):
    import matplotlib.pyplot as plt

    names = list(images)
    cols = max(v.shape[0] for v in images.values())
    fig, axes = plt.subplots(
        len(names), cols, figsize=(1.25 * cols + (1.2 if not rgb else 0.2), 1.35 * len(names)),
        squeeze=False,
    )  # fmt: skip
    shown = None
    for r, name in enumerate(names):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= images[name].shape[0]:
                ax.axis("off")
                continue
            img = images[name][c]
            if rgb:
                ax.imshow(np.clip(img, 0, 1))
            else:
                shown = ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
            ax.set_xlabel(f"ch {c}: {rows[name]['score'][c]:.2g}", fontsize=6, labelpad=1)
        shape = "x".join(str(s) for s in rows[name]["shape"])
        axes[r, 0].set_ylabel(f"{name}\n{shape}", fontsize=7)
    if shown is not None:
        cbar = fig.colorbar(shown, ax=axes, fraction=0.02, pad=0.01)
        cbar.set_label("input value", fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def _plot_shut_down(path, results):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = {"dense": "Dense(1): y = w x + b", "sigmoid": "sigmoid unit: y = σ(w x/1000 + b)"}
    for ax, (kind, r) in zip(axes, results.items(), strict=True):
        xs, ys = r["data"]
        ax.scatter(xs, ys, s=4, alpha=0.3, color="gray", label="training data (200 shown)")
        ax.plot(np.linspace(0, 1000, 201), r["curve"], color="C0", label="trained unit")
        ax.axhline(r["value"], color="k", lw=0.8, ls=":", label=f"shut-down level v = {r['value']}")
        ax.plot(
            [r["x0"]], [r["output_at_x0"]], "o", color="C1", label=f"reference x0 = {r['x0']:g}"
        )
        ax.axvline(
            r["closed_form"], color="C3", lw=1.5, label=f"closed form {r['closed_form']:.2f}"
        )
        ax.plot(
            [r["found"]], [r["output_found"]], "x", color="k", ms=9,
            label=f"inversion.visualize {r['found']:.2f} (output {r['output_found']:.3g})",
        )  # fmt: skip
        ax.set_xlabel("input x")
        ax.set_ylabel("unit output")
        ax.set_title(labels[kind], fontsize=9)
        ax.legend(fontsize=6.5, loc="best")
        ax.grid(alpha=0.3)
    fig.suptitle(
        "least change of x0 that shuts the unit down (output <= v), seed study 004", fontsize=9
    )
    save_figure(fig, path)


def references(unet_rows, shut) -> list[dict]:
    above = sum(r["above_every_scene"] for r in unet_rows.values())
    total = sum(len(r["score"]) for r in unet_rows.values())
    # a channel whose ReLU is off over the whole start image has a zero gradient there: the
    # visualisation cannot move it (it stays at the start, the flat grey image)
    stuck = sum(int(np.sum(np.asarray(r["score"]) == 0)) for r in unet_rows.values())
    rows = [
        reference(
            "seed U-Net: visualised channels whose mean activation exceeds every test scene's",
            "all (the input is optimised for the channel)",
            {"above": above, "of": total, "stuck_at_zero_from_the_start": stuck},
            above == total,
            source="feature visualisation (Olah et al. 2017)",
        )
    ]
    for kind, r in shut.items():
        rows.append(
            reference(
                f"{kind}: least change that shuts the unit down (output <= {r['value']}) vs the "
                "closed form",
                round(r["closed_form"], 3),
                {"found": r["found"], "output": r["output_found"], "gap": r["gap"]},
                r["gap"] <= 0.01 * max(1.0, abs(r["closed_form"]))
                and r["output_found"] <= r["value"],
                source="seed study 004",
            )
        )
    return rows


def run(config: Config, out: pathlib.Path) -> dict:
    directory = experiment_dir(out, NAME)
    start = time.perf_counter()
    unet = unet_visualisations(config)
    _plot_grid(
        directory / "unet_channels.png",
        unet["images"],
        unet["rows"],
        f"seed U-Net: inputs that maximise each channel's mean activation ({config.steps} Adam "
        "steps, Fourier 1/f, pad/jitter/scale/rotate; below: the channel mean reached)",
        rgb=False,
    )
    det = detector_visualisations(config)
    _plot_grid(
        directory / "detector_channels.png",
        det["images"],
        det["rows"],
        f"PP-OCRv4 text detector backbone ({config.detector_size}x{config.detector_size} RGB, "
        "colour-decorrelated Fourier; below: the channel mean reached)",
        rgb=True,
    )
    shut = shut_down(config)
    _plot_shut_down(directory / "shut_down.png", shut)
    refs = references(unet["rows"], shut)
    for row in refs:
        print(f"{row['quantity']}: {row['reproduced']} -> {'yes' if row['agrees'] else 'no'}")
    metrics = {
        "unet": unet["rows"],
        "unet_seconds": unet["seconds"],  # one program: all U-Net layers' channels
        "detector": det["rows"],
        "detector_seconds": det["seconds"],
        "shut_down": {
            k: {n: v for n, v in r.items() if n not in ("data", "curve")} for k, r in shut.items()
        },
        "seconds": time.perf_counter() - start,
        "references": refs,
    }
    write_metrics(directory, metrics, config)
    return metrics


def main(argv=None):
    return cli(run, get_config, NAME, __doc__, argv)


if __name__ == "__main__":
    main()
