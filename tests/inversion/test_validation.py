"""One place for validation (inversion.checks): the cases that used to fail late or silently.

Each case either raises a clear error naming the argument before anything compiles, or gives
a documented result. The problems are tiny (a 6x4 matrix), so each case costs milliseconds.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import inversion
from inversion import Objective, solve, solvers

W = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)


def linear(x):
    return W @ x


Y = linear(jnp.ones(4))


# -- Objective and solve -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bounds", "match"),
    [
        ((1.0, 0.0), "lo < hi"),
        ((0.0, 0.0), "lo < hi"),
        ((float("nan"), 1.0), "bounds lo contains NaN"),
        ((0.0, np.array([1.0, np.nan, 1.0, 1.0])), "bounds hi contains NaN"),
    ],
)
def test_objective_refuses_empty_or_nan_boxes(bounds, match):
    with pytest.raises(ValueError, match=match):
        Objective(linear, Y, bounds=bounds)


def test_regularizers_none_means_none_everywhere():
    assert Objective(linear, Y, regularizers=None).regularizers == ()
    assert inversion.Problem(regularizers=None).regularizers == ()


@pytest.mark.parametrize("tol", [-1.0, float("nan"), float("inf")])
def test_solve_refuses_a_bad_tol(tol):
    with pytest.raises(ValueError, match="tol must be finite and >= 0"):
        solve(Objective(linear, Y), solvers.LBFGS(), jnp.zeros(4), max_steps=3, tol=tol)


def test_solve_checks_shapes_before_tracing_the_loop():
    obj = Objective(linear, Y)
    with pytest.raises(ValueError, match="fn could not be evaluated on one input of shape"):
        solve(obj, solvers.LBFGS(), jnp.zeros(5), max_steps=3)
    with pytest.raises(ValueError, match="target has shape"):
        solve(Objective(linear, Y[:3]), solvers.LBFGS(), jnp.zeros(4), max_steps=3)
    with pytest.raises(ValueError, match="bounds lo of shape \\(3,\\) does not broadcast"):
        solve(
            Objective(linear, Y, bounds=(jnp.zeros(3), 1.0)),
            solvers.LBFGS(),
            jnp.zeros(4),
            max_steps=3,
        )


@pytest.mark.parametrize(
    ("fn", "error", "match"),
    [
        (lambda x: (W @ x, x), TypeError, "single array"),
        (lambda x: {"y": W @ x}, TypeError, "single array"),
        (lambda x: (W @ x).astype(jnp.int32), TypeError, "floating-point output"),
    ],
)
def test_solve_refuses_fn_without_one_floating_output(fn, error, match):
    with pytest.raises(error, match=match):
        solve(Objective(fn, Y), solvers.LBFGS(), jnp.zeros(4), max_steps=3)


def test_integer_and_low_precision_starts_run_in_float32():
    for x0 in (jnp.zeros(4, jnp.int32), jnp.zeros(4, jnp.bfloat16)):
        res = solve(Objective(linear, Y), solvers.LBFGS(), x0, max_steps=3)
        assert res.x.dtype == jnp.float32


def test_max_steps_accepts_numpy_ints_and_refuses_huge_budgets():
    res = solve(Objective(linear, Y), solvers.LBFGS(), jnp.zeros(4), max_steps=np.int64(3))
    assert res.history.shape == (3,)
    with pytest.raises(ValueError, match="max_steps must be <= 2147483647"):
        solve(Objective(linear, Y), solvers.LBFGS(), jnp.zeros(4), max_steps=10**12)
    with pytest.raises(ValueError, match="steps must be <= 2147483647"):
        inversion.invert(linear, Y, jnp.zeros(4), steps=10**12)


def test_nan_start_is_named():
    with pytest.raises(ValueError, match="x0 contains NaN"):
        solve(Objective(linear, Y), solvers.LBFGS(), jnp.full(4, jnp.nan), max_steps=3)


# -- solvers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: solvers.LBFGS(step_sizes=(float("inf"),)), ValueError, "step_sizes\\[0\\]"),
        (lambda: solvers.LBFGS(step_sizes="12"), TypeError, "step_sizes must be a non-empty"),
        (lambda: solvers.LBFGS(step_sizes=()), TypeError, "step_sizes must be a non-empty"),
        (lambda: solvers.LBFGS(memory="10"), TypeError, "memory must be an int"),
        (lambda: solvers.LBFGS(c1="0.1"), TypeError, "c1 must be a real number"),
        (lambda: solvers.LBFGS(gtol=-1.0), ValueError, "gtol must be finite"),
        (lambda: solvers.LevenbergMarquardt(damping=float("inf")), ValueError, "damping"),
        (lambda: solvers.LevenbergMarquardt(max_damping=-1), ValueError, "max_damping"),
        (lambda: solvers.LevenbergMarquardt(cg_steps="3"), TypeError, "cg_steps must be an int"),
        (lambda: solvers.LevenbergMarquardt(accept=1.0), ValueError, "accept must lie in"),
        (lambda: solvers.GaussNewton(damping="x"), TypeError, "damping must be a real number"),
    ],
)
def test_solver_arguments_are_checked_when_made(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    "solver",
    [
        solvers.LBFGS(gtol=1e-3),
        solvers.LevenbergMarquardt(gtol=1e-3),
        solvers.GaussNewton(gtol=1e-3),
    ],
    ids=lambda s: type(s).__name__,
)
def test_gtol_stops_as_stationary_not_converged(solver):
    """``fn(x) = 1e-4 x`` cannot reach ``y = 1`` in the box [0, 1]: the projected gradient is
    tiny but not zero at the start, so the gradient test stops the row, which is a stationary
    point with residual ~1, not a solution."""
    fn = lambda x: 1e-4 * x  # noqa: E731
    res = solve(
        Objective(fn, jnp.ones(4), bounds=(0.0, 1.0)), solver, jnp.full(4, 0.5), max_steps=20
    )
    assert res.status == "stationary" and not bool(res.converged)
    assert float(res.residual) > 0.99


def test_outputs_near_overflow_with_the_normalized_loss_diverge():
    fn = lambda x: 1e29 * (W @ x)  # noqa: E731 (the squared norm overflows float32)
    res = solve(
        Objective(fn, fn(jnp.ones(4)), loss="normalized"),
        solvers.LBFGS(),
        jnp.zeros(4),
        max_steps=10,
    )
    assert res.status == "diverged" and int(res.steps) == 0


def test_levenberg_marquardt_is_independent_of_the_output_scale():
    """Outputs ~1e7 used to overflow the damping and CG's inner products in float32 (the row
    stalled at x0, residual 1.0); CG now runs on the normalised right-hand side."""
    fn = lambda x: 1e7 * (W @ x)  # noqa: E731
    res = solve(
        Objective(fn, fn(jnp.ones(4))), solvers.LevenbergMarquardt(), jnp.zeros(4), max_steps=50
    )
    assert float(res.residual) < 1e-5


# -- invert / invert_batch options ---------------------------------------------------------


def test_chunks_with_restarts_agree_up_to_rounding():
    """Documented: chunking changes the batch size XLA vectorises, so results agree up to
    float32 rounding (30 LM steps on O(1) values: well within 1e-4)."""
    fn = lambda x: jnp.tanh(W @ x)  # noqa: E731
    ys = jax.vmap(fn)(jnp.asarray(np.random.default_rng(1).normal(size=(5, 4)), jnp.float32))
    kw = dict(
        solver=solvers.LevenbergMarquardt(),
        steps=30,
        starts=inversion.Starts(x_shape=(4,), key=jax.random.key(0), restarts=2),
    )
    whole = inversion.invert_batch(fn, ys, **kw)
    chunked = inversion.invert_batch(fn, ys, execution=inversion.Execution(chunk=3), **kw)
    np.testing.assert_allclose(chunked.x, whole.x, atol=1e-4)


def test_flat_keywords_still_work_with_a_deprecation_warning():
    grouped = inversion.invert(
        linear,
        Y,
        solver=solvers.Optax(optax.adam(0.1)),
        steps=5,
        problem=inversion.Problem(bounds=(-2.0, 2.0)),
        starts=inversion.Starts(x_shape=(4,)),
    )
    with pytest.warns(DeprecationWarning, match="deprecated"):
        flat = inversion.invert(
            linear, Y, optimizer="adam", learning_rate=0.1, steps=5, bounds=(-2.0, 2.0),
            x_shape=(4,),
        )  # fmt: skip
    np.testing.assert_array_equal(flat.x, grouped.x)
    with pytest.raises(TypeError, match="unexpected keyword argument\\(s\\) \\['boundz'\\]"):
        inversion.invert(linear, Y, boundz=(0.0, 1.0))
    with pytest.raises(ValueError, match="give problem= or the keywords \\['bounds'\\]"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            inversion.invert(linear, Y, problem=inversion.Problem(), bounds=(0.0, 1.0))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: inversion.Problem(loss="l1"), ValueError, "unknown loss"),
        (lambda: inversion.Problem(bounds=(1.0, 0.0)), ValueError, "lo < hi"),
        (lambda: inversion.Starts(restarts=0), ValueError, "restarts must be >= 1"),
        (lambda: inversion.Starts(init_scale=-1.0), ValueError, "init_scale"),
        (lambda: inversion.Starts(key=3), TypeError, "key must be a jax.random key"),
        (lambda: inversion.Execution(loop="fast"), ValueError, "unknown loop"),
        (lambda: inversion.Execution(chunk=0), ValueError, "chunk must be >= 1"),
        (lambda: inversion.Execution(progress="yes"), TypeError, "progress"),
        (
            lambda: inversion.Execution(loop="compiled", time_limit=1.0),
            ValueError,
            "time_limit needs loop='python'",
        ),
    ],
)
def test_option_groups_are_checked_when_made(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_groups_of_the_wrong_type_are_named():
    with pytest.raises(TypeError, match="problem must be an inversion.Problem"):
        inversion.invert(linear, Y, jnp.zeros(4), problem=(0.0, 1.0))
