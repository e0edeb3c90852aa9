"""Supervised training of Flax NNX models with optax: segmentation (BCE + soft Dice) or regression.

The loop is the pure form of the model: ``graphdef, params, rest = nnx.split(model, nnx.Param,
...)`` once, then a jitted, buffer-donating step

    step(state, x, y, idx) -> (state, loss),   state = (params, rest, opt_state, step)

driven from Python (a tqdm bar, evaluation and checkpoints between steps). On XLA:CPU it was
measured at least as fast as ``nnx.jit`` with ``nnx.Optimizer`` (whose per-call graph traversal
it avoids), and the explicit state is what the checkpoints save.

One step ``t`` (0-based) uses the minibatch ``idx = π_e[j·B : (j+1)·B]`` where ``B`` is the batch
size, ``e = ⌊t / E⌋``, ``j = t mod E``, ``E = ⌊N / B⌋`` steps per epoch and
``π_e`` a random permutation of the ``N`` examples drawn from ``(key(seed), e)``: every epoch visits
a fresh random order, and the data order is a pure function of ``(seed, t)``, which is what makes
resuming exact.

Objective: segmentation ``L = BCE(z, t) + w·(1 − softDice(σ(z), t))`` (``w = dice_weight``; see
`models.losses`); regression ``L = mean((f(x) − y)²)``. Evaluation reports the mean loss and, for
segmentation, the mean per-image hard Dice and IoU at the threshold ``σ(z) > 0.5``.

With ``checkpoint_dir`` the full training state (params, other model state, optimizer state,
step, PRNG key, history) is saved with orbax every ``checkpoint_every`` steps, at the end, and on
``KeyboardInterrupt``; calling `train` again with the same directory and config resumes from the
latest checkpoint and ends with the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from models import checkpoint as ckpt
from models.losses import (
    TASKS,
    as_pair,
    check_model_io,
    evaluate,
    evaluate_state,
    inverse_gain,
    memoize_on_graph,
    objective,
)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "as_pair",
    "batch_loss",
    "evaluate",
    "make_optimizer",
    "train",
    "train_step_bytes",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
PROBE_SEED = 0  # the random directions of the inverse penalty: fold_in(key(PROBE_SEED), step)
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run; frozen, hashable and JSON round-trippable.

    ``learning_rate`` is the peak rate ``η``. Schedules: ``'constant'`` (``η`` after a linear
    warm-up from 0 over ``warmup_steps``) or ``'cosine'`` (warm-up, then
    ``η·½(1 + cos(π·(t − w)/(T − w)))`` down to 0 at ``T = steps``). Optimizers: ``'adam'``,
    ``'adamw'`` (decoupled ``weight_decay``), ``'sgd'`` (momentum 0.9). ``dice_weight`` is ``w``
    in the segmentation loss. Evaluation runs every ``eval_every`` steps and after the last,
    in chunks of ``eval_batch_size``. ``seed`` fixes the minibatch order.

    ``inverse_penalty = λ > 0`` (invertible models only: they need an ``inverse`` method) adds
    ``λ · mean_b (r_b / inverse_gain)²`` to the loss, with ``r_b`` the relative gain of the
    inverse along a fresh random direction per example and step (:func:`models.inverse_gain`,
    directions drawn from the step counter). It keeps the trained inverse well conditioned
    (a stability regulariser in the spirit of Behrmann et al. 2021, "Understanding and
    mitigating exploding inverses in invertible neural networks"): training to segment drives
    the smallest singular values of an invertible network's Jacobian down, and its float32
    round trip is then only as exact as its relative condition number times u.
    """

    task: str = "segmentation"
    steps: int = 500
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    dice_weight: float = 1.0
    inverse_penalty: float = 0.0
    inverse_gain: float = 100.0
    eval_every: int = 100
    eval_batch_size: int = 256
    seed: int = 0

    def __post_init__(self):
        for field, choices in (("task", TASKS), ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            if getattr(self, field) not in choices:
                raise ValueError(
                    f"unknown {field} {getattr(self, field)!r}; expected one of {choices}"
                )
        for field, low in (
            ("steps", 1),
            ("batch_size", 1),
            ("warmup_steps", 0),
            ("eval_every", 1),
            ("eval_batch_size", 1),
            ("seed", 0),
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"{field} must be an integer, got {value!r}")
            if value < low:
                raise ValueError(f"{field} must be >= {low}, got {value}")
            object.__setattr__(self, field, int(value))
        if self.warmup_steps >= self.steps and self.warmup_steps > 0:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be smaller than steps ({self.steps})"
            )
        for field, positive in (
            ("learning_rate", True),
            ("weight_decay", False),
            ("dice_weight", False),
            ("inverse_penalty", False),
            ("inverse_gain", True),
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise TypeError(f"{field} must be a real number, got {value!r}")
            value = float(value)
            if not np.isfinite(value) or value < 0 or (positive and value == 0):
                expected = "> 0" if positive else ">= 0"
                raise ValueError(f"{field} must be finite and {expected}, got {value}")
            object.__setattr__(self, field, value)

    def to_dict(self) -> dict:
        """The fields as a plain dict."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal configs give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, fields: dict) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys raise TypeError."""
        return cls(**fields)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))


