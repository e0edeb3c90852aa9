"""Weight initialisers drawn on the host, as pure functions of a PRNG key.

    he_normal:    w ~ N(0, 2 / fan_in)      (ReLU layers)
    lecun_normal: w ~ N(0, 1 / fan_in)      (linear / saturating layers)

with fan_in the product of all but the last axis (HWIO kernels, (in, out) matrices). The
numpy generator is seeded from the raw bits of ``key``, so weights are reproducible from the
key alone; drawing on the host avoids compiling one XLA random kernel per parameter shape,
which costs seconds per model on a 2-core CPU. Under tracing (``nnx.eval_shape``) the
same distribution is drawn with ``jax.random`` instead (shapes only matter there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _normal(key: jax.Array, shape: tuple[int, ...], gain: float) -> jax.Array:
    std = np.sqrt(gain / max(1, int(np.prod(shape[:-1]))))
    if isinstance(key, jax.core.Tracer):  # abstract construction (nnx.eval_shape, jit)
        return std * jax.random.normal(key, shape, jnp.float32)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    return jnp.asarray(rng.normal(0.0, std, shape), jnp.float32)


def he_normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """w ~ N(0, 2 / fan_in)."""
    return _normal(key, shape, 2.0)


def lecun_normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """w ~ N(0, 1 / fan_in)."""
    return _normal(key, shape, 1.0)
