"""Tests of models.losses and models.training: losses against independent numpy formulas,
config validation, learning, evaluation, exact resume after an interruption, and the quality
bar of the seed U-Net on synthetic scenes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import losses
from models import training as training_module
from models.data.dataset import Dataset
from models.data.scenes import synthetic_scenes
from models.losses import bce_with_logits, dice, evaluate, iou, mse, soft_dice_loss
from models.training import TrainConfig, train


def _param(rng: np.random.Generator, shape, scale: float) -> nnx.Param:
    """Initialised with numpy: no jax.random kernel to compile in every test process."""
    return nnx.Param(jnp.asarray(rng.normal(0.0, scale, shape), jnp.float32))


class Conv(nnx.Module):
    def __init__(self, c_in: int, c_out: int, rng: np.random.Generator):
        self.kernel = _param(rng, (3, 3, c_in, c_out), (9 * c_in) ** -0.5)
        self.bias = nnx.Param(jnp.zeros(c_out))

    def __call__(self, x):
        y = jax.lax.conv_general_dilated(
            x, self.kernel[...], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y + self.bias[...]


class TinySeg(nnx.Module):
    """conv3×3 (c→4) → ReLU → conv3×3 (4→out): enough to threshold a bright shape."""

    def __init__(self, channels: int = 1, out: int = 1, *, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.c1, self.c2 = Conv(channels, 4, rng), Conv(4, out, rng)

    def __call__(self, x):
        return self.c2(jax.nn.relu(self.c1(x)))


class Affine(nnx.Module):
    def __init__(self, n_in: int, n_out: int, *, seed: int = 0):
        self.w = _param(np.random.default_rng(seed), (n_in, n_out), n_in**-0.5)
        self.b = nnx.Param(jnp.zeros(n_out))

    def __call__(self, x):
        return x @ self.w[...] + self.b[...]


class WithBatchNorm(nnx.Module):
    """A model with non-trainable state (batch statistics) that the train step must carry."""

    def __init__(self, *, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.c1, self.c2 = Conv(1, 4, rng), Conv(4, 1, rng)
        self.bn = nnx.BatchNorm(4, use_running_average=False, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.c2(jax.nn.relu(self.bn(self.c1(x))))


@pytest.fixture(scope="module")
def scenes():
    train_set = synthetic_scenes(jax.random.key(0), 48, size=16)
    test_set = synthetic_scenes(jax.random.key(1), 20, size=16)
    return train_set, test_set


CONFIG = TrainConfig(steps=40, batch_size=8, learning_rate=3e-2, eval_every=20)


def params_of(model):
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(model, nnx.Param))]


def assert_params_equal(a, b):
    for u, v in zip(params_of(a), params_of(b), strict=True):
        np.testing.assert_array_equal(u, v)


EPS32 = float(np.finfo(np.float32).eps)


# ---------------------------------------------------------------------------------- losses


def test_losses_match_numpy_formulas():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 5, 5, 1)).astype(np.float32) * 3
    t = (rng.random((3, 5, 5, 1)) > 0.5).astype(np.float32)
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    bce = np.mean(-t * np.log(p) - (1 - t) * np.log(1 - p))
    n = z[0].size  # 25 pixels per image, 75 in all
    # per pixel a few float32 roundings of terms up to |z| + 1 (log-sigmoid: <= 4 u (|z| + 1),
    # u = eps32 / 2), then a mean of 3 n non-negative terms (3 n u relative)
    atol = 2 * EPS32 * np.mean(np.abs(z) + 1) + 3 * n * EPS32 / 2 * bce
    np.testing.assert_allclose(bce_with_logits(z, t), bce, rtol=0, atol=atol)
    inter, total = (p * t).sum(axis=(1, 2, 3)), p.sum(axis=(1, 2, 3)) + t.sum(axis=(1, 2, 3))
    # sigmoids (2 eps32 each), n-term sums and a quotient <= 1, then 1 - quotient: absolute
    np.testing.assert_allclose(
        soft_dice_loss(z, t),
        np.mean(1 - (2 * inter + 1) / (total + 1)),
        rtol=0,
        atol=(n + 8) * EPS32,
    )
    pred = z > 0
    both = (pred & (t > 0)).sum(axis=(1, 2, 3))
    # exact counts, one rounded quotient
    np.testing.assert_allclose(
        dice(z, t), 2 * both / (pred.sum((1, 2, 3)) + t.sum((1, 2, 3))), rtol=EPS32
    )
    np.testing.assert_allclose(iou(z, t), both / (pred | (t > 0)).sum(axis=(1, 2, 3)), rtol=EPS32)
    # 3 n squares of float32 differences (3 u each) and their mean (3 n u), against float64
    expected = np.mean((z.astype(np.float64) - t) ** 2)
    np.testing.assert_allclose(mse(z, t), expected, rtol=(3 * n + 3) * EPS32 / 2)


def test_bce_is_finite_for_huge_logits_and_empty_masks_score_one():
    z = jnp.array([[[-1e4, 1e4]]])[..., None]
    t = jnp.array([[[0.0, 1.0]]])[..., None]
    assert float(bce_with_logits(z, t)) == 0.0  # 1e4 - 1e4 and log1p(e^-1e4) = 0: exact
    empty = jnp.full((2, 4, 4, 1), -5.0)
    np.testing.assert_array_equal(dice(empty, jnp.zeros_like(empty)), [1.0, 1.0])
    np.testing.assert_array_equal(iou(empty, jnp.zeros_like(empty)), [1.0, 1.0])
    # exactly 1 - 1 / (1 + 16 sigmoid(-50)) ~ 3e-21: the quotient rounds to within u of 1
    assert float(soft_dice_loss(jnp.full((1, 4, 4, 1), -50.0), jnp.zeros((1, 4, 4, 1)))) <= EPS32


# ---------------------------------------------------------------------------------- config


def test_config_is_hashable_and_round_trips_through_json():
    a = TrainConfig(steps=10, learning_rate=1)
    b = TrainConfig.from_json(a.to_json())
    assert a == b and hash(a) == hash(b) and isinstance(b.learning_rate, float)
    assert a.to_json() == TrainConfig(steps=10, learning_rate=1.0).to_json()
    assert a != dataclasses.replace(a, seed=1)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"steps": 0}, ValueError),
        ({"batch_size": 0}, ValueError),
        ({"task": "classification"}, ValueError),
        ({"optimizer": "rmsprop"}, ValueError),
        ({"learning_rate": 0.0}, ValueError),
        ({"learning_rate": float("nan")}, ValueError),
        ({"warmup_steps": 10, "steps": 10}, ValueError),
        ({"steps": 2.5}, TypeError),
        ({"batch_size": True}, TypeError),
    ],
)
def test_config_rejects_bad_values(fields, error):
    with pytest.raises(error, match=next(iter(fields))):
        TrainConfig(**fields)


# ---------------------------------------------------------------------------------- training


def test_training_learns_and_history_matches_evaluate(scenes):
    train_set, test_set = scenes
    model = TinySeg()
    before = evaluate(model, test_set)
    result = train(model, train_set, config=CONFIG, eval_data=test_set, progress=False)
    h = result.history
    assert result.model is model and not result.from_cache
    assert h["step"] == list(range(1, 41)) and len(h["loss"]) == 40
    assert [e["step"] for e in h["eval"]] == [20, 40]
    assert np.mean(h["loss"][-5:]) < 0.5 * np.mean(h["loss"][:5])  # measured 1.35 -> 0.23
    after = evaluate(model, test_set)
    assert after["dice"] > before["dice"] + 0.3 and after["dice"] > 0.8  # measured 0.38 -> 0.90
    for name in ("loss", "dice", "iou"):  # the model returned is the one evaluated last
        assert h["eval"][-1][name] == after[name]  # same compiled evaluation, same params


def test_evaluate_chunking_and_metrics_against_numpy(scenes):
    _, test_set = scenes
    model = TinySeg(seed=3)
    whole = evaluate(model, test_set, batch_size=20)
    chunked = evaluate(model, test_set, batch_size=7)  # 7 + 7 + 6 (zero-padded, weight 0)
    n = test_set.images.shape[0]
    for name in whole:  # n non-negative per-image values summed in other groups: n u each
        assert chunked[name] == pytest.approx(whole[name], rel=n * EPS32, abs=0)
    z = np.asarray(model(test_set.images)) > 0
    t = np.asarray(test_set.masks) > 0.5
    inter, union = (z & t).sum((1, 2, 3)), (z | t).sum((1, 2, 3))
    size = z.sum((1, 2, 3)) + t.sum((1, 2, 3))
    # per image exact counts and one quotient (u), then the float32 mean of n values (n u)
    rel = (n + 2) * EPS32 / 2
    assert whole["dice"] == pytest.approx(np.mean(np.where(size > 0, 2 * inter / size, 1)), rel)
    assert whole["iou"] == pytest.approx(np.mean(np.where(union > 0, inter / union, 1)), rel)


def test_regression_task_fits_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = x @ rng.normal(size=(3, 2)).astype(np.float32)
    model = Affine(3, 2)
    config = TrainConfig(
        task="regression",
        steps=300,
        batch_size=16,
        learning_rate=0.05,
        eval_every=300,
        schedule="cosine",
        warmup_steps=10,
    )
    initial = float(mse(model(x), y))
    result = train(model, (x, y), config=config, eval_data=(x, y), progress=True)
    final = result.history["eval"][-1]["loss"]
    assert final < 1e-3 * initial
    # the returned model is the one evaluated: the same compiled evaluation, bitwise
    assert evaluate(model, (x, y), task="regression")["loss"] == final
    # and that loss is the mse. The fit is at rounding level (residual r ~ 1e-6), so compare
    # absolutely: residuals err by <= 5 u (|x| |w| + |b| + |y|) = d, hence the mse by
    # 2 mean(|r| d) + mean(d^2) on each side
    w, b = np.abs(np.asarray(model.w[...], np.float64)), np.abs(np.asarray(model.b[...]))
    r = np.asarray(model(x), np.float64) - y
    d = 5 * EPS32 / 2 * (np.abs(x) @ w + b + np.abs(y))
    atol = 2 * (2 * np.mean(np.abs(r) * d) + np.mean(d**2))
    assert float(mse(model(x), y)) == pytest.approx(final, rel=128 * EPS32, abs=atol)


def test_divergence_raises(scenes):
    x = jnp.ones((8, 4))
    model = Affine(4, 4)
    config = TrainConfig(
        task="regression", steps=100, batch_size=8, learning_rate=1e30, optimizer="sgd"
    )
    with pytest.raises(FloatingPointError, match="non-finite|nan|inf"):
        train(model, (x, 3 * x), config=config, progress=False)


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("channels", "does not accept train_data inputs"),
        ("outputs", "targets have shape"),
        ("nan", "non-finite"),
        ("mask", "0 or 1"),
        ("batch", "exceeds"),
        ("lengths", "differ in length"),
    ],
)
def test_bad_input_raises_before_compiling(scenes, monkeypatch, case, match):
    def no_compile(*args):
        raise AssertionError("the train step was built before the input was checked")

    monkeypatch.setattr(training_module, "_compiled_step", no_compile)
    train_set, _ = scenes
    images, masks = np.array(train_set.images), np.array(train_set.masks)
    model, config = TinySeg(), CONFIG
    if case == "channels":
        images = np.repeat(images, 3, axis=-1)
    elif case == "outputs":
        model = TinySeg(out=2)
    elif case == "nan":
        images[3, 2, 1, 0] = np.nan
    elif case == "mask":
        masks = masks * 0.5
    elif case == "batch":
        config = dataclasses.replace(CONFIG, batch_size=49)
    elif case == "lengths":
        masks = masks[:-1]
    with pytest.raises(ValueError, match=match):
        train(model, Dataset(images, masks), config=config, progress=False)


# ---------------------------------------------------------------------------------- resume


class Interrupt(Exception):
    pass


def stop_at(step, error):
    def callback(s, record):
        assert "loss" in record
        if s == step:
            raise error

    return callback


def state_of(model):
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(model))]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), Interrupt("killed")])
def test_interrupted_training_resumes_to_the_same_state(scenes, tmp_path, error):
    """Params, optimizer, step, data order *and* non-trainable state (batch norm) resume exactly."""
    train_set, test_set = scenes
    config = dataclasses.replace(CONFIG, steps=12, eval_every=4)
    straight = train(WithBatchNorm(), train_set, config=config, eval_data=test_set, progress=False)
    assert np.abs(np.asarray(straight.model.bn.mean[...])).max() > 1e-3  # stats were updated

    # checkpoints at 5 and 10; KeyboardInterrupt at 7 also saves step 7, a crash does not
    model = WithBatchNorm()
    with pytest.raises(type(error)):
        train(
            model,
            train_set,
            config=config,
            eval_data=test_set,
            checkpoint_dir=tmp_path,
            checkpoint_every=5,
            progress=False,
            callback=stop_at(7, error),
        )
    assert all(np.isfinite(p).all() for p in params_of(model))  # left at step 7, usable
    resumed = train(
        WithBatchNorm(seed=99),
        train_set,
        config=config,
        eval_data=test_set,
        checkpoint_dir=tmp_path,
        checkpoint_every=5,
        progress=False,
    )
    # the same compiled step from the same restored state and data order: bitwise
    for u, v in zip(state_of(resumed.model), state_of(straight.model), strict=True):
        np.testing.assert_array_equal(u, v)
    assert resumed.history["loss"] == straight.history["loss"]
    assert [e["step"] for e in resumed.history["eval"]] == [4, 8, 12]
    # a finished run in the same directory restores instead of training again
    again = train(
        WithBatchNorm(seed=5),
        train_set,
        config=config,
        checkpoint_dir=tmp_path,
        progress=False,
        callback=stop_at(1, AssertionError("trained again")),
    )
    assert_params_equal(again.model, straight.model)


def test_resume_with_another_config_is_refused(scenes, tmp_path):
    train_set, _ = scenes
    config = dataclasses.replace(CONFIG, steps=2)
    train(TinySeg(), train_set, config=config, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="different TrainConfig.*learning_rate"):
        train(
            TinySeg(),
            train_set,
            config=dataclasses.replace(config, learning_rate=0.5),
            checkpoint_dir=tmp_path,
            progress=False,
        )


def test_losses_module_exports_tasks():
    assert set(losses.TASKS) == {"segmentation", "regression"}


# ---------------------------------------------------------------------------------- quality


@pytest.mark.slow
def test_seed_unet_reaches_dice_090_on_synthetic_scenes():
    """The quality bar: the seed U-Net, 80 Adam steps of 32 scenes (32×32), held-out Dice ≥ 0.9.

    Measured: Dice ≈ 0.97–0.985 over init seeds 0, 1, 2 (about 25 s of training on 2 cores).
    """
    from models.seed import seed_unet

    train_set = synthetic_scenes(jax.random.key(0), 256, size=32)
    test_set = synthetic_scenes(jax.random.key(1), 128, size=32)
    config = TrainConfig(steps=80, batch_size=32, learning_rate=5e-3, eval_every=80)
    result = train(seed_unet(0), train_set, config=config, eval_data=test_set, progress=False)
    assert result.history["eval"][-1]["dice"] >= 0.90
    assert result.history["eval"][-1]["iou"] >= 0.80


def test_train_step_bytes_plans_the_training_loss():
    """The plan of batch_loss's value_and_grad: for regression, exactly the plan of the bare
    MSE's value_and_grad (the same program)."""
    from models.decoder import Decoder
    from models.training import train_step_bytes

    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 4, 4, 1)), jnp.float32)
    model = Decoder(1, 1, width=2, depth=0, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def mse_loss(p):
        return jnp.mean((nnx.merge(graphdef, p, rest, copy=True)(x) - x) ** 2)

    stats = jax.jit(jax.value_and_grad(mse_loss)).lower(params).compile().memory_analysis()
    direct = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
    assert train_step_bytes(model, x, x, TrainConfig(task="regression")) == direct
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        train_step_bytes(model, x, x, {"task": "regression"})
