"""Image and segmentation metrics, for one sample or a batch.

Layout: a 4-D array is a batch of NHWC images; anything else is one sample, unless
``batched=True`` says the leading axis is a batch (``batched=False`` forces one sample).
For a batch the metric is computed per sample and averaged (``reduce=True``) or returned per
sample (``reduce=False``).

* ``psnr = 10 log10(data_range^2 / mean((x - ref)^2))`` (``inf`` for identical arrays).
* ``ssim``: scikit-image's ``structural_similarity`` (Wang et al. 2004, 7x7 uniform window, or
  the largest odd window that fits a smaller image), channels averaged for HWC images.
* ``relative_error = ||x - ref|| / ||ref||`` (Frobenius norm; absolute norm when ``ref = 0``).
* ``dice = 2 |P & M| / (|P| + |M|)``, ``iou = |P & M| / |P | M|`` with ``P = pred > threshold``
  and ``M = mask > 0.5`` (hard); with ``soft=True`` the probabilities are used directly:
  ``dice = 2 sum(p m) / (sum p + sum m)``, ``iou = sum(p m) / (sum p + sum m - sum(p m))``.
  Both are 1 when prediction and mask are both empty.

``psnr``, ``relative_error``, ``dice`` and ``iou`` are jnp code (jit-safe, return jax arrays);
``ssim`` runs scikit-image on host and returns a numpy value.

Non-finite input: a NaN or inf entry in either array is a ``ValueError`` naming the metric and
the argument (a NaN pixel would make ``psnr``, ``relative_error`` and ``ssim`` NaN, and would
silently count as background in the hard ``dice``/``iou``). Under ``jax.jit`` the values are
not known when the metric is traced, so there the check is skipped and NaN propagates.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Real
from skimage.metrics import structural_similarity


def _is_batch(a, batched: bool | None) -> bool:
    return a.ndim == 4 if batched is None else bool(batched)


def _check_pair(name: str, x, ref) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"{name}: shapes differ, {x.shape} vs {ref.shape}; expected equal shapes")


def _check_finite(name: str, **arrays) -> None:
    """``ValueError`` if a concrete array has a NaN or inf entry (tracers are not checked)."""
    for arg, a in arrays.items():
        if isinstance(a, jax.core.Tracer):
            continue
        finite = np.isfinite(a) if isinstance(a, np.ndarray) else jnp.isfinite(a)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(
                f"{name}: {arg} has {bad} NaN or inf entries (shape {a.shape}); expected finite "
                "values"
            )


def _as_pair(name: str, a, b, names: tuple[str, str] = ("pred", "mask")):
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    _check_pair(name, a, b)
    _check_finite(name, **{names[0]: a, names[1]: b})
    return a, b


def _reduce_rows(values, batch: bool, reduce: bool):
    if not batch:
        return values[0]
    return jnp.mean(values) if reduce else values


def _rows(a, batch: bool):
    """``(B, -1)`` view: one row per sample (a single sample is one row)."""
    return a.reshape((a.shape[0], -1)) if batch else a.reshape((1, -1))


def psnr(
    x: Float[ArrayLike, "..."],
    ref: Float[ArrayLike, "..."],
    data_range: float = 1.0,
    *,
    batched: bool | None = None,
    reduce: bool = True,
) -> Array:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``."""
    x, ref = jnp.asarray(x, jnp.float32), jnp.asarray(ref, jnp.float32)
    _check_pair("psnr", x, ref)
    _check_finite("psnr", x=x, ref=ref)
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    return _psnr(x, ref, data_range, batch=_is_batch(x, batched), reduce=reduce)


@functools.partial(jax.jit, static_argnames=("batch", "reduce"))
def _psnr(x, ref, data_range, *, batch: bool, reduce: bool):
    mse = jnp.mean(jnp.square(_rows(x, batch) - _rows(ref, batch)), axis=1)
    return _reduce_rows(10.0 * jnp.log10(data_range**2 / mse), batch, reduce)


def relative_error(
    x: Float[ArrayLike, "..."],
    ref: Float[ArrayLike, "..."],
    *,
    batched: bool | None = None,
    reduce: bool = True,
) -> Array:
    """``||x - ref|| / ||ref||`` per sample."""
    x, ref = jnp.asarray(x, jnp.float32), jnp.asarray(ref, jnp.float32)
    _check_pair("relative_error", x, ref)
    _check_finite("relative_error", x=x, ref=ref)
    return _relative_error(x, ref, batch=_is_batch(x, batched), reduce=reduce)


