"""See inside the U-Net: kernels, weights and activations of the trained seed U-Net beside its
untrained initialisation.

Command:  python -m experiments.visualisation [--out results] [--quick | --full] [--set k=v ...]
Runtime (2-core CPU shared with another job, seed U-Net in the model cache): default 24.2 s
(34 s wall with the imports); quick 13.8 s (measured with ``python -m experiments.visualisation``,
the time it prints); --full not measured. A cold cache first trains the seed U-Net (shared with
every other U-Net experiment; the quick smoke test, training included, takes 24 s).

What it shows (the trained model is ``experiments.common.trained_seed_unet``, the untrained one
``models.seed_unet(0)``, the same initialisation before training):

* ``kernels_trained.png`` / ``kernels_init.png``: the 16 first-layer 3x3 kernels (the same
  symmetric colour scale in both, stated in the titles); ``kernels_change.png``: trained - init;
* ``weight_histograms.png``: the kernel weights of every weighted layer (``conv_layers()``:
  enc1.conv1, enc2.conv1, bottleneck.conv1, up2, dec2.conv1, up1, out), trained and init
  overlaid on the same bins;
* ``activations_<model>_<input>.png``: for each input (3 held-out synthetic test scenes, one
  CT-like Shepp-Logan phantom, the scikit-image ``camera`` picture resized to 32x32), one row
  per layer: the input, enc1, pool1, enc2, pool2, bottleneck, up2, cat2 split into its up-path
  half (``cat2[up]`` = up2) and its skip half (``cat2[skip]`` = enc2; ``concat(up2, enc2)``
  along channels, up-path first), dec2, up1, cat1[up], cat1[skip], out; each row the top
  ``channels`` channels by variance, diverging colours centred at 0, one scale per row;
* ``first_layer_<model>.png`` / ``bottleneck_<model>.png``: every enc1 channel and the top
  ``bottleneck_channels`` bottleneck channels at full resolution, one row per input;
* ``metrics.json``: per layer and model, over all inputs, the mean, std, fraction of exactly
  zero entries, and for the ReLU layers (enc1, enc2, bottleneck, dec2) the dead-ReLU fraction
  (exactly-zero entries) and the channels that are zero on every input.

Measured (default, the 5 inputs together; ``metrics.json``), trained vs init:

    layer        zero (dead-ReLU) fraction   channels zero on every input   std
    enc1         0.21 vs 0.57                0 vs 0 of 16                   0.49 vs 0.55
    enc2         0.56 vs 0.49                3 vs 0 of 32                   0.46 vs 0.59
    bottleneck   0.82 vs 0.54                16 vs 0 of 64                  0.43 vs 0.67
    dec2         0.36 vs 0.52                2 vs 0 of 32                   1.74 vs 0.60
    out          (logits) mean -18.0 vs -0.70                               20.4 vs 0.54

Training moves the first-layer kernels by at most 0.33 (their largest weight is 1.95): the
trained and init kernels look alike, ``kernels_change.png`` shows the difference. The trained
bottleneck is sparse (a quarter of its channels silent on all five inputs); the skip halves
(``cat*[skip]``) carry the sharp edges while the up-path halves show the 2x2/2 transposed
convolution's checkerboard.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np

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
from inversion import plots

NAME = "visualisation"
#: The layers after a ReLU in the seed U-Net (each block is conv3x3 + ReLU).
RELU_LAYERS = ("enc1", "enc2", "bottleneck", "dec2")
SIZE = 32  # the seed U-Net is trained on 32x32 scenes


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """Defaults: the ``default`` profile."""

    scenes: int = 3  # held-out synthetic test scenes shown
    channels: int = 8  # top channels by variance per row of the activation maps
    bottleneck_channels: int = 16  # top bottleneck channels in the full-size figure
    bins: int = 40  # bins of the weight histograms
    train_profile: TrainProfile = "default"  # training sizes of the seed U-Net


def get_config(profile: str = "default") -> Config:
    """``'quick'``: 1 scene, 4 channels, the quick-trained U-Net; ``'default'``: 3 scenes,
    8 channels; ``'full'``: 3 scenes, 16 channels, all 64 bottleneck channels."""
    return select_profile(
        profile,
        quick=Config(scenes=1, channels=4, bottleneck_channels=8, train_profile="quick"),
        default=Config(),
        full=Config(channels=16, bottleneck_channels=64),
    )


def _inputs(test_set, scenes: int) -> dict[str, np.ndarray]:
    """``{label: (32, 32, 1)}``: the first test scenes, one phantom, the camera picture."""
    out = {f"scene{i}": np.asarray(test_set.images[i]) for i in range(scenes)}
    out["phantom"] = np.asarray(models.data.phantoms(jax.random.key(0), 1, size=SIZE).images[0])
    out["camera"] = np.asarray(models.data.sample_image("camera", size=SIZE))
    return out


def _rows(acts: dict[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of the activation figure: the input, every layer, the cat layers split."""
    rows = {"input": x}
    for name, a in acts.items():
        if name.startswith("cat"):
            c = acts[f"up{name[3:]}"].shape[-1]
            rows[f"{name}[up]"] = a[..., :c]
            rows[f"{name}[skip]"] = a[..., c:]
        else:
            rows[name] = a
    return rows


