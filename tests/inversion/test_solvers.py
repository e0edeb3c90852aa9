"""Every solver in inversion.solvers on problems with a closed-form answer, driven by the pure
``inversion.solve`` and by the engine.

Error models (float32, eps32 = 1.2e-7): for a least-squares problem with condition number
``kappa`` the computed minimiser of a backward-stable method is within ``~kappa * eps32``
relative of the exact one (Higham, Accuracy and Stability, ch. 20; the residual here is 0, so
the ``kappa^2`` term vanishes). The maps below have ``kappa < 10``, so ``1e-4`` relative leaves
a margin of ~100x over ``kappa * eps32 ~ 1e-6`` for the iterative solvers (they stop at
round-off of the objective, ``J ~ eps32 * |y|^2``, which bounds ``|x - x*| <= kappa *
sqrt(eps32)``-ish only for Adam, hence its own, looser, tolerance).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import inversion
from inversion import Objective, solve, solvers

RNG = np.random.default_rng(0)
A = jnp.asarray(RNG.normal(size=(30, 12)), jnp.float32)  # condition number ~2.7
X_TRUE = jnp.asarray(RNG.uniform(0.1, 0.9, size=12), jnp.float32)
KAPPA = float(np.linalg.cond(np.asarray(A)))

SECOND_ORDER = {
    "LBFGS": solvers.LBFGS(),
    "LevenbergMarquardt": solvers.LevenbergMarquardt(cg_steps=12),
    "GaussNewton": solvers.GaussNewton(cg_steps=12),
}
ALL = {**SECOND_ORDER, "Optax-adam": solvers.Optax(optax.adam(0.02))}


def linear(x):
    return A @ x


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def test_condition_number_is_what_the_tolerances_assume():
    assert KAPPA < 10


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_linear_least_squares_matches_lstsq(name):
    y = linear(X_TRUE)
    exact = np.linalg.lstsq(np.asarray(A, np.float64), np.asarray(y, np.float64), rcond=None)[0]
    res = jax.jit(
        lambda y: solve(Objective(linear, y), SECOND_ORDER[name], jnp.zeros(12), max_steps=60)
    )(y)
    assert rel(res.x, exact) <= 1e-4  # module docstring: kappa * eps32 ~ 1e-6, 100x margin
    assert float(res.residual) <= 1e-5
    assert int(res.steps) >= 1 and res.history.shape == (60,)


def test_adam_reaches_the_least_squares_solution_too():
    y = linear(X_TRUE)
    res = solve(Objective(linear, y), ALL["Optax-adam"], jnp.zeros(12), max_steps=600)
    assert rel(res.x, X_TRUE) <= 1e-3  # first order: stops near sqrt(eps)-level accuracy
    assert str(res.status) == "max_steps"


@pytest.mark.parametrize("name", sorted(ALL))
def test_box_constrained_least_squares_matches_scipy_lsq_linear(name):
    """The unconstrained minimiser leaves the box, so several bounds are active at the answer;
    scipy's lsq_linear (float64, exact active set) is the reference."""
    x_out = X_TRUE.at[:4].set(jnp.asarray([1.4, -0.5, 1.2, -0.3]))
    y = linear(x_out)
    ref = scipy.optimize.lsq_linear(
        np.asarray(A, np.float64), np.asarray(y, np.float64), bounds=(0.0, 1.0), tol=1e-14
    ).x
    steps = 1500 if name == "Optax-adam" else 200
    res = solve(
        Objective(linear, y, bounds=(0.0, 1.0)), ALL[name], jnp.full(12, 0.5), max_steps=steps
    )
    assert float(jnp.min(res.x)) >= 0.0 and float(jnp.max(res.x)) <= 1.0
    tol = 2e-3 if name == "Optax-adam" else 1e-4
    assert rel(res.x, ref) <= tol, (name, np.asarray(res.x), ref)


# A full-rank affine map through a ReLU with a known active set: at X_TRUE the first 20 of 36
# pre-activations are >= 0.5 (active) and the last 16 are <= -0.5 (inactive), so near X_TRUE
# fn(x) = W[:20] x + b[:20] exactly, and W[:20] (20 x 12) has full column rank.
W = np.asarray(RNG.normal(size=(36, 12)), np.float64)
PRE = np.concatenate([RNG.uniform(0.5, 2.0, 20), -RNG.uniform(0.5, 2.0, 16)])
B = PRE - W @ np.asarray(X_TRUE, np.float64)
W32, B32 = jnp.asarray(W, jnp.float32), jnp.asarray(B, jnp.float32)