@functools.lru_cache(maxsize=64)
def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optax transformation for ``config`` (cached, so equal configs share compiled steps)."""
    lr, warmup = config.learning_rate, config.warmup_steps
    if config.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=config.steps,
            end_value=0.0,
        )
    elif warmup > 0:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
        )
    else:
        schedule = lr
    if config.optimizer == "adam":
        return optax.adam(schedule)
    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay)
    return optax.sgd(schedule, momentum=0.9)


@dataclasses.dataclass
class TrainResult:
    """The trained model (the same object that was passed in, updated in place) and its history.

    ``history``: ``{"step": [1, …, T], "loss": [train loss per step], "eval": [{"step", "loss",
    "dice", "iou"} per evaluation], "seconds": wall-clock training time}`` (JSON-serialisable).
    ``from_cache`` is True when `models.cache.cached_train` restored instead of training.
    """

    model: nnx.Module
    history: dict
    from_cache: bool = False


class TrainState(NamedTuple):
    """Everything a train step changes: trainable params, other model state, optimizer, step."""

    params: Any
    rest: Any
    opt_state: Any
    step: jax.Array


def _step_config(config: TrainConfig) -> TrainConfig:
    """``config`` with the fields that do not change the compiled step set to defaults."""
    fixed = dict(batch_size=1, eval_every=1, eval_batch_size=1, seed=0)
    if config.schedule == "constant":
        fixed["steps"] = max(1, config.warmup_steps + 1)
    return dataclasses.replace(config, **fixed)


def batch_loss(model, xb, yb, config: TrainConfig, step, loss_of=None):
    """The training loss of one batch at step ``step``: the task's loss of ``model(xb)`` and,
    with ``config.inverse_penalty = λ > 0``, ``λ · mean_b (r_b / inverse_gain)²`` with ``r_b``
    the inverse's relative gain (:func:`models.inverse_gain`) along ``v ~ N(0, I)`` drawn from
    ``fold_in(key(PROBE_SEED), step)``."""
    loss_of = loss_of or objective(config.task, config.dice_weight)
    out = model(xb)
    loss = loss_of(out, yb)
    if config.inverse_penalty > 0:
        key = jax.random.fold_in(jax.random.key(PROBE_SEED), step)
        v = jax.random.normal(key, out.shape, out.dtype)
        r = inverse_gain(model.inverse, xb, out, v)
        loss = loss + config.inverse_penalty * jnp.mean((r / config.inverse_gain) ** 2)
    return loss


def train_step_bytes(model, x, y, config: TrainConfig | None = None) -> int:
    """Peak memory of one training step as XLA's buffer assignment plans it, in bytes.

    The step is ``value_and_grad`` over the trainable parameters of :func:`batch_loss` (the
    training loss of ``config``, default ``TrainConfig()``: segmentation, no inverse penalty;
    ``task='regression'`` for a decoder) on the batch ``(x, y)``; the plan's size is
    arguments + outputs + temporaries − aliased bytes (``compiled.memory_analysis()``). Only
    ``config``'s loss fields (task, dice weight, inverse penalty) matter. Nothing runs: the
    step is lowered and compiled, not executed.
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or None, got {type(config).__name__}")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        m = nnx.merge(graphdef, p, rest, copy=True)
        return batch_loss(m, x, y, config, 0)

    stats = jax.jit(jax.value_and_grad(loss)).lower(params).compile().memory_analysis()
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


