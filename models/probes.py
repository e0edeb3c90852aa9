"""Linear segmentation probes on frozen activations (how well does one layer segment?).

A probe reads a frozen activation ``A ∈ R^{h × w × C}`` of an input of size ``H × W`` and
predicts the mask logits

    z = U(A ŵ + b),   ŵ_c = w_c / s_c,   b̂ = b − Σ_c w_c μ_c / s_c

i.e. a 1x1 convolution (``C -> 1``) of the activation standardised per channel
(``(A_c − μ_c) / s_c`` with the training features' channel mean ``μ_c`` and standard deviation
``s_c``, which only conditions the optimisation: the probe is affine in ``A`` either way),
followed by the bilinear resize ``U`` from ``h × w`` to ``H × W`` (``jax.image.resize``, half-pixel
centres; the identity when the sizes agree). The 1x1 convolution and ``U`` are both linear, so the
order does not matter and the probe is the best *linear* read-out of the mask from that layer.

Training minimises the project's segmentation loss on the training features and masks,
``BCE(z, t) + dice_weight · (1 − softDice(σ(z), t))`` (`models.losses.segmentation_loss`, the
U-Net's own objective), full batch, with Adam for ``steps`` steps from ``w = 0, b = 0``
(one compiled ``lax.scan``). Evaluation is the per-image hard Dice and IoU at ``σ(z) > 0.5``
(`models.losses.dice` / `iou`: the same definitions as ``inversion.metrics.dice`` / ``iou`` at
threshold 0.5 on ``σ(z)``; ``models`` does not import ``inversion``).

>>> import jax, jax.numpy as jnp
>>> masks = (jax.random.uniform(jax.random.key(0), (8, 8, 8, 1)) > 0.5).astype(jnp.float32)
>>> feats = jnp.concatenate([2 * masks - 1, jnp.zeros_like(masks)], axis=-1)  # channel 0 = mask
>>> params = train_probe(feats, masks, steps=100, learning_rate=0.1, key=jax.random.key(0))
>>> float(evaluate_probe(params, feats, masks)["dice_mean"])
1.0
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from models.losses import dice, iou, segmentation_loss

__all__ = ["ProbeParams", "evaluate_probe", "probe_predict", "scores", "train_probe"]


class ProbeParams(NamedTuple):
    """A linear probe: ``w`` (C,) and ``b`` () on features standardised with ``mean``, ``scale``
    (C,) (the training features' per-channel mean and standard deviation, floored at 1e-6)."""

    w: Array
    b: Array
    mean: Array
    scale: Array


def _check_features(features, name: str = "features") -> jax.Array:
    features = jnp.asarray(features, jnp.float32)
    if features.ndim != 4 or 0 in features.shape:
        raise ValueError(
            f"{name} must be a non-empty NHWC batch of activations (N, h, w, C), "
            f"got shape {features.shape}"
        )
    if not isinstance(features, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(features))):
        raise ValueError(f"{name} contain non-finite values (NaN or inf)")
    return features


def _check_masks(masks, features) -> jax.Array:
    masks = jnp.asarray(masks, jnp.float32)
    if masks.ndim != 4 or masks.shape[-1] != 1 or 0 in masks.shape:
        raise ValueError(f"masks must have shape (N, H, W, 1), got {masks.shape}")
    if masks.shape[0] != features.shape[0]:
        raise ValueError(
            f"features and masks differ in length: {features.shape[0]} vs {masks.shape[0]} images"
        )
    if not bool(jnp.all((masks == 0) | (masks == 1))):
        raise ValueError("masks must be 0 or 1")
    return masks