def relu_affine(x):
    return jax.nn.relu(W32 @ x + B32)


def test_relu_problem_has_the_stated_active_set():
    pre = W @ np.asarray(X_TRUE, np.float64) + B
    assert np.all(pre[:20] >= 0.5) and np.all(pre[20:] <= -0.5)
    assert np.linalg.matrix_rank(W[:20]) == 12


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_relu_with_known_active_set_is_solved_exactly(name):
    """From a start in the same activation region (|dx| small enough that no pre-activation
    crosses 0: |W dx| <= 0.5 / 3), the problem is linear least squares on the active rows."""
    y = relu_affine(X_TRUE)
    dx = jnp.asarray(RNG.normal(size=12), jnp.float32)
    dx = dx * (0.5 / 3) / float(np.max(np.abs(W @ np.asarray(dx, np.float64))))
    res = solve(Objective(relu_affine, y), SECOND_ORDER[name], X_TRUE + dx, max_steps=60)
    assert rel(res.x, X_TRUE) <= 1e-4  # kappa(W[:20]) < 10: module docstring


def test_gauss_newton_with_enough_cg_steps_is_exact_in_one_step_on_an_affine_region():
    """The model is exact on an affine region: one step with CG run to n iterations (CG is
    exact in at most n = 12 steps in exact arithmetic) lands on the solution."""
    y = relu_affine(X_TRUE)
    dx = jnp.full(12, 0.001, jnp.float32)
    res = solve(
        Objective(relu_affine, y), solvers.GaussNewton(cg_steps=16), X_TRUE + dx, max_steps=1
    )
    assert int(res.steps) == 1
    assert rel(res.x, X_TRUE) <= 1e-4


def test_regularizers_enter_the_gauss_newton_model():
    """J(x) = mse(Ax, y) + lam |x|^2 has the closed-form minimiser (A^T A (2/m) + 2 lam I)^-1
    (2/m) A^T y; LM and GN use the regularizer's gradient and Hessian, so they reach it."""
    lam = 0.05
    y = linear(X_TRUE)
    m = y.shape[0]
    a64 = np.asarray(A, np.float64)
    exact = np.linalg.solve(
        a64.T @ a64 * 2 / m + 2 * lam * np.eye(12), a64.T @ np.asarray(y) * 2 / m
    )
    reg = lambda x: lam * jnp.sum(x**2)  # noqa: E731
    for solver in (solvers.LevenbergMarquardt(cg_steps=12), solvers.GaussNewton(cg_steps=12)):
        res = solve(Objective(linear, y, regularizers=reg), solver, jnp.zeros(12), max_steps=40)
        assert rel(res.x, exact) <= 1e-4


def test_normalized_loss_has_the_same_minimiser_for_least_squares_solvers():
    y = linear(X_TRUE)
    res = solve(
        Objective(linear, y, loss="normalized"),
        solvers.LevenbergMarquardt(cg_steps=12),
        jnp.zeros(12),
        max_steps=40,
    )
    assert rel(res.x, X_TRUE) <= 1e-4


@pytest.mark.parametrize("name", sorted(ALL))
def test_user_jit_vmap_of_solve_equals_one_solve_per_row(name):
    """The same per-row arithmetic in a batched and an unbatched program differs by rounding
    only: over 6 steps each rounding at eps32 relative to |x| <= 1, with a 10x margin. (Longer
    runs are not compared step for step: a line search or a damping decision taken on a
    rounding-level difference sends the two runs along different, equally valid paths.)"""
    solver, steps = ALL[name], 6
    rng = np.random.default_rng(7)
    xs = jnp.asarray(rng.uniform(0.1, 0.9, size=(5, 12)), jnp.float32)
    ys = jax.vmap(relu_affine)(xs)
    x0 = jnp.full((5, 12), 0.5)

    def one_row(y, x0):
        return solve(Objective(relu_affine, y, bounds=(0.0, 1.0)), solver, x0, max_steps=steps)

    many = jax.jit(jax.vmap(one_row))(ys, x0)
    assert many.x.shape == (5, 12) and many.history.shape == (5, steps)
    single = jax.jit(one_row)
    for i in range(5):
        one = single(ys[i], x0[i])
        np.testing.assert_allclose(many.x[i], one.x, atol=steps * 1.2e-7 * 10, rtol=0)
        assert int(many.steps[i]) == int(one.steps)
        assert int(many.status_code[i]) == int(one.status_code)