@memoize_on_graph
def _compiled_step(graphdef, config: TrainConfig):
    tx = make_optimizer(config)
    loss_of = objective(config.task, config.dice_weight)

    def step(state: TrainState, x, y, idx):
        xb, yb = x[idx], y[idx]

        def loss_fn(params, rest):
            model = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables: mutable here
            loss = batch_loss(model, xb, yb, config, state.step, loss_of)
            _, _, rest = nnx.split(model, nnx.Param, ...)
            return loss, rest

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, rest), grads = grad_fn(state.params, state.rest)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, rest, opt_state, state.step + 1), loss

    return jax.jit(step, donate_argnums=0)


def _epoch_order(key, epoch: int, n: int) -> np.ndarray:
    """``π_e``: the order of the ``n`` examples in epoch ``e``, drawn from ``key`` and ``e``.

    A numpy PCG64 permutation seeded with ``(key_data(key), e)``: as explicit and reproducible as
    ``jax.random.permutation`` but with nothing to compile (which costs seconds per ``n`` on CPU).
    """
    seed = [int(v) for v in np.asarray(jax.random.key_data(key)).ravel()] + [epoch]
    return np.random.Generator(np.random.PCG64(seed)).permutation(n)


def _alive(tree) -> bool:
    return not any(getattr(a, "is_deleted", lambda: False)() for a in jax.tree.leaves(tree))


def _save(directory, state: TrainState, key, history: dict, config: TrainConfig) -> int:
    step = int(state.step)
    tree = {**state._asdict(), "key": key}
    ckpt.save_tree(
        directory,
        tree,
        step=step,
        keep=2,
        metadata={"config": config.to_dict(), "history": history},
    )
    return step


def _restore(directory, state: TrainState, key, config: TrainConfig):
    tree, meta = ckpt.restore_tree(directory, {**state._asdict(), "key": key})
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("config"), dict)
        or not isinstance(meta.get("history"), dict)
        or not all(k in meta["history"] for k in ("step", "loss", "eval", "seconds"))
    ):
        raise ckpt.CheckpointError(
            f"the training checkpoint in {directory} is corrupted: expected metadata with a "
            f"'config' dict and a 'history' dict (step, loss, eval, seconds), got {meta!r:.200}"
        )
    saved = meta["config"]
    if saved != config.to_dict():
        diff = {k: (saved.get(k), v) for k, v in config.to_dict().items() if saved.get(k) != v}
        raise ValueError(
            f"the checkpoint in {directory} was written by a different TrainConfig "
            f"(field: (saved, requested) = {diff}); use another checkpoint_dir to start afresh"
        )
    key = tree.pop("key")
    return TrainState(**tree), key, meta["history"]


