"""Behaviour of the gradient inversion engine (inversion.engine, inversion.loop)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from inversion import engine
from inversion.closed_form import affine_inverse
from inversion.engine import invert, invert_batch
from inversion.engine_run import programs
from inversion.loop import Problem, init_state, make_step
from inversion.losses import mse
from inversion.regularizers import l2_prior

RNG = np.random.default_rng(0)
W5 = jnp.asarray(2.0 * np.eye(5) + 0.2 * RNG.normal(size=(5, 5)), jnp.float32)
B5 = jnp.asarray(RNG.normal(size=5), jnp.float32)
W36 = jnp.asarray(RNG.normal(size=(3, 6)) / np.sqrt(6), jnp.float32)
B3 = jnp.asarray(RNG.normal(size=3), jnp.float32)
A = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)


def affine5(x):
    return W5 @ x + B5


def affine36(x):
    return W36 @ x + B3


def smooth(x):
    """A small nonlinear map R^3 -> R^4."""
    return jnp.tanh(A @ x) + 0.1 * x.sum() ** 2


def sgd_rate(W: jax.Array) -> float:
    """A stable SGD learning rate for mse(W x + b, y): 1 / lambda_max(2 W^T W / m)."""
    return float(W.shape[0] / (2.0 * np.linalg.norm(np.asarray(W), 2) ** 2))


def test_full_rank_linear_matches_closed_form():
    x_true = jnp.asarray(RNG.normal(size=5), jnp.float32)
    y = affine5(x_true)
    kw = dict(x_shape=(5,), optimizer="sgd", learning_rate=sgd_rate(W5), steps=400)
    res = invert(affine5, y, **kw)
    cf = affine_inverse(W5, B5, y)
    assert cf.kind == "exact"
    rel = np.linalg.norm(res.x - cf.x) / np.linalg.norm(cf.x)
    assert rel < 1e-5
    assert res.residual < 1e-5
    assert res.history.shape == (400,) and res.status == "max_steps" and int(res.steps) == 400
    with_bar = invert(affine5, y, progress=True, **kw)  # same compiled programs, with tqdm
    np.testing.assert_allclose(with_bar.x, res.x, atol=1e-7)


def test_lbfgs_extra_args_path():
    # optax.lbfgs() is a GradientTransformationExtraArgs: update needs value, grad, value_fn.
    y = affine5(jnp.ones(5))
    res = invert(affine5, y, x_shape=(5,), optimizer=optax.lbfgs(), steps=30, tol=1e-12)
    cf = affine_inverse(W5, B5, y)
    np.testing.assert_allclose(res.x, cf.x, rtol=1e-5, atol=1e-5)
    assert res.status == "converged" and res.steps < 30


def test_underdetermined_lands_on_minimum_norm():
    y = jnp.asarray([0.3, -1.0, 2.0], jnp.float32)
    res = invert(affine36, y, x0=jnp.zeros(6), optimizer="sgd",
                 learning_rate=sgd_rate(W36), steps=800)
    cf = affine_inverse(W36, B3, y)
    assert cf.kind == "minimum_norm" and cf.null_space.shape == (6, 3)
    np.testing.assert_allclose(res.x, cf.x, atol=1e-4)
    assert res.residual < 1e-4


def test_seed_study_dense_inversion():
    rng = np.random.default_rng(42)
    xs = rng.uniform(0, 1000, 1000)
    ys = 0.4 * xs - 50 * rng.uniform(0, 1, 1000)
    w, b = np.linalg.lstsq(np.stack([xs, np.ones_like(xs)], 1), ys, rcond=None)[0]
    W, B = jnp.asarray([[w]], jnp.float32), jnp.asarray([b], jnp.float32)
    res = invert(lambda x: W @ x + B, jnp.asarray([100.0]), x0=jnp.asarray([1.0]),
                 optimizer="adam", learning_rate=5.0, steps=1000)
    x_hat = float(res.x[0])
    assert abs(x_hat - (100 - b) / w) < 0.01 * abs((100 - b) / w)
    assert 305 <= x_hat <= 320


def _targets(n=4):
    return jax.vmap(smooth)(jnp.asarray(np.random.default_rng(n).normal(size=(n, 3)), jnp.float32))


# One configuration shared by several tests, so that compiled programs are reused (same problem).
SMOOTH = dict(x_shape=(3,), init_scale=0.5, steps=60, optimizer="adam", learning_rate=0.05,
              tol=6e-3)


def test_batch_equals_single_calls():
    ys = _targets(4)
    kw = dict(SMOOTH, key=jax.random.key(1))
    batch = invert_batch(smooth, ys, **kw)
    assert batch.x.shape == (4, 3) and batch.history.shape == (4, 60)
    for n in range(4):
        one = invert(smooth, ys[n], **kw)
        np.testing.assert_allclose(batch.x[n], one.x, atol=1e-5)
        np.testing.assert_allclose(batch.history[n], one.history, atol=1e-5)
        assert int(batch.steps[n]) == int(one.steps)
        assert batch.status[n] == one.status


def test_restarts_layout_keys_and_best():
    ys = _targets(2)
    key = jax.random.key(3)
    kw = SMOOTH
    res = invert_batch(smooth, ys, key=key, restarts=3, **kw)
    assert res.x.shape == (2, 3, 3) and res.loss.shape == (2, 3)
    assert res.history.shape == (2, 3, 60)
    assert len(np.unique(np.asarray(res.history[0, :, 0]))) == 3  # three different starts
    keys = jax.random.split(key, 3)
    one = invert(smooth, ys[1], key=keys[2], **kw)
    np.testing.assert_allclose(res.x[1, 2], one.x, atol=1e-5)
    best = res.best()
    assert best.x.shape == (2, 3)
    np.testing.assert_allclose(best.loss, res.loss.min(axis=1))
    with pytest.raises(ValueError, match="key"):
        invert_batch(smooth, ys, restarts=3, **kw)


def test_chunked_equals_unchunked():
    ys = _targets(4)
    kw = dict(SMOOTH, key=jax.random.key(0))
    full = invert_batch(smooth, ys, **kw)
    chunked = invert_batch(smooth, ys, chunk=3, **kw)  # chunks of 3 and 1 (+2 padding rows)
    assert chunked.x.shape == (4, 3)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(chunked), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("tol", [None, 6e-3])
def test_python_loop_equals_compiled_loop(tol):
    ys = _targets(4)
    kw = dict(SMOOTH, key=jax.random.key(2), tol=tol)
    py = invert_batch(smooth, ys, loop="python", **kw)
    co = invert_batch(smooth, ys, loop="compiled", **kw)
    np.testing.assert_allclose(py.x, co.x, atol=1e-5)
    np.testing.assert_allclose(py.history, co.history, atol=1e-5)
    np.testing.assert_array_equal(py.steps, co.steps)
    np.testing.assert_array_equal(py.status_code, co.status_code)
    if tol is not None:  # the while_loop stops rows early exactly like the Python loop
        assert np.any(co.status == "converged") and np.any(co.steps < 60)


def test_bounds_respected_at_every_step():
    lo, hi = np.float32(-0.2), np.float32(0.3)
    problem = Problem(fn=lambda x: 10.0 * x, loss=mse, regularizers=(),
                      optimizer=optax.sgd(1.0), steps=20, bounds=(float(lo), float(hi)))
    x, state = programs(problem, "python", 10).start(jnp.full((3, 4), 5.0))  # x0 is clipped too
    assert float(x.max()) == hi
    y = jnp.asarray(RNG.normal(size=(3, 4)) * 10, jnp.float32)
    step = jax.jit(make_step(problem))
    moved = False
    for _ in range(20):
        x_new, state = step(x, state, y)
        assert float(x_new.min()) >= lo and float(x_new.max()) <= hi
        moved |= not np.allclose(x_new, x)
        x = x_new
    assert moved


def test_regularized_objective_has_known_minimiser():
    y = jnp.asarray([1.0, -2.0, 0.5, 3.0])
    prior = jnp.asarray([0.0, 1.0, 1.0, -1.0])
    w = 0.25
    res = invert(lambda x: x, y, x_shape=(4,), regularizers=(l2_prior(w, prior),),
                 optimizer="sgd", learning_rate=0.5, steps=300)
    # argmin mean((x - y)^2) + w ||x - prior||^2 = (y / d + w prior) / (1 / d + w)
    expected = (y / 4 + w * prior) / (1 / 4 + w)
    np.testing.assert_allclose(res.x, expected, atol=1e-5)
    np.testing.assert_allclose(res.loss, np.mean((expected - y) ** 2)
                               + w * np.sum((expected - prior) ** 2), rtol=1e-5)


def test_early_stop_converged():
    y = affine5(jnp.ones(5))
    res = invert(affine5, y, x_shape=(5,), optimizer="sgd", learning_rate=sgd_rate(W5),
                 steps=1000, tol=1e-8, loop="python")
    assert res.status == "converged"
    assert 0 < int(res.steps) < 1000
    assert float(res.loss) <= 1e-8
    np.testing.assert_array_equal(res.history[int(res.steps):], res.loss)
    assert np.all(np.isfinite(res.history))


def test_divergence_returns_last_finite_x():
    res = invert(lambda x: x, jnp.ones(4), x0=jnp.zeros(4), optimizer="sgd",
                 learning_rate=1e3, steps=200, loop="python")
    assert res.status == "diverged"
    assert np.all(np.isfinite(res.x)) and np.isfinite(res.loss) and np.isfinite(res.residual)
    assert np.all(np.isfinite(res.history))
    assert int(res.steps) < 200


def test_nonfinite_loss_reverts_to_previous_iterate():
    # log is NaN for x < 0; a large step from x = 1 jumps there.
    res = invert(lambda x: jnp.log(x), jnp.asarray([-2.0]), x0=jnp.asarray([1.0]),
                 optimizer="sgd", learning_rate=50.0, steps=50)
    assert res.status == "diverged"
    assert float(res.x[0]) > 0 and np.isfinite(res.loss)
    np.testing.assert_allclose(res.loss, (np.log(float(res.x[0])) + 2.0) ** 2, rtol=1e-5)


def test_batch_mixed_statuses():
    fn = lambda x: x * jnp.asarray([1.0, 100.0])  # noqa: E731
    res = invert_batch(lambda x: fn(x), jnp.asarray([[1.0, 1.0], [0.0, 0.0]]),
                       x0=jnp.asarray([[0.0, 0.0], [0.0, 0.0]]), optimizer="sgd",
                       learning_rate=0.5, steps=100, tol=1e-6, loop="compiled")
    assert list(res.status) == ["diverged", "converged"]
    np.testing.assert_array_equal(res.steps, [int(res.steps[0]), 0])
    assert 0 < int(res.steps[0]) < 100
    assert np.all(np.isfinite(res.x))


def test_step_under_jit_equals_no_jit():
    problem = Problem(fn=affine5, loss=mse, regularizers=(), optimizer=optax.sgd(0.1),
                      steps=2, tol=0.5)
    x0 = jnp.zeros((1, 5))
    ys = affine5(jnp.ones(5))[None]
    outs = []
    for use_jit in (True, False):
        with jax.disable_jit(not use_jit):
            step = jax.jit(make_step(problem))
            x, state = step(x0, init_state(problem, x0), ys)
            outs.append((x, state.history, state.n, state.code))
    for a, b in zip(*outs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # and against an independent numpy step: x1 = x0 - lr * (2 / m) W^T (W x0 + b - y)
    w, b = np.asarray(W5, np.float64), np.asarray(B5, np.float64)
    expected = -0.1 * (2 / 5) * w.T @ (b - np.asarray(ys[0], np.float64))
    np.testing.assert_allclose(outs[0][0][0], expected, rtol=1e-5)


@pytest.fixture
def no_solve(monkeypatch):
    def fail(*_a, **_k):
        raise AssertionError("validation must fail before anything is compiled or run")

    monkeypatch.setattr(engine, "solve_rows", fail)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target=jnp.ones(4)), "shape"),
        (dict(target=jnp.asarray([1.0, np.nan, 0, 0, 0])), "NaN"),
        (dict(x0=jnp.asarray([np.inf, 0, 0, 0, 0]), x_shape=None), "x0"),
        (dict(steps=0), "steps"),
        (dict(loss="l1"), "mse"),
        (dict(optimizer="rmsprop"), "adam"),
        (dict(bounds=(1.0, 1.0)), "lo < hi"),
        (dict(x_shape=None), "x_shape"),
        (dict(x_shape=(4,)), "fn could not be evaluated"),
        (dict(optimizer=optax.sgd(0.1), learning_rate=0.1), "learning_rate"),
        (dict(loop="fast"), "loop"),
        (dict(tol=-1.0), "tol"),
    ],
)
def test_invert_rejects_bad_input_before_compiling(no_solve, kwargs, match):
    args = dict(target=jnp.ones(5), x_shape=(5,))
    args.update(kwargs)
    target = args.pop("target")
    with pytest.raises(ValueError, match=match):
        invert(affine5, target, **args)


def test_type_errors(no_solve):
    with pytest.raises(TypeError, match="fn"):
        invert("not a function", jnp.ones(5), x_shape=(5,))
    with pytest.raises(TypeError, match="steps"):
        invert(affine5, jnp.ones(5), x_shape=(5,), steps=2.5)
    with pytest.raises(TypeError, match="mesh"):
        invert_batch(affine5, jnp.ones((2, 5)), x_shape=(5,), mesh="cpu")
    with pytest.raises(TypeError, match="optimizer"):
        invert(affine5, jnp.ones(5), x_shape=(5,), optimizer=3)


def test_invert_batch_rejects_bad_input(no_solve):
    ys = jnp.ones((3, 5))
    with pytest.raises(ValueError, match="leading axes"):
        invert_batch(affine5, ys, x0=jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="chunk"):
        invert_batch(affine5, ys, x_shape=(5,), chunk=0)
    with pytest.raises(ValueError, match="restarts"):
        invert_batch(affine5, ys, x_shape=(5,), restarts=0)
    with pytest.raises(ValueError, match="shape"):
        invert_batch(affine5, jnp.ones((3, 4)), x_shape=(5,))