@functools.partial(jax.jit, static_argnames=("batch", "reduce"))
def _relative_error(x, ref, *, batch: bool, reduce: bool):
    xr, rr = _rows(x, batch), _rows(ref, batch)
    den = jnp.linalg.norm(rr, axis=1)
    err = jnp.linalg.norm(xr - rr, axis=1) / jnp.where(den > 0, den, 1.0)
    return _reduce_rows(err, batch, reduce)


def ssim(
    x: Float[ArrayLike, "..."],
    ref: Float[ArrayLike, "..."],
    data_range: float = 1.0,
    *,
    batched: bool | None = None,
    reduce: bool = True,
):
    """Structural similarity (scikit-image) of HW / HWC images or NHWC batches."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    _check_pair("ssim", x, ref)
    _check_finite("ssim", x=x, ref=ref)
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    batch = _is_batch(x, batched)
    xs, rs = (x, ref) if batch else (x[None], ref[None])
    if xs.ndim not in (3, 4):
        raise ValueError(f"ssim expects HW, HWC or NHWC images, got shape {x.shape}")
    h, w = xs.shape[1:3]
    win = min(7, h, w)
    win -= 1 - win % 2  # largest odd window that fits
    if win < 3:
        raise ValueError(f"ssim needs images of at least 3x3 pixels, got {h}x{w}")
    channel_axis = -1 if xs.ndim == 4 else None
    vals = np.array(
        [
            structural_similarity(
                a, b, data_range=data_range, win_size=win, channel_axis=channel_axis
            )
            for a, b in zip(xs, rs, strict=True)
        ]
    )
    if not batch:
        return vals[0]
    return vals.mean() if reduce else vals


def _overlap(pred, mask, threshold, soft: bool, batch: bool):
    p = pred if soft else (pred > threshold).astype(jnp.float32)
    m = (mask > 0.5).astype(jnp.float32) if not soft else mask
    p, m = _rows(p, batch), _rows(m, batch)
    inter = jnp.sum(p * m, axis=1)
    total = jnp.sum(p, axis=1) + jnp.sum(m, axis=1)
    return inter, total


def dice(
    pred: Float[ArrayLike, "..."],
    mask: Real[ArrayLike, "..."] | Bool[ArrayLike, "..."],
    threshold: float = 0.5,
    *,
    soft: bool = False,
    batched: bool | None = None,
    reduce: bool = True,
) -> Array:
    """Dice coefficient ``2 |P & M| / (|P| + |M|)`` (soft: with probabilities)."""
    pred, mask = _as_pair("dice", pred, mask)
    return _dice(pred, mask, threshold, soft=soft, batch=_is_batch(pred, batched), reduce=reduce)


@functools.partial(jax.jit, static_argnames=("soft", "batch", "reduce"))
def _dice(pred, mask, threshold, *, soft: bool, batch: bool, reduce: bool):
    inter, total = _overlap(pred, mask, threshold, soft, batch)
    val = jnp.where(total > 0, 2.0 * inter / jnp.where(total > 0, total, 1.0), 1.0)
    return _reduce_rows(val, batch, reduce)


def iou(
    pred: Float[ArrayLike, "..."],
    mask: Real[ArrayLike, "..."] | Bool[ArrayLike, "..."],
    threshold: float = 0.5,
    *,
    soft: bool = False,
    batched: bool | None = None,
    reduce: bool = True,
) -> Array:
    """Intersection over union ``|P & M| / |P | M|`` (soft: with probabilities)."""
    pred, mask = _as_pair("iou", pred, mask)
    return _iou(pred, mask, threshold, soft=soft, batch=_is_batch(pred, batched), reduce=reduce)


@functools.partial(jax.jit, static_argnames=("soft", "batch", "reduce"))
def _iou(pred, mask, threshold, *, soft: bool, batch: bool, reduce: bool):
    inter, total = _overlap(pred, mask, threshold, soft, batch)
    union = total - inter
    val = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 1.0)
    return _reduce_rows(val, batch, reduce)
