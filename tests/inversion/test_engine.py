"""Behaviour of the gradient inversion engine (inversion.engine, inversion.loop)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import inversion
from inversion import engine
from inversion.closed_form import affine_inverse
from inversion.driver import Plan, make_step, programs
from inversion.engine import invert, invert_batch
from inversion.losses import mse
from inversion.regularizers import l2_prior
from inversion.solvers import Optax

RNG = np.random.default_rng(0)
W5 = jnp.asarray(2.0 * np.eye(5) + 0.2 * RNG.normal(size=(5, 5)), jnp.float32)
B5 = jnp.asarray(RNG.normal(size=5), jnp.float32)
W36 = jnp.asarray(RNG.normal(size=(3, 6)) / np.sqrt(6), jnp.float32)
B3 = jnp.asarray(RNG.normal(size=3), jnp.float32)
A = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
EPS32 = float(np.finfo(np.float32).eps)


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


def sgd_error(W: jax.Array, steps: int) -> float:
    """Bound on ||x - x*|| / ||x*|| after `steps` SGD steps at `sgd_rate(W)` from x = 0.

    The error contracts by rho = 1 - (s_min / s_max)^2 per step (s: nonzero singular values);
    what is left is the float32 fixed point, whose gradient has (n + 1)-term dot products
    amplified by cond(W): 2 (n + 1) eps32 cond(W).
    """
    s = np.linalg.svd(np.asarray(W, np.float64), compute_uv=False)
    s = s[s > s[0] * 1e-12]
    return (1 - (s[-1] / s[0]) ** 2) ** steps + 2 * (W.shape[1] + 1) * EPS32 * s[0] / s[-1]


def residual_scale(W, b, x, y) -> float:
    """(||W|| ||x|| + ||b|| + ||y||) / ||y||: turns a relative x error into a residual bound."""
    norms = np.linalg.norm(np.asarray(W, np.float64), 2) * np.linalg.norm(x)
    return float((norms + np.linalg.norm(b) + np.linalg.norm(y)) / np.linalg.norm(y))


def assert_rounding_close(a, b, steps: int) -> None:
    """Two float32 programs of the same `steps`-step run (other vectorisation, loop or device
    count) round independently, each step at eps32 relative to the largest magnitude in play:
    |a - b| <= steps * eps32 * max(1, max|b|). Integer leaves (steps, status) are equal."""
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        u, v = np.asarray(u), np.asarray(v)
        if u.dtype.kind in "iubUSO":
            np.testing.assert_array_equal(u, v)
        else:
            bound = steps * EPS32 * max(1.0, float(np.abs(v).max()))
            np.testing.assert_allclose(u, v, rtol=0, atol=bound)


def test_full_rank_linear_matches_closed_form():
    x_true = jnp.asarray(RNG.normal(size=5), jnp.float32)
    y = affine5(x_true)
    kw = dict(
        starts=inversion.Starts(x_shape=(5,)), solver=Optax(optax.sgd(sgd_rate(W5))), steps=400
    )
    res = invert(affine5, y, **kw)
    cf = affine_inverse(W5, B5, y)
    assert cf.kind == "exact"
    rel = np.linalg.norm(res.x - cf.x) / np.linalg.norm(cf.x)
    bound = sgd_error(W5, 400)  # contraction ~1e-80, then the float32 floor (2.4e-6)
    assert rel <= bound
    assert res.residual <= bound * residual_scale(W5, B5, cf.x, y)
    assert res.history.shape == (400,) and res.status == "max_steps" and int(res.steps) == 400
    with_bar = invert(
        affine5, y, execution=inversion.Execution(progress=True), **kw
    )  # same compiled programs, with tqdm
    np.testing.assert_array_equal(with_bar.x, res.x)  # the bar only reads values back
    np.testing.assert_array_equal(with_bar.history, res.history)


def test_lbfgs_extra_args_path():
    # optax.lbfgs() is a GradientTransformationExtraArgs: update needs value, grad, value_fn.
    # Reference: the same transformation driven by hand, so nothing depends on L-BFGS
    # converging. 6 steps keep the loss (>= 1e-5) far above float32 noise.
    y = affine5(jnp.ones(5))
    f = lambda x: mse(affine5(x), y)  # noqa: E731
    opt, steps = optax.lbfgs(), 6
    x, state, xs, hist = jnp.zeros(5), opt.init(jnp.zeros(5)), [], []
    for _ in range(steps):
        v, g = jax.value_and_grad(f)(x)
        xs.append(x)
        hist.append(v)
        u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
        x = optax.apply_updates(x, u)
    res = invert(
        affine5,
        y,
        steps=steps,
        solver=inversion.solvers.Optax(opt),
        starts=inversion.Starts(x_shape=(5,)),
    )
    assert res.status == "max_steps" and int(res.steps) == steps
    assert_rounding_close(res.x, x, steps)
    assert_rounding_close(res.history, jnp.stack(hist), steps)
    # with tol the run stops at the first step whose objective is <= tol (tol between two
    # reference values, a factor ~5 from each)
    tol = float(np.sqrt(hist[3] * hist[4]))
    stopped = invert(
        affine5,
        y,
        steps=steps,
        tol=tol,
        solver=inversion.solvers.Optax(opt),
        starts=inversion.Starts(x_shape=(5,)),
    )
    assert stopped.status == "converged" and int(stopped.steps) == 4
    assert_rounding_close(stopped.x, xs[4], steps)


def test_underdetermined_lands_on_minimum_norm():
    y = jnp.asarray([0.3, -1.0, 2.0], jnp.float32)
    res = invert(
        affine36,
        y,
        x0=jnp.zeros(6),
        steps=800,
        solver=inversion.solvers.Optax(optax.sgd(sgd_rate(W36))),
    )
    cf = affine_inverse(W36, B3, y)
    assert cf.kind == "minimum_norm" and cf.null_space.shape == (6, 3)
    # row space: contracted as in sgd_error; null space: never contracted, so the rounding
    # of each of the 800 updates may stay there: 800 * eps32 * max|x|
    bound = sgd_error(W36, 800) * np.linalg.norm(cf.x) + 800 * EPS32 * np.abs(cf.x).max()
    np.testing.assert_allclose(res.x, cf.x, rtol=0, atol=bound)
    assert res.residual <= sgd_error(W36, 800) * residual_scale(W36, B3, cf.x, y)


def test_seed_study_dense_inversion():
    rng = np.random.default_rng(42)
    xs = rng.uniform(0, 1000, 1000)
    ys = 0.4 * xs - 50 * rng.uniform(0, 1, 1000)
    w, b = np.linalg.lstsq(np.stack([xs, np.ones_like(xs)], 1), ys, rcond=None)[0]
    W, B = jnp.asarray([[w]], jnp.float32), jnp.asarray([b], jnp.float32)
    res = invert(
        lambda x: W @ x + B,
        jnp.asarray([100.0]),
        x0=jnp.asarray([1.0]),
        steps=1000,
        solver=inversion.solvers.Optax(optax.adam(5.0)),
    )
    x_hat = float(res.x[0])
    # Reference: Adam's recurrence (optax defaults) in float64 on the same float32 weights;
    # the engine differs by rounding only: 1000 steps * eps32 * |x| (measured 2e-5).
    wf, bf, x64, m, v = float(W[0, 0]), float(B[0]), 1.0, 0.0, 0.0
    for t in range(1, 1001):
        g = 2 * wf * (wf * x64 + bf - 100.0)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        x64 -= 5.0 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    assert abs(x_hat - x64) <= 1000 * EPS32 * abs(x64)
    # the study's claim on the exact recurrence: Adam lands on the closed form (rel 2e-8)
    assert abs(x64 - (100 - b) / w) < 1e-4 * abs((100 - b) / w)
    assert 305 <= x_hat <= 320  # the seed study's x0 ~ 312


def _targets(n=4):
    return jax.vmap(smooth)(jnp.asarray(np.random.default_rng(n).normal(size=(n, 3)), jnp.float32))


# One configuration shared by several tests, so that compiled programs are reused (same problem).
SMOOTH = dict(steps=60, solver=Optax(optax.adam(0.05)), tol=6e-3)


def smooth_starts(key=None, restarts=1):
    return inversion.Starts(x_shape=(3,), init_scale=0.5, key=key, restarts=restarts)


def test_batch_equals_single_calls():
    ys = _targets(4)
    kw = dict(SMOOTH, starts=smooth_starts(jax.random.key(1)))
    batch = invert_batch(smooth, ys, **kw)
    assert batch.x.shape == (4, 3) and batch.history.shape == (4, 60)
    for n in range(4):
        one = invert(smooth, ys[n], **kw)  # one row on one device: another program
        assert_rounding_close(batch.x[n], one.x, 60)
        assert_rounding_close(batch.history[n], one.history, 60)
        assert int(batch.steps[n]) == int(one.steps)
        assert batch.status[n] == one.status


def test_restarts_layout_keys_and_best():
    ys = _targets(2)
    key = jax.random.key(3)
    kw = SMOOTH
    res = invert_batch(smooth, ys, starts=smooth_starts(key, restarts=3), **kw)
    assert res.x.shape == (2, 3, 3) and res.loss.shape == (2, 3)
    assert res.history.shape == (2, 3, 60)
    assert len(np.unique(np.asarray(res.history[0, :, 0]))) == 3  # three different starts
    keys = jax.random.split(key, 3)
    one = invert(smooth, ys[1], starts=smooth_starts(keys[2]), **kw)
    assert_rounding_close(res.x[1, 2], one.x, 60)
    best = res.best()
    assert best.x.shape == (2, 3)
    np.testing.assert_array_equal(best.loss, res.loss.min(axis=1))  # a selection
    with pytest.raises(ValueError, match="key"):
        invert_batch(smooth, ys, starts=smooth_starts(restarts=3), **kw)


def test_chunked_equals_unchunked():
    ys = _targets(4)
    kw = dict(SMOOTH, starts=smooth_starts(jax.random.key(0)))
    full = invert_batch(smooth, ys, **kw)
    # one CPU device: chunks of 3 and 1 (+2 padding rows); two: two chunks of 2 rows
    chunked = invert_batch(smooth, ys, execution=inversion.Execution(chunk=3), **kw)
    assert chunked.x.shape == (4, 3)
    assert_rounding_close(chunked, full, 60)  # other vectorisation: rounding, not bitwise


@pytest.mark.parametrize("tol", [None, 6e-3])
def test_python_loop_equals_compiled_loop(tol):
    ys = _targets(4)
    kw = dict(SMOOTH, starts=smooth_starts(jax.random.key(2)), tol=tol)
    py = invert_batch(smooth, ys, execution=inversion.Execution(loop="python"), **kw)
    co = invert_batch(smooth, ys, execution=inversion.Execution(loop="compiled"), **kw)
    assert_rounding_close(py.x, co.x, 60)  # one jitted step vs the step inside scan/while
    assert_rounding_close(py.history, co.history, 60)
    np.testing.assert_array_equal(py.steps, co.steps)
    np.testing.assert_array_equal(py.status_code, co.status_code)
    if tol is not None:  # the while_loop stops rows early exactly like the Python loop
        assert np.any(co.status == "converged") and np.any(co.steps < 60)


def test_bounds_respected_at_every_step():
    lo, hi = np.float32(-0.2), np.float32(0.3)
    problem = Plan(
        fn=lambda x: 10.0 * x,
        loss=mse,
        regularizers=(),
        solver=Optax(optax.sgd(1.0)),
        steps=20,
        bounds=(float(lo), float(hi)),
    )
    y = jnp.asarray(RNG.normal(size=(3, 4)) * 10, jnp.float32)
    carry = programs(problem).start(jnp.full((3, 4), 5.0), y)  # x0 clipped
    x = carry.x
    assert float(x.max()) == hi
    step = jax.jit(make_step(problem))
    moved = False
    for i in range(20):
        carry, _ = step(jnp.asarray(i), carry, y)
        x_new = carry.x
        assert float(x_new.min()) >= lo and float(x_new.max()) <= hi
        moved |= not np.array_equal(x_new, x)
        x = x_new
    assert moved


def test_regularized_objective_has_known_minimiser():
    y = jnp.asarray([1.0, -2.0, 0.5, 3.0])
    prior = jnp.asarray([0.0, 1.0, 1.0, -1.0])
    w = 0.25
    res = invert(
        lambda x: x,
        y,
        steps=300,
        solver=inversion.solvers.Optax(optax.sgd(0.5)),
        problem=inversion.Problem(regularizers=(l2_prior(w, prior),)),
        starts=inversion.Starts(x_shape=(4,)),
    )
    # argmin mean((x - y)^2) + w ||x - prior||^2 = (y / d + w prior) / (1 / d + w)
    y, prior = np.asarray(y, np.float64), np.asarray(prior, np.float64)
    expected = (y / 4 + w * prior) / (1 / 4 + w)
    # Hessian 1, lr 0.5: contraction 0.5 per step, so after 300 steps only the fixed point's
    # rounding is left: ~4 roundings of max|y, prior| per step / (1 - 0.5) = 4 eps32 max
    size = np.abs(np.concatenate([y, prior])).max()
    np.testing.assert_allclose(res.x, expected, rtol=0, atol=4 * EPS32 * size)
    # at the minimiser the loss is first-order insensitive to x: its own 8-term rounding
    np.testing.assert_allclose(
        res.loss, np.mean((expected - y) ** 2) + w * np.sum((expected - prior) ** 2), rtol=8 * EPS32
    )


def test_early_stop_converged():
    y = affine5(jnp.ones(5))
    res = invert(
        affine5,
        y,
        steps=1000,
        tol=1e-8,
        solver=inversion.solvers.Optax(optax.sgd(sgd_rate(W5))),
        starts=inversion.Starts(x_shape=(5,)),
        execution=inversion.Execution(loop="python"),
    )
    assert res.status == "converged"
    # gradient descent on a quadratic at lr = 1/L: J_k <= rho^(2k) J_0, rho = 1 - (s_min/s_max)^2
    s = np.linalg.svd(np.asarray(W5, np.float64), compute_uv=False)
    j0 = np.mean((np.asarray(B5, np.float64) - np.asarray(y, np.float64)) ** 2)
    k_max = int(np.ceil(np.log(1e-8 / j0) / (2 * np.log(1 - (s[-1] / s[0]) ** 2))))
    assert 0 < int(res.steps) <= k_max  # k_max = 22, measured 20
    assert float(res.loss) <= 1e-8
    np.testing.assert_array_equal(res.history[int(res.steps) :], res.loss)
    assert np.all(np.isfinite(res.history))


def test_divergence_returns_last_finite_x():
    res = invert(
        lambda x: x,
        jnp.ones(4),
        x0=jnp.zeros(4),
        steps=200,
        solver=inversion.solvers.Optax(optax.sgd(1e3)),
        execution=inversion.Execution(loop="python"),
    )
    assert res.status == "diverged"
    assert np.all(np.isfinite(res.x)) and np.isfinite(res.loss) and np.isfinite(res.residual)
    assert np.all(np.isfinite(res.history))
    assert int(res.steps) < 200


def test_nonfinite_loss_reverts_to_previous_iterate():
    # log is NaN for x < 0; a large step from x = 1 jumps there.
    res = invert(
        lambda x: jnp.log(x),
        jnp.asarray([-2.0]),
        x0=jnp.asarray([1.0]),
        steps=50,
        solver=inversion.solvers.Optax(optax.sgd(50.0)),
    )
    assert res.status == "diverged"
    x = float(res.x[0])
    assert x > 0 and np.isfinite(res.loss)
    # float32 log (~eps32 |log x|), +2 and a square: relative to (log x + 2)^2
    rtol = 2 * EPS32 * (1 + abs(np.log(x))) / abs(np.log(x) + 2) + EPS32
    np.testing.assert_allclose(res.loss, (np.log(x) + 2.0) ** 2, rtol=rtol)


def test_batch_mixed_statuses():
    fn = lambda x: x * jnp.asarray([1.0, 100.0])  # noqa: E731
    res = invert_batch(
        lambda x: fn(x),
        jnp.asarray([[1.0, 1.0], [0.0, 0.0]]),
        x0=jnp.asarray([[0.0, 0.0], [0.0, 0.0]]),
        steps=100,
        tol=1e-6,
        solver=inversion.solvers.Optax(optax.sgd(0.5)),
        execution=inversion.Execution(loop="compiled"),
    )
    assert list(res.status) == ["diverged", "converged"]
    np.testing.assert_array_equal(res.steps, [int(res.steps[0]), 0])
    assert 0 < int(res.steps[0]) < 100
    assert np.all(np.isfinite(res.x))


def test_step_under_jit_equals_no_jit():
    problem = Plan(
        fn=affine5, loss=mse, regularizers=(), solver=Optax(optax.sgd(0.1)), steps=2, tol=0.5
    )
    x0 = jnp.zeros((1, 5))
    ys = affine5(jnp.ones(5))[None]
    outs = []
    for use_jit in (True, False):
        with jax.disable_jit(not use_jit):
            step = jax.jit(make_step(problem))
            carry, _ = step(jnp.asarray(0), programs(problem).start(x0, ys), ys)
            outs.append((carry.x, carry.history[:, 0], carry.n, carry.code))
    # x1 = x0 - lr (2 / m) W^T (W x0 + b - y): sums of n + m + 2 = 12 terms, so one path is
    # within 12 u = 6 eps32 of exact, relative to mag = lr (2 / m) |W|^T (|b| + |y|) (x0 = 0)
    w, b = np.asarray(W5, np.float64), np.asarray(B5, np.float64)
    yn = np.asarray(ys[0], np.float64)
    mag = 0.1 * (2 / 5) * np.abs(w).T @ (np.abs(b) + np.abs(yn))
    assert np.all(np.abs(outs[0][0][0] - outs[1][0][0]) <= 12 * EPS32 * mag)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=7 * EPS32)  # mse: 5-term sum
    for a, b_ in zip(outs[0][2:], outs[1][2:], strict=True):  # n, code: integers
        np.testing.assert_array_equal(a, b_)
    # and against an independent numpy step
    expected = -0.1 * (2 / 5) * w.T @ (b - yn)
    assert np.all(np.abs(outs[0][0][0] - expected) <= 6 * EPS32 * mag)


@pytest.fixture
def no_solve(monkeypatch):
    def fail(*_a, **_k):
        raise AssertionError("validation must fail before anything is compiled or run")

    monkeypatch.setattr(engine.driver, "run", fail)


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
        (dict(solver=Optax(optax.sgd(0.1)), learning_rate=0.1), "learning_rate"),
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
        invert("not a function", jnp.ones(5), starts=inversion.Starts(x_shape=(5,)))
    with pytest.raises(TypeError, match="steps"):
        invert(affine5, jnp.ones(5), steps=2.5, starts=inversion.Starts(x_shape=(5,)))
    with pytest.raises(TypeError, match="mesh"):
        invert_batch(
            affine5,
            jnp.ones((2, 5)),
            starts=inversion.Starts(x_shape=(5,)),
            execution=inversion.Execution(mesh="cpu"),
        )
    with pytest.raises(TypeError, match="optimizer"):
        invert(
            affine5,
            jnp.ones(5),
            solver=inversion.solvers.Optax(3),
            starts=inversion.Starts(x_shape=(5,)),
        )


def test_invert_batch_rejects_bad_input(no_solve):
    ys = jnp.ones((3, 5))
    with pytest.raises(ValueError, match="leading axes"):
        invert_batch(affine5, ys, x0=jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="chunk"):
        invert_batch(
            affine5,
            ys,
            starts=inversion.Starts(x_shape=(5,)),
            execution=inversion.Execution(chunk=0),
        )
    with pytest.raises(ValueError, match="restarts"):
        invert_batch(affine5, ys, starts=inversion.Starts(x_shape=(5,), restarts=0))
    with pytest.raises(ValueError, match="shape"):
        invert_batch(affine5, jnp.ones((3, 4)), starts=inversion.Starts(x_shape=(5,)))


def test_time_limit_stops_running_rows_at_the_first_check_after_it():
    """A limit that has passed before the first step stops every row at the first check
    (``check_every`` steps), as 'max_steps' with a filled history; the compiled loop, which
    cannot look at the clock, refuses one."""
    ys = jnp.stack([affine5(jnp.ones(5)), affine5(-jnp.ones(5))])
    res = invert_batch(
        affine5,
        ys,
        steps=50,
        starts=inversion.Starts(x_shape=(5,)),
        execution=inversion.Execution(check_every=4, time_limit=1e-9),
    )
    np.testing.assert_array_equal(res.steps, [4, 4])
    assert list(res.status) == ["max_steps", "max_steps"]
    np.testing.assert_array_equal(res.history[:, 4:], np.repeat(res.loss[:, None], 46, axis=1))
    with pytest.raises(ValueError, match="time_limit"):
        invert(
            affine5,
            ys[0],
            steps=5,
            starts=inversion.Starts(x_shape=(5,)),
            execution=inversion.Execution(time_limit=1.0, loop="compiled"),
        )
    with pytest.raises(ValueError, match="time_limit"):
        invert(
            affine5,
            ys[0],
            steps=5,
            starts=inversion.Starts(x_shape=(5,)),
            execution=inversion.Execution(time_limit=-1.0),
        )