def _check_size(out_size) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in out_size)
    except (TypeError, ValueError):
        raise ValueError(f"out_size must be (H, W), got {out_size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"out_size must be positive, got {out_size!r}")
    return h, w


def _logits(params: ProbeParams, features: Array, out_size: tuple[int, int]) -> Array:
    standardized = (features - params.mean) / params.scale
    return _standardized_logits(params.w, params.b, standardized, out_size)


def _standardized_logits(w, b, standardized: Array, out_size: tuple[int, int]) -> Array:
    z = (standardized @ w + b)[..., None]  # (N, h, w, 1)
    n, height, width, _ = z.shape
    if (height, width) == tuple(out_size):
        return z
    return jax.image.resize(z, (n, *out_size, 1), method="bilinear")


def probe_predict(
    params: ProbeParams, features: Float[Array, "n h w c"], out_size: tuple[int, int]
) -> Float[Array, "n H W 1"]:
    """The probe's mask logits ``z`` (N, H, W, 1) for ``features`` (N, h, w, C)."""
    features = _check_features(features)
    if features.shape[-1] != params.w.shape[0]:
        raise ValueError(
            f"the probe reads {params.w.shape[0]} channels, the features have {features.shape[-1]}"
        )
    return _logits(params, features, _check_size(out_size))


@functools.partial(jax.jit, static_argnames=("steps", "out_size"))
def _fit(features, masks, mean, scale, *, steps, learning_rate, dice_weight, out_size):
    params = ProbeParams(jnp.zeros(features.shape[-1]), jnp.zeros(()), mean, scale)
    opt = optax.adam(learning_rate)
    standardized = (features - mean) / scale  # once, outside the loop

    def loss(trainable):
        w, b = trainable
        z = _standardized_logits(w, b, standardized, out_size)
        return segmentation_loss(z, masks, dice_weight=dice_weight)

    def step(carry, _):
        trainable, state = carry
        value, grads = jax.value_and_grad(loss)(trainable)
        updates, state = opt.update(grads, state)
        return (optax.apply_updates(trainable, updates), state), value

    trainable = (params.w, params.b)
    (trainable, _), history = jax.lax.scan(step, (trainable, opt.init(trainable)), None, steps)
    return ProbeParams(*trainable, mean, scale), history


def train_probe(
    features: Float[Array, "n h w c"],
    masks: Float[Array, "n H W 1"],
    *,
    steps: int = 300,
    learning_rate: float = 0.05,
    dice_weight: float = 1.0,
    key: jax.Array | None = None,
    return_history: bool = False,
):
    """Fit a linear probe (module docstring) of ``masks`` on frozen ``features``.

    ``key`` is accepted for a uniform signature and unused: the fit is deterministic (zero init,
    full batch). Returns `ProbeParams`, or ``(params, loss per step)`` with ``return_history``.
    ``ValueError`` for features that are not (N, h, w, C), masks that are not (N, H, W, 1) in
    {0, 1}, mismatched lengths, a non-positive ``steps`` or ``learning_rate``.
    """
    del key
    features = _check_features(features)
    masks = _check_masks(masks, features)
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not np.isfinite(learning_rate) or learning_rate <= 0:
        raise ValueError(f"learning_rate must be finite and > 0, got {learning_rate!r}")
    mean = jnp.mean(features, axis=(0, 1, 2))
    scale = jnp.maximum(jnp.std(features, axis=(0, 1, 2)), 1e-6)
    params, history = _fit(
        features,
        masks,
        mean,
        scale,
        steps=int(steps),
        learning_rate=float(learning_rate),
        dice_weight=float(dice_weight),
        out_size=tuple(masks.shape[1:3]),
    )
    return (params, history) if return_history else params


def evaluate_probe(
    params: ProbeParams, features: Float[Array, "n h w c"], masks: Float[Array, "n H W 1"]
) -> dict:
    """Per-image hard Dice and IoU of the probe at ``σ(z) > 0.5`` on held-out data.

    Returns ``{"dice": (N,), "iou": (N,), "dice_mean", "dice_std", "iou_mean", "iou_std"}``
    (NumPy arrays and floats; std over images, ``ddof=0``).
    """
    features = _check_features(features)
    masks = _check_masks(masks, features)
    z = probe_predict(params, features, masks.shape[1:3])
    return scores(z, masks)


def scores(logits: Array, masks: Array) -> dict:
    """The per-image Dice and IoU of logits against masks, with their mean and spread."""
    d, j = np.asarray(dice(logits, masks)), np.asarray(iou(logits, masks))
    return {
        "dice": d,
        "iou": j,
        "dice_mean": float(d.mean()),
        "dice_std": float(d.std()),
        "iou_mean": float(j.mean()),
        "iou_std": float(j.std()),
    }
