"""A start where the gradient is exactly zero ends at once with status 'zero_gradient'.

``fn`` below is a sigmoid saturated at the start ``x0 = 0``: ``z = 1e3 (0 - 10) = -1e4``, so
``sigmoid(z) = 1 / (1 + exp(1e4)) = 0`` and ``sigmoid'(z) = 0`` exactly in float32 (``exp``
overflows to ``inf``); with target ``0.5`` the objective there is ``mse = 0.25``, not 0. No
gradient-based solver can leave such a start, so every driver (``invert``, ``invert_batch``,
both loops, the pure ``solve``) stops the row at its first step, before applying it: ``steps``
is 0 and ``x`` is ``x0`` bit for bit. Rows whose gradient is not zero go on as before.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import inversion
from inversion import solvers
from inversion.engine import invert, invert_batch
from inversion.result import CONVERGED, ZERO_GRADIENT


def fn(x):
    return jax.nn.sigmoid(1e3 * (x - 10.0))


X0 = jnp.zeros(3)  # saturated start: grad J(X0) == 0 exactly (module docstring)
Y_HALF = jnp.full((3,), 0.5)  # J(X0) = mean((0 - 0.5)^2) = 0.25; residual ||0 - y|| / ||y|| = 1
X_FINE = 10.0 + 1e-3 * jnp.asarray([0.5, -0.5, 1.0])  # in the sigmoid's linear range, |z| <= 1
X0_FINE = jnp.full((3,), 10.0)  # z = 0: sigmoid' = 1/4, gradient far from 0
# mse 1e-6 from 0.028 at X0_FINE; Adam (the slowest below) reaches it after ~85 steps, the
# others within ~10 (measured), so every fine row converges within STEPS
TOL = 1e-6
STEPS = 120

SOLVERS = {
    # Adam's steps are ~lr in x; lr 1e-4 is 0.1 in z, the scale on which fn changes.
    "adam": solvers.Optax(optax.adam(1e-4)),
    "lbfgs": solvers.LBFGS(),
    "lm": solvers.LevenbergMarquardt(),
    "gauss_newton": solvers.GaussNewton(),
}
# (loop, tol): the Python loop; the compiled loop as lax.scan (no tol) and lax.while_loop (tol)
LOOPS = [("python", None), ("compiled", None), ("compiled", TOL)]
BATCH_LOOPS = [("python", None), ("compiled", TOL)]  # the scan is the same vmapped step


def test_the_gradient_is_exactly_zero_at_the_start():
    value, grad = jax.value_and_grad(lambda x: jnp.mean((fn(x) - Y_HALF) ** 2))(X0)
    assert float(value) == 0.25
    assert np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize("loop,tol", LOOPS)
@pytest.mark.parametrize("name", list(SOLVERS))
def test_invert_stops_after_zero_steps_and_warns(name, loop, tol):
    with pytest.warns(RuntimeWarning, match=r"1 of 1 row stopped .* 'zero_gradient'") as rec:
        res = invert(
            fn,
            Y_HALF,
            x0=X0,
            solver=SOLVERS[name],
            steps=STEPS,
            tol=tol,
            execution=inversion.Execution(loop=loop),
        )
    assert "invert logits (pre-activation)" in str(rec[0].message).lower()
    assert "models.feature_fn(model, name)" in str(rec[0].message)
    assert rec[0].filename == __file__  # points at the caller of invert
    assert res.status == "zero_gradient" and bool(res.zero_gradient)
    assert int(res.steps) == 0  # stopped at the first step, before applying it
    np.testing.assert_array_equal(res.x, X0)  # unchanged, bit for bit
    assert float(res.loss) == 0.25 and float(res.residual) == 1.0  # exact in float32
    np.testing.assert_array_equal(res.history, np.full(STEPS, 0.25, np.float32))


@pytest.mark.parametrize("loop,tol", BATCH_LOOPS)
@pytest.mark.parametrize("name", list(SOLVERS))
def test_batch_stops_only_the_zero_gradient_row(name, loop, tol):
    """Rows: saturated; fine; partly saturated (entry 0 has zero gradient, entries 1-2 not:
    the test is on the whole gradient, so it runs)."""
    x0 = jnp.stack([X0, X0_FINE, X0_FINE.at[0].set(0.0)])
    ys = jnp.stack([Y_HALF, fn(X_FINE), fn(X_FINE).at[0].set(0.0)])
    with pytest.warns(RuntimeWarning, match=r"1 of 3 rows stopped"):
        res = invert_batch(
            fn,
            ys,
            x0=x0,
            solver=SOLVERS[name],
            steps=STEPS,
            tol=tol,
            execution=inversion.Execution(loop=loop),
        )
    assert list(res.status[:1]) == ["zero_gradient"] and int(res.steps[0]) == 0
    np.testing.assert_array_equal(res.x[0], X0)
    assert not np.any(res.zero_gradient[1:])
    assert np.all(np.asarray(res.steps[1:]) >= 1)  # the other rows went on
    start = float(jnp.mean((fn(X0_FINE) - ys[1]) ** 2))
    assert float(res.loss[1]) < 1e-3 * start  # and made progress (see TOL)
    if tol is not None:
        assert list(res.status[1:]) == ["converged", "converged"]
    # rows never interact: the fine row alone gives the same run (no warning there)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        alone = invert(
            fn,
            ys[1],
            x0=x0[1],
            solver=SOLVERS[name],
            steps=STEPS,
            tol=tol,
            execution=inversion.Execution(loop=loop),
        )
    assert int(alone.steps) == int(res.steps[1]) and alone.status == res.status[1]


@pytest.mark.parametrize("name", list(SOLVERS))
def test_pure_solve_under_jit_and_vmap(name):
    solver = SOLVERS[name]

    @jax.jit
    def run(y, x0):
        return inversion.solve(inversion.Objective(fn, y), solver, x0, max_steps=STEPS, tol=TOL)

    one = run(Y_HALF, X0)
    assert int(one.status_code) == ZERO_GRADIENT and int(one.steps) == 0
    np.testing.assert_array_equal(one.x, X0)
    # at x = 10, fn(x) = 0.5 = y: J = 0 and grad J = 0 exactly, a solution, not a dead start
    sol = run(Y_HALF, jnp.full((3,), 10.0))
    assert int(sol.status_code) == CONVERGED and int(sol.steps) == 0
    many = jax.jit(jax.vmap(run))(jnp.stack([Y_HALF, fn(X_FINE)]), jnp.stack([X0, X0_FINE]))
    assert int(many.status_code[0]) == ZERO_GRADIENT and int(many.steps[0]) == 0
    assert int(many.status_code[1]) == CONVERGED and int(many.steps[1]) >= 1


def test_solution_at_the_start_is_converged_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = invert(fn, Y_HALF, x0=jnp.full((3,), 10.0), steps=STEPS)  # no tol given
    assert res.status == "converged" and int(res.steps) == 0 and float(res.loss) == 0.0


def test_restart_with_zero_gradient_ends_with_that_status():
    x0 = jnp.stack([X0, X0_FINE])[None]  # (N=1, R=2, 3)
    with pytest.warns(RuntimeWarning, match=r"1 of 2 rows stopped"):
        res = invert_batch(
            fn,
            fn(X_FINE)[None],
            x0=x0,
            solver=SOLVERS["lm"],
            tol=TOL,
            starts=inversion.Starts(restarts=2),
        )
    assert list(res.status[0]) == ["zero_gradient", "converged"]
    assert res.best().status.tolist() == ["converged"]  # the lower loss


def test_bounds_zero_gradient_inside_the_box():
    with pytest.warns(RuntimeWarning, match="zero_gradient"):
        res = invert(fn, Y_HALF, x0=X0, steps=STEPS, problem=inversion.Problem(bounds=(-1.0, 20.0)))
    assert res.status == "zero_gradient" and int(res.steps) == 0


def test_bounds_a_zero_projected_gradient_is_not_flagged():
    """At x = lo with the gradient pushing below lo, the PROJECTED gradient is 0 (a KKT point
    of the box problem) but the gradient is not: the run is not 'zero_gradient'."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = invert(
            lambda x: x,
            -jnp.ones(3),
            x0=jnp.zeros(3),
            steps=20,
            problem=inversion.Problem(bounds=(0.0, 1.0)),
        )
    assert res.status == "max_steps" and int(res.steps) == 20
    np.testing.assert_array_equal(res.x, jnp.zeros(3))  # held at the bound


class _ValueOnly(NamedTuple):
    value: jax.Array


class _NoFlag(solvers.Solver):
    """A solver whose state lacks ``grad_zero`` (breaks the contract of solvers.base)."""

    def init(self, objective, x):
        return _ValueOnly(jnp.asarray(jnp.inf))

    def step(self, objective, x, state):
        return x, _ValueOnly(objective.value(x))


def test_solver_state_without_grad_zero_is_a_clear_error():
    with pytest.raises(TypeError, match="_NoFlag.step returned a _ValueOnly without .*grad_zero"):
        inversion.solve(inversion.Objective(fn, Y_HALF), _NoFlag(), X0, max_steps=2)