def train(
    model: nnx.Module,
    train_data,
    *,
    config: TrainConfig,
    eval_data=None,
    checkpoint_dir=None,
    checkpoint_every: int | None = None,
    progress: bool = True,
    callback: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``train_data`` (a `Dataset` or an ``(x, y)`` pair).

    Args:
        model: a Flax NNX module mapping a batch of inputs to a batch shaped like the targets
            (for segmentation: logits shaped like the masks).
        train_data, eval_data: `Dataset` (images → masks) or ``(inputs, targets)`` arrays.
        config: the `TrainConfig`.
        checkpoint_dir: if set, save the training state there every ``checkpoint_every`` steps
            (default ``max(100, steps // 10)``), after the last step and on KeyboardInterrupt; an
            existing checkpoint there (same config) is resumed from.
        progress: show a tqdm bar.
        callback: ``callback(step, record)`` after every step; ``record`` holds the step's
            ``loss`` (a device scalar) and, after an evaluation, the eval metrics.

    Returns:
        `TrainResult` with the trained model and its history.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if config.inverse_penalty > 0 and not callable(getattr(model, "inverse", None)):
        raise ValueError(
            f"inverse_penalty={config.inverse_penalty} needs an invertible model with an "
            f"inverse method; {type(model).__name__} has none"
        )
    x, y = as_pair(train_data, task=config.task, name="train_data")
    n, batch = x.shape[0], config.batch_size
    if batch > n:
        raise ValueError(f"batch_size {batch} exceeds the {n} training examples")
    if checkpoint_every is not None and (
        isinstance(checkpoint_every, bool)
        or not isinstance(checkpoint_every, int)
        or checkpoint_every < 1
    ):
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    every = checkpoint_every or max(100, config.steps // 10)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    check_model_io(graphdef, params, rest, x, y, "train_data")
    held_out = None
    if eval_data is not None:
        held_out = as_pair(eval_data, task=config.task, name="eval_data")
        check_model_io(graphdef, params, rest, *held_out, "eval_data")

    # private copies (the step donates its input buffers), committed to one device like restored
    # checkpoints are, so that a resumed run reuses the compiled step
    device = jax.devices()[0]
    params, rest = jax.device_put(
        jax.tree.map(lambda a: jnp.array(a, copy=True), (params, rest)), device
    )
    state = jax.device_put(
        TrainState(params, rest, make_optimizer(config).init(params), jnp.zeros((), jnp.int32)),
        device,
    )
    key = jax.random.key(config.seed)
    history: dict = {"step": [], "loss": [], "eval": [], "seconds": 0.0}
    last_saved = -1
    if checkpoint_dir is not None and ckpt.available_steps(checkpoint_dir):
        state, key, history = _restore(checkpoint_dir, state, key, config)
        last_saved = int(state.step)

    step_fn = _compiled_step(graphdef, _step_config(config))
    per_epoch = n // batch
    start, pending = int(state.step), []
    seconds0, t0 = history["seconds"], time.perf_counter()
    log_every = max(1, config.steps // 100)

    def flush():
        history["loss"].extend(float(v) for v in jax.device_get(pending))
        history["step"] = list(range(1, len(history["loss"]) + 1))
        history["seconds"] = seconds0 + time.perf_counter() - t0
        pending.clear()

    bar = tqdm(
        total=config.steps,
        initial=start,
        disable=not progress,
        unit="step",
        desc=f"train {config.task}",
    )
    epoch_of_perm, perm = -1, None
    try:
        for t in range(start, config.steps):
            epoch, j = divmod(t, per_epoch)
            if epoch != epoch_of_perm:
                perm = _epoch_order(key, epoch, n)
                epoch_of_perm = epoch
            state, loss = step_fn(state, x, y, perm[j * batch : (j + 1) * batch])
            pending.append(loss)
            s, record = t + 1, {"loss": loss}
            if s % log_every == 0 or s == config.steps:
                if not np.isfinite(value := float(loss)):
                    raise FloatingPointError(
                        f"training loss became {value} at step {s}; lower the learning rate"
                    )
                bar.set_postfix(loss=f"{value:.4g}", refresh=False)
            if held_out is not None and (s % config.eval_every == 0 or s == config.steps):
                metrics = evaluate_state(
                    graphdef,
                    state.params,
                    state.rest,
                    *held_out,
                    task=config.task,
                    dice_weight=config.dice_weight,
                    batch_size=config.eval_batch_size,
                )
                history["eval"].append({"step": s, **metrics})
                record.update(metrics)
                bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
            if checkpoint_dir is not None and (s % every == 0 or s == config.steps):
                flush()
                last_saved = _save(checkpoint_dir, state, key, history, config)
            bar.update(1)
            if callback is not None:
                callback(s, record)
    except KeyboardInterrupt:
        if (
            checkpoint_dir is not None
            and _alive(state)
            and int(state.step) != last_saved
            and len(history["loss"]) + len(pending) == int(state.step)
        ):
            flush()
            _save(checkpoint_dir, state, key, history, config)
        raise
    finally:
        bar.close()
        if _alive(state):
            nnx.update(model, state.params, state.rest)
    flush()
    return TrainResult(model, history)
