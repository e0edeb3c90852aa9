"""Training losses, segmentation metrics and the evaluation of a model on a data set.

Notation: ``z`` are logits, ``p = σ(z)`` foreground probabilities, ``t ∈ {0, 1}`` the target mask,
sums ``Σ`` run over the pixels (all non-batch axes) of one image, and every loss is a mean over
the batch of per-image values, so that a loss does not depend on how a data set is chunked.

* binary cross-entropy with logits, per pixel
  ``ℓ(z, t) = max(z, 0) − z·t + log(1 + e^{−|z|})`` (= ``−t log p − (1 − t) log(1 − p)``,
  computed without overflow);
* soft Dice loss ``1 − (2 Σ p·t + ε) / (Σ p + Σ t + ε)`` with ``ε = 1`` (so that an empty
  prediction on an empty mask costs 0);
* hard Dice ``2 |P ∩ T| / (|P| + |T|)`` and IoU ``|P ∩ T| / |P ∪ T|`` for the binary prediction
  ``P = [σ(z) > 0.5] = [z > 0]``; an image with both ``P`` and ``T`` empty scores 1 (perfect);
* mean squared error ``mean((y − t)²)``;
* for invertible networks, the relative gain of the inverse along a random direction
  (:func:`inverse_gain`), which :class:`models.TrainConfig`'s ``inverse_penalty`` keeps small.

These live in ``models/`` (not ``inversion.metrics``) because ``models`` never depends on
``inversion``. `evaluate` averages them over a data set with one compiled function per model
structure (chunks padded to one size, padded examples weighted 0).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

__all__ = [
    "TASKS",
    "as_pair",
    "bce_with_logits",
    "check_model_io",
    "dice",
    "evaluate",
    "inverse_gain",
    "iou",
    "mse",
    "objective",
    "segmentation_loss",
    "soft_dice_loss",
]

TASKS = ("segmentation", "regression")

_SMOOTH = 1.0


def _per_image_sum(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


@jax.jit
def bce_with_logits(
    logits: Float[Array, "b ..."], targets: Float[Array, "b ..."]
) -> Float[Array, ""]:
    """Mean binary cross-entropy ``max(z, 0) − z·t + log(1 + e^{−|z|})`` over all pixels."""
    z = logits
    per_pixel = jnp.maximum(z, 0.0) - z * targets + jnp.log1p(jnp.exp(-jnp.abs(z)))
    return jnp.mean(per_pixel)


@jax.jit
def soft_dice_loss(
    logits: Float[Array, "b ..."], targets: Float[Array, "b ..."], *, smooth: float = _SMOOTH
) -> Float[Array, ""]:
    """Batch mean of ``1 − (2 Σ σ(z)·t + ε) / (Σ σ(z) + Σ t + ε)`` (per image, ``ε = smooth``)."""
    p = jax.nn.sigmoid(logits)
    inter = _per_image_sum(p * targets)
    total = _per_image_sum(p) + _per_image_sum(targets)
    return jnp.mean(1.0 - (2.0 * inter + smooth) / (total + smooth))


@jax.jit
def segmentation_loss(
    logits: Float[Array, "b ..."],
    targets: Float[Array, "b ..."],
    *,
    dice_weight: float = 1.0,
) -> Float[Array, ""]:
    """``bce_with_logits(z, t) + dice_weight · soft_dice_loss(z, t)``."""
    return bce_with_logits(logits, targets) + dice_weight * soft_dice_loss(logits, targets)


def _hard_counts(logits: Array, targets: Array) -> tuple[Array, Array, Array]:
    pred = (logits > 0.0).astype(jnp.float32)  # σ(z) > 0.5  ⇔  z > 0
    truth = (targets > 0.5).astype(jnp.float32)
    return _per_image_sum(pred * truth), _per_image_sum(pred), _per_image_sum(truth)


@jax.jit
def dice(logits: Float[Array, "b ..."], targets: Float[Array, "b ..."]) -> Float[Array, " b"]:
    """Per-image hard Dice ``2|P ∩ T| / (|P| + |T|)`` with ``P = [σ(z) > 0.5]``; 1 if both empty."""
    inter, n_pred, n_true = _hard_counts(logits, targets)
    total = n_pred + n_true
    return jnp.where(total > 0, 2.0 * inter / jnp.maximum(total, 1.0), 1.0)


@jax.jit
def iou(logits: Float[Array, "b ..."], targets: Float[Array, "b ..."]) -> Float[Array, " b"]:
    """Per-image IoU ``|P ∩ T| / |P ∪ T|`` with ``P = [σ(z) > 0.5]``; 1 if both empty."""
    inter, n_pred, n_true = _hard_counts(logits, targets)
    union = n_pred + n_true - inter
    return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)


@jax.jit
def mse(predictions: Float[Array, "b ..."], targets: Float[Array, "b ..."]) -> Float[Array, ""]:
    """Mean squared error ``mean((y − t)²)`` over all entries."""
    return jnp.mean(jnp.square(predictions - targets))


def as_pair(data, *, task: str = "segmentation", name: str = "data") -> tuple[jax.Array, jax.Array]:
    """``(inputs, targets)`` float32 arrays from a `Dataset` (images, masks) or an ``(x, y)`` pair.

    Raises TypeError for anything else, ValueError for mismatched lengths, empty or non-finite
    data, or (segmentation) targets outside ``{0, 1}``.
    """
    if hasattr(data, "images") and hasattr(data, "masks"):
        x, y = data.images, data.masks
    elif isinstance(data, tuple | list) and len(data) == 2:
        x, y = data
    else:
        raise TypeError(
            f"{name} must be a Dataset (with .images and .masks) or an (inputs, targets) pair, "
            f"got {type(data).__name__}"
        )
    arrays = []
    for label, a in (("inputs", x), ("targets", y)):
        a = np.asarray(a)
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise TypeError(f"{name} {label} must be real numbers, got dtype {a.dtype}")
        if a.ndim < 2 or a.shape[0] < 1:
            raise ValueError(
                f"{name} {label} must have a leading sample axis and at least one feature axis, "
                f"got shape {a.shape}"
            )
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            bad = int(np.size(a) - np.isfinite(a).sum())
            raise ValueError(f"{name} {label} contain {bad} non-finite value(s) (NaN or inf)")
        arrays.append(a)
    x, y = arrays
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name} inputs and targets differ in length: {x.shape[0]} vs {y.shape[0]} samples"
        )
    if task == "segmentation" and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{name} targets (masks) must be 0 or 1 for segmentation")
    return jnp.asarray(x), jnp.asarray(y)


def check_model_io(graphdef, params, rest, x, y, name: str = "data") -> None:
    """ValueError unless the model maps one input of ``x`` to an output shaped like one ``y``."""

    def forward(p, r, xb):
        return nnx.merge(graphdef, p, r)(xb)

    one = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    try:
        out = jax.eval_shape(forward, params, rest, one)
    except Exception as err:  # shape errors surface as many types inside the model
        raise ValueError(
            f"the model does not accept {name} inputs of per-example shape {x.shape[1:]}: {err}"
        ) from err
    if tuple(out.shape[1:]) != tuple(y.shape[1:]):
        raise ValueError(
            f"the model maps {name} inputs of per-example shape {x.shape[1:]} to outputs of shape "
            f"{tuple(out.shape[1:])}, but the {name} targets have shape {y.shape[1:]}"
        )


def inverse_gain(inverse: Callable, x: Array, y: Array, v: Array) -> Float[Array, " b"]:
    """Per example, the relative gain of ``inverse`` at ``y = f(x)`` along the direction ``v``:

        r = ‖J_{f⁻¹}(y) v‖ · ‖y‖ / (‖v‖ · ‖x‖)          (one Jacobian-vector product).

    For ``v ~ N(0, I)``, ``E[r²] = (‖y‖/‖x‖)² · ‖J_{f⁻¹}‖_F² / d = mean_i (κ_i²)`` with
    ``κ_i = ‖y‖ / (σ_i(J_f) ‖x‖)``: the mean square of the relative gains of the inverse, which
    the smallest singular values of the forward Jacobian dominate. ``max_i κ_i`` is the relative
    condition number of the inverse: a float32 ``y`` (relative error ≤ u = 2^-24) moves the
    inverse by up to ``κ·u``. The point ``y`` and the ratio ``‖y‖/‖x‖`` enter as constants
    (no gradient), so the gradient acts through the inverse's Jacobian only."""
    y = jax.lax.stop_gradient(y)
    _, jv = jax.jvp(inverse, (y,), (v,))
    axes = tuple(range(1, y.ndim))

    def norm(a):
        return jnp.sqrt(jnp.sum(jnp.square(a), axis=axes))

    scale = jax.lax.stop_gradient(norm(y) / norm(x))
    return norm(jv) * scale / norm(v)


