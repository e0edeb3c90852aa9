"""The tiny model, data and config shared by tests/models/test_faults.py and its subprocesses."""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.data.scenes import synthetic_scenes
from models.training import TrainConfig


class Tiny(nnx.Module):
    """conv3×3 (1→width) → ReLU → conv3×3 (width→1), initialised with numpy from ``seed``."""

    def __init__(self, width: int = 4, *, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.k1 = nnx.Param(jnp.asarray(rng.normal(0, 0.3, (3, 3, 1, width)), jnp.float32))
        self.k2 = nnx.Param(jnp.asarray(rng.normal(0, 0.3, (3, 3, width, 1)), jnp.float32))
        self.b = nnx.Param(jnp.zeros(1))

    def __call__(self, x):
        conv = lambda a, k: jax.lax.conv_general_dilated(  # noqa: E731
            a, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return conv(jax.nn.relu(conv(x, self.k1[...])), self.k2[...]) + self.b[...]


DATA = synthetic_scenes(jax.random.key(0), 16, size=16)
CONFIG = TrainConfig(steps=12, batch_size=8, learning_rate=3e-2, eval_every=12)


def digest(model) -> str:
    """SHA-256 of the bytes of every leaf of the model's state (bitwise identity)."""
    h = hashlib.sha256()
    for a in jax.tree.leaves(nnx.state(model)):
        h.update(np.asarray(a).tobytes())
    return h.hexdigest()
