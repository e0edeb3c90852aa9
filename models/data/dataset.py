"""The `Dataset` container, the train/test split, and helpers shared by the data sets.

Helpers: argument checks (`check_key`, `check_int`), a NumPy generator drawn from a JAX key
(`numpy_rng`, so that generation needs no XLA compilation) and bicubic upsampling matrices.

A data set is three aligned arrays along a leading sample axis ``N``:

* ``images``: float32 ``(N, H, W, C)`` with values in ``[0, 1]``;
* ``masks``: float32 ``(N, H, W, 1)`` with values in ``{0, 1}`` (1 = foreground);
* ``labels``: int32 ``(N,)`` class labels, or ``None`` where the data set has none.

`Dataset` is a ``NamedTuple`` and therefore a JAX pytree (``None`` is an empty subtree), so
``jax.tree.map(lambda a: a[idx], ds)`` and ``jax.device_put(ds)`` work on it directly.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

__all__ = ["Dataset", "train_test_split"]


class Dataset(NamedTuple):
    """Images, binary foreground masks and optional labels, aligned along the first axis."""

    images: Float[Array, "n h w c"]
    masks: Float[Array, "n h w 1"]
    labels: Int[Array, " n"] | None = None

    @property
    def num_examples(self) -> int:
        """``N``, the number of samples."""
        return int(self.images.shape[0])

    def take(self, index) -> Dataset:
        """The samples at ``index`` (an integer array, a slice or a boolean mask) as a `Dataset`."""
        labels = None if self.labels is None else self.labels[index]
        return Dataset(self.images[index], self.masks[index], labels)


def train_test_split(
    dataset: Dataset, *, test_fraction: float = 0.2, key: jax.Array | None = None
) -> tuple[Dataset, Dataset]:
    """Split ``dataset`` into ``(train, test)``.

    ``n_test = max(1, round(test_fraction * N))`` samples go to the test set and the other
    ``N - n_test`` (at least one) to the training set. Without ``key`` the split is positional:
    train = the first ``N - n_test`` samples, test = the last ``n_test`` (the generators here
    already shuffle with their own key, so this is a random split reproducible from that key).
    With ``key`` the samples are first permuted by ``numpy_rng(key).permutation(N)``.
    The indexing runs on the host in NumPy (no compilation); both parts hold JAX arrays.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a models.data.Dataset, got {type(dataset).__name__}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real):
        raise TypeError(f"test_fraction must be a real number in (0, 1), got {test_fraction!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    n = dataset.num_examples
    if n < 2:
        raise ValueError(f"cannot split a dataset of {n} sample(s): at least 2 are needed")
    n_test = min(max(1, round(float(test_fraction) * n)), n - 1)
    order = np.arange(n) if key is None else numpy_rng(key).permutation(n)
    # index on the host with NumPy: no per-shape XLA compilation for a one-off split
    host = jax.tree.map(np.asarray, dataset)
    parts = (order[: n - n_test], order[n - n_test :])
    return tuple(jax.tree.map(jnp.asarray, host.take(part)) for part in parts)


# ---------------------------------------------------------------------------------------------
# argument checks (raise before anything is traced or compiled)


def check_key(key) -> None:
    """Raise TypeError unless ``key`` is one JAX PRNG key (``jax.random.key`` or raw uint32[2])."""
    if isinstance(key, jax.Array):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return
    raise TypeError(
        "key must be a single JAX PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
        f"got {type(key).__name__} {getattr(key, 'dtype', '')}{getattr(key, 'shape', '')}"
    )


def check_int(name: str, value, *, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` as int; TypeError if it is not an integer, ValueError if out of range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}, got {value}")
    return value


def keys_cubic(d: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel (a = −1/2), the kernel of bicubic interpolation.

    ``k(d) = 1.5|d|³ − 2.5|d|² + 1`` for ``|d| ≤ 1``, ``−0.5|d|³ + 2.5|d|² − 4|d| + 2`` for
    ``1 < |d| < 2``, else ``0``.
    """
    d = np.abs(d)
    near = (1.5 * d - 2.5) * d * d + 1.0
    far = ((-0.5 * d + 2.5) * d - 4.0) * d + 2.0
    return np.where(d <= 1.0, near, np.where(d < 2.0, far, 0.0))


def cubic_upsampling_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of bicubic interpolation from ``n_in`` to ``n_out >= n_in`` samples.

    Output sample ``o`` sits at input coordinate ``s = (o + ½) n_in / n_out − ½`` (pixel centres
    aligned, as ``jax.image.resize``); its value is ``Σ_k k(s − i_k) x[clip(i_k)]`` over the four
    nearest inputs ``i_k``, edges replicated. Each row sums to 1.
    """
    if n_out < n_in:
        raise ValueError(f"cubic_upsampling_matrix only enlarges: n_out={n_out} < n_in={n_in}")
    s = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(s).astype(int)
    matrix = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    for k in range(-1, 3):
        np.add.at(matrix, (rows, np.clip(base + k, 0, n_in - 1)), keys_cubic(s - (base + k)))
    return matrix


def numpy_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by the raw bits of the JAX key ``key`` (no compilation needed).

    ``np.random.default_rng(jax.random.key_data(key))``: the same key gives the same stream;
    different keys (e.g. from ``jax.random.split``) give independent streams.
    """
    check_key(key)
    return np.random.default_rng(np.asarray(jax.random.key_data(key), dtype=np.uint32))