def _statistics(acts: dict[str, np.ndarray]) -> dict[str, dict]:
    stats = {}
    for name, a in acts.items():
        a = np.asarray(a, np.float64)
        row = {
            "shape": list(a.shape[1:]),
            "mean": float(a.mean()),
            "std": float(a.std()),
            "zero_fraction": float(np.mean(a == 0.0)),
        }
        if name in RELU_LAYERS:
            dead = np.all(a == 0.0, axis=(0, 1, 2))
            row["dead_relu_fraction"] = row["zero_fraction"]
            row["dead_channels"] = [int(c) for c in np.flatnonzero(dead)]
        stats[name] = row
    return stats


def run(config: Config, out: pathlib.Path) -> dict:
    directory = experiment_dir(out, NAME)
    trained, test_set, _ = trained_seed_unet(train_profile=config.train_profile)
    nets = {"trained": trained, "init": models.seed_unet(0)}
    inputs = _inputs(test_set, config.scenes)
    batch = np.stack(list(inputs.values())).astype(np.float32)
    labels = list(inputs)
    written = []

    def save(fig, name):
        save_figure(fig, directory / name)
        written.append(name)

    conv = {label: net.conv_layers() for label, net in nets.items()}
    first = {label: np.asarray(conv[label]["enc1.conv1"].kernel[...]) for label in nets}
    scale = max(float(np.abs(k).max()) for k in first.values())
    for label, kernel in first.items():
        save(
            plots.kernel_grid(
                kernel, title=f"{label} U-Net: the 16 first-layer kernels", vmax=scale
            ),
            f"kernels_{label}.png",
        )
    save(
        plots.kernel_grid(
            first["trained"] - first["init"],
            title="change in training (trained - init)",
            label="weight change",
        ),
        "kernels_change.png",
    )
    weights = {
        label: {name: np.asarray(layer.kernel[...]) for name, layer in conv[label].items()}
        for label in nets
    }
    save(
        plots.weight_histograms(
            weights, bins=config.bins, title="kernel weights per layer: trained vs init"
        ),
        "weight_histograms.png",
    )

    stats, names = {}, None
    for label, net in nets.items():
        acts = {k: np.asarray(v) for k, v in models.activations(net, batch).items()}
        names = list(acts)
        stats[label] = _statistics(acts)
        rows = _rows(acts, batch)
        for i, image in enumerate(labels):
            fig = plots.activation_maps(
                rows,
                channels=config.channels,
                images=i,
                title=f"{label} U-Net on {image}",
                panel_size=0.95,
            )
            save(fig, f"activations_{label}_{image}.png")
        for layer, k, size in (
            ("enc1", acts["enc1"].shape[-1], 1.0),
            ("bottleneck", config.bottleneck_channels, 1.0),
        ):
            fig = plots.activation_maps(
                {layer: acts[layer]},
                channels=k,
                images=list(range(len(labels))),
                title=f"{label} U-Net, {layer} ({'x'.join(map(str, acts[layer].shape[1:3]))})",
                panel_size=size,
                image_labels=labels,
            )
            save(fig, f"{'first_layer' if layer == 'enc1' else layer}_{label}.png")

    metrics = {
        "inputs": labels,
        "layers": names,
        "relu_layers": list(RELU_LAYERS),
        "activation_statistics": stats,
        "figures": written,
        "references": [
            reference(
                "figures: first-layer kernels, weight histograms, activation maps (seed study 001)",
                3 + 1 + 2 * len(labels) + 4,
                len(written),
                len(written) == 3 + 1 + 2 * len(labels) + 4,
                source="seed study 001: how CNN and U-Net weights and activations are shown",
            )
        ],
    }
    write_metrics(directory, metrics, config)
    return metrics


def main(argv=None):
    return cli(run, get_config, NAME, __doc__, argv)


if __name__ == "__main__":
    main()