@pytest.mark.parametrize("name", sorted(ALL))
def test_engine_accepts_every_solver_and_batch_equals_loop_of_invert(name):
    """As above, through the host driver (6 steps: rounding only, 10x margin)."""
    solver = ALL[name]
    xs = jnp.asarray(np.random.default_rng(8).uniform(0.1, 0.9, size=(3, 12)), jnp.float32)
    ys = jax.vmap(relu_affine)(xs)
    kw = dict(
        starts=inversion.Starts(x_shape=(12,)),
        solver=solver,
        steps=6,
        problem=inversion.Problem(bounds=(0.0, 1.0)),
    )
    batch = inversion.invert_batch(relu_affine, ys, **kw)
    for i in range(3):
        one = inversion.invert(relu_affine, ys[i], **kw)
        np.testing.assert_allclose(batch.x[i], one.x, atol=6 * 1.2e-7 * 10, rtol=0)
        np.testing.assert_array_equal(batch.steps[i], one.steps)


def test_objective_is_a_pytree_with_the_target_as_its_leaf():
    obj = Objective(linear, jnp.ones(30), bounds=(0.0, 1.0))
    leaves, treedef = jax.tree.flatten(obj)
    assert len(leaves) == 1 and leaves[0].shape == (30,)
    again = jax.tree.unflatten(treedef, [jnp.zeros(30)])
    assert again.fn is linear and again.bounds == (0.0, 1.0)
    arr = Objective(linear, jnp.ones(30), bounds=(jnp.zeros(12), 1.0))
    assert len(jax.tree.leaves(arr)) == 2  # array bounds are leaves too


def test_objective_least_squares_form_reproduces_the_loss():
    y = linear(X_TRUE)
    x = jnp.full(12, 0.3)
    for loss in ("mse", "normalized"):
        obj = Objective(linear, y, loss=loss)
        r = obj.least_squares_residual(x)
        np.testing.assert_allclose(0.5 * jnp.sum(r**2), obj.value(x), rtol=1e-6)
    with pytest.raises(ValueError, match="least-squares loss"):
        Objective(linear, y, loss="cosine").least_squares_residual(x)


def test_bad_arguments_raise_clear_errors():
    y = linear(X_TRUE)
    with pytest.raises(ValueError, match="max_steps"):
        solve(Objective(linear, y), solvers.LBFGS(), jnp.zeros(12), max_steps=0)
    with pytest.raises(TypeError, match="Objective"):
        solve(linear, solvers.LBFGS(), jnp.zeros(12), max_steps=3)
    with pytest.raises(TypeError, match="Solver"):
        solve(Objective(linear, y), optax.adam(0.1), jnp.zeros(12), max_steps=3)
    with pytest.raises(TypeError, match="fn"):
        Objective(3, y)
    with pytest.raises(TypeError, match="optax.GradientTransformation"):
        solvers.Optax("adam")
    with pytest.raises(ValueError, match="cg_steps"):
        solvers.LevenbergMarquardt(cg_steps=0)
    with pytest.raises(ValueError, match="memory"):
        solvers.LBFGS(memory=0)
    with pytest.raises(ValueError, match="least-squares loss"):
        inversion.invert(
            linear,
            y,
            solver=solvers.LevenbergMarquardt(),
            problem=inversion.Problem(loss="cosine"),
            starts=inversion.Starts(x_shape=(12,)),
        )
    with pytest.raises(ValueError, match="not both"):
        inversion.invert(linear, y, solver=solvers.LBFGS(), optimizer="adam", x_shape=(12,))
    with pytest.raises(TypeError, match="solver"):
        inversion.invert(linear, y, solver=optax.adam(0.1), starts=inversion.Starts(x_shape=(12,)))


def test_stalled_status_is_named():
    """LM at float32 round-off rejects every step, its damping grows past max_damping and the
    row stops 'stalled' (reported, not hidden as 'max_steps')."""
    y = linear(X_TRUE)
    res = solve(
        Objective(linear, y),
        solvers.LevenbergMarquardt(cg_steps=12, max_damping=1e4),
        jnp.zeros(12),
        max_steps=200,
    )
    assert str(res.status) == "stalled" and int(res.steps) < 200
    assert rel(res.x, X_TRUE) <= 1e-4
    assert inversion.STATUS_NAMES[int(res.status_code)] == "stalled"