def objective(task: str, dice_weight: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The batch loss ``(out, t) -> scalar`` of ``task``: `segmentation_loss` or `mse`."""
    if task == "segmentation":
        return lambda out, t: segmentation_loss(out, t, dice_weight=dice_weight)
    return mse


def per_example(loss: Callable) -> Callable:
    """``out, t -> (b,)``: ``loss`` applied to each example on its own."""
    return jax.vmap(lambda o, t: loss(o[None], t[None]))


def memoize_on_graph(build):
    """Cache ``build(graphdef, *args)`` (the last 16) by equality: graphdefs of models with
    dict attributes are not hashable, so ``functools.lru_cache`` cannot key on them."""
    entries: list = []

    def cached(graphdef, *args):
        for g, a, value in entries:
            if a == args and g == graphdef:
                return value
        value = build(graphdef, *args)
        entries.append((graphdef, args, value))
        del entries[:-16]
        return value

    return cached


@memoize_on_graph
def _compiled_eval(graphdef, task: str, dice_weight: float):
    loss_per_example = per_example(objective(task, dice_weight))

    def sums(params, rest, xb, yb, weight):
        out = nnx.merge(graphdef, params, rest)(xb)
        result = {"loss": jnp.sum(weight * loss_per_example(out, yb))}
        if task == "segmentation":
            result["dice"] = jnp.sum(weight * dice(out, yb))
            result["iou"] = jnp.sum(weight * iou(out, yb))
        return result

    return jax.jit(sums)


def evaluate_state(graphdef, params, rest, x, y, *, task, dice_weight, batch_size) -> dict:
    """Means over all examples, in chunks of ``batch_size`` (the last one zero-padded, weight 0)."""
    n = x.shape[0]
    size = min(batch_size, n)
    fn = _compiled_eval(graphdef, task, float(dice_weight))
    totals = None
    for start in range(0, n, size):
        xb, yb = x[start : start + size], y[start : start + size]
        weight = jnp.ones(xb.shape[0], jnp.float32)
        if xb.shape[0] < size:
            pad = size - xb.shape[0]
            xb, yb, weight = (
                jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])
                for a in (xb, yb, weight)
            )
        part = fn(params, rest, xb, yb, weight)
        totals = part if totals is None else jax.tree.map(jnp.add, totals, part)
    return {name: float(value) / n for name, value in jax.device_get(totals).items()}


def evaluate(
    model: nnx.Module,
    data,
    *,
    task: str = "segmentation",
    batch_size: int = 256,
    dice_weight: float = 1.0,
) -> dict:
    """Mean loss (and for segmentation mean per-image Dice and IoU at σ > 0.5) of ``model``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x, y = as_pair(data, task=task, name="data")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    check_model_io(graphdef, params, rest, x, y, "data")
    return evaluate_state(
        graphdef, params, rest, x, y, task=task, dice_weight=dice_weight, batch_size=batch_size
    )
