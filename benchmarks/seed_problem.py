"""The held-out inversion problem of the seed U-Net as a self-contained ``.npz`` file.

File format (every array float32; images NHWC):

* ``x_true`` ``(N, H, W, 1)``: the inputs (test scenes, values in [0, 1]);
* ``targets`` ``(N, H, W, 1)``: the network's outputs on them;
* ``x0`` ``(N, H, W, 1)``: the starts;
* for each of the seven weighted layers :data:`LAYERS` of the seed SimpleUNet,
  ``<layer>/kernel`` (HWIO) and ``<layer>/bias``.

The network (:func:`seed_unet_fn`) is rebuilt from those arrays alone, so a file written by
anyone else in this format (e.g. from PyTorch: conv OIHW -> HWIO is ``transpose(2, 3, 1, 0)``)
is accepted; nothing here depends on how the weights were trained.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

LAYERS = ("enc1.conv1", "enc2.conv1", "bottleneck.conv1", "up2", "dec2.conv1", "up1", "out")
TRANSPOSED = ("up2", "up1")  # 2x2/2 transposed convolutions; the rest are 3x3 "same" convs
IMAGES = ("x_true", "targets", "x0")


@dataclasses.dataclass(frozen=True)
class SeedProblem:
    """Inputs, targets, starts and the weights of the network that maps one to the other."""

    x_true: np.ndarray
    targets: np.ndarray
    x0: np.ndarray
    weights: dict[str, tuple[np.ndarray, np.ndarray]]


def seed_unet_fn(weights: dict[str, tuple[np.ndarray, np.ndarray]]):
    """The seed SimpleUNet as a pure map of ONE ``(H, W, 1)`` image, from its layer weights.

    ``e1 = relu(conv(x))``, ``e2 = relu(conv(pool(e1)))``, ``b = relu(conv(pool(e2)))``,
    ``d2 = relu(conv([up2(b), e2]))``, ``out = conv([up1(d2), e1])``; pool is 2x2/2 max.
    """
    from models import layers

    w = {name: (jnp.asarray(k), jnp.asarray(b)) for name, (k, b) in weights.items()}

    def conv(name, x):
        return layers.conv2d(x, *w[name])

    def up(name, x):
        return layers.conv_transpose2d(x, *w[name], stride=2)

    def fn(x):
        x = x[None]
        e1 = layers.relu(conv("enc1.conv1", x))
        e2 = layers.relu(conv("enc2.conv1", layers.max_pool2d(e1)))
        b = layers.relu(conv("bottleneck.conv1", layers.max_pool2d(e2)))
        d2 = layers.relu(conv("dec2.conv1", layers.concat_skip(up("up2", b), e2)))
        return conv("out", layers.concat_skip(up("up1", d2), e1))[0]

    return fn


def write_problem(path: str | pathlib.Path, *, n: int = 64, train_profile: str = "default"):
    """Write the problem from the trained seed U-Net (``experiments.common.trained_seed_unet``,
    from the model cache when present): its first ``n`` test scenes, their outputs, and the
    flat start ``x0 = 0.5``. Returns the :class:`SeedProblem`."""
    from experiments.common import trained_seed_unet

    model, test_set, _ = trained_seed_unet(train_profile=train_profile)
    if not 1 <= n <= test_set.images.shape[0]:
        raise ValueError(f"n must be in [1, {test_set.images.shape[0]}], got {n!r}")
    x_true = np.asarray(test_set.images[:n], np.float32)
    targets = np.asarray(jax.jit(model)(jnp.asarray(x_true)), np.float32)
    weights = {
        name: (np.asarray(layer.kernel[...]), np.asarray(layer.bias[...]))
        for name, layer in model.conv_layers().items()
    }
    problem = SeedProblem(x_true, targets, np.full_like(x_true, 0.5), weights)
    arrays = {k: getattr(problem, k) for k in IMAGES}
    for name, (k, b) in weights.items():
        arrays[f"{name}/kernel"], arrays[f"{name}/bias"] = k, b
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return problem


def load_problem(path: str | pathlib.Path) -> SeedProblem:
    """Read and check a problem file (format in the module docstring); a missing or misshapen
    array is a ``ValueError`` naming it."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"problem file {str(path)!r} does not exist")
    with np.load(path) as data:
        arrays = {k: np.asarray(data[k]) for k in data.files}
    missing = [k for k in IMAGES if k not in arrays]
    missing += [f"{n}/{p}" for n in LAYERS for p in ("kernel", "bias") if f"{n}/{p}" not in arrays]
    if missing:
        raise ValueError(f"problem file {str(path)!r} lacks the arrays {missing}")
    shape = arrays["x_true"].shape
    for k in IMAGES:
        if arrays[k].ndim != 4 or arrays[k].shape != shape or arrays[k].shape[-1] != 1:
            raise ValueError(
                f"{k} has shape {arrays[k].shape}; expected (N, H, W, 1) like x_true {shape}"
            )
    if shape[1] % 4 or shape[2] % 4:
        raise ValueError(f"images must have H and W divisible by 4 (two poolings), got {shape}")
    weights = {}
    for name in LAYERS:
        k = arrays[f"{name}/kernel"].astype(np.float32)
        b = arrays[f"{name}/bias"].astype(np.float32)
        want = (2, 2) if name in TRANSPOSED else (3, 3)
        if k.ndim != 4 or k.shape[:2] != want or b.shape != (k.shape[3],):
            raise ValueError(
                f"{name}: kernel {k.shape} / bias {b.shape}; expected an HWIO kernel of "
                f"size {want} and a bias of its output channels"
            )
        weights[name] = (k, b)
    return SeedProblem(
        *(arrays[k].astype(np.float32) for k in IMAGES),
        weights=weights,
    )
