"""Handwritten digits: scikit-learn's shipped 8×8 digits (no download), upsampled and masked."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from models.data.dataset import Dataset, check_int, cubic_upsampling_matrix, numpy_rng

__all__ = ["DIGITS_THRESHOLD", "NUM_DIGITS", "digits"]

NUM_DIGITS = 1797  # samples in sklearn.datasets.load_digits
DIGITS_THRESHOLD = 0.5  # foreground mask = resized image > this


@functools.cache
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits: float32 (N, 8, 8) in [0, 1] and int32 (N,) labels; read once."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, np.float32) / 16.0
    return images, np.asarray(bunch.target, np.int32)


def digits(key: jax.Array, *, size: int = 16, n: int | None = None) -> Dataset:
    """The 1,797 handwritten digits of ``sklearn.datasets.load_digits``, shuffled by ``key``.

    Each 8×8 image (integer grey levels 0..16) is scaled to ``[0, 1]`` by ``x / 16``, resized to
    ``size × size`` with bicubic interpolation, ``M X Mᵀ`` with ``M`` the
    ``(size, 8)`` matrix of `cubic_upsampling_matrix`, and clipped to ``[0, 1]``.
    Mask: ``image > DIGITS_THRESHOLD`` (= 0.5, half the full ink level). Labels: the digit class
    0..9, ``labels[i] = target[perm[i]]`` for the permutation ``perm`` of the 1,797 samples drawn
    from ``key`` (``numpy_rng(key).permutation``; no compilation).

    Args:
        key: PRNG key; it only fixes the order of the samples.
        size: output height and width, an integer ``>= 8`` (8 keeps the original pixels).
        n: keep the first ``n`` samples after shuffling (``1 <= n <= 1797``); ``None``: all.

    Returns:
        ``Dataset(images (n, size, size, 1), masks (n, size, size, 1), labels (n,) int32)``.
    """
    size = check_int("size", size, minimum=8)
    n = NUM_DIGITS if n is None else check_int("n", n, minimum=1, maximum=NUM_DIGITS)
    perm = numpy_rng(key).permutation(NUM_DIGITS)[:n]  # checks the key
    images, targets = _load_digits()
    m = cubic_upsampling_matrix(8, size).astype(np.float32)
    resized = np.clip(m @ images[perm] @ m.T, 0.0, 1.0)[..., None]
    masks = (resized > DIGITS_THRESHOLD).astype(np.float32)
    return Dataset(jnp.asarray(resized), jnp.asarray(masks), jnp.asarray(targets[perm]))
