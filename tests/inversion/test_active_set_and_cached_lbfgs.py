"""The active-set polish and the one-evaluation L-BFGS on problems with a closed-form answer.

Error model as in test_solvers.py: the maps have condition number ``kappa < 10``, so a
backward-stable float32 solve is within ``~kappa * eps32 ~ 1e-6`` relative of the exact
minimiser; ``1e-4`` leaves a margin of ~100x. The L-BFGS solvers stop improving once the
decrease of ``J`` is below its float32 rounding, which bounds their error by ``~kappa *
sqrt(eps32) ~ 3.5e-3`` only (measured: 1.4e-4 on the box problem with XLA's optimisations off,
3e-7 with them on); they are held to ``1e-3``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from inversion import Objective, solve, solvers

RNG = np.random.default_rng(1)
A = jnp.asarray(RNG.normal(size=(30, 12)), jnp.float32)
X_TRUE = jnp.asarray(RNG.uniform(0.1, 0.9, size=12), jnp.float32)
# ReLU layer with a known active set at X_TRUE: the first 20 of 36 pre-activations are >= 0.5,
# the last 16 <= -0.5, so near X_TRUE fn(x) = W[:20] x + b[:20] exactly (full column rank).
W = np.asarray(RNG.normal(size=(36, 12)), np.float64)
PRE = np.concatenate([RNG.uniform(0.5, 2.0, 20), -RNG.uniform(0.5, 2.0, 16)])
B = PRE - W @ np.asarray(X_TRUE, np.float64)


def linear(x):
    return A @ x


def relu_affine(x):
    return jax.nn.relu(jnp.asarray(W, jnp.float32) @ x + jnp.asarray(B, jnp.float32))


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def test_closed_forms_are_what_the_tolerances_assume():
    assert np.linalg.cond(np.asarray(A)) < 10 and np.linalg.cond(W[:20]) < 10
    pre = W @ np.asarray(X_TRUE, np.float64) + B
    assert np.all(pre[:20] >= 0.5) and np.all(pre[20:] <= -0.5)


def test_active_set_polish_is_exact_in_one_step_inside_an_affine_region():
    """From a start in X_TRUE's region (|W dx| <= 0.5/3: no pre-activation crosses 0) the
    local least-squares problem is the whole problem: LSMR with n = 12 iterations solves it
    (exact in n steps in exact arithmetic), and the unit step is accepted."""
    y = relu_affine(X_TRUE)
    dx = jnp.asarray(RNG.normal(size=12), jnp.float32)
    dx = dx * (0.5 / 3) / float(np.max(np.abs(W @ np.asarray(dx, np.float64))))
    polish = solvers.ActiveSetPolish(iterations=16)
    res = jax.jit(lambda y, x: solve(Objective(relu_affine, y), polish, x, max_steps=1))(
        y, X_TRUE + dx
    )
    assert int(res.steps) == 1
    assert rel(res.x, X_TRUE) <= 1e-4


def test_active_set_polish_matches_scipy_lsq_linear_with_the_box_active():
    """The unconstrained minimiser leaves the box (4 bounds active at the answer): the
    free-variable steps reach scipy's float64 active-set answer."""
    y = linear(X_TRUE.at[:4].set(jnp.asarray([1.4, -0.5, 1.2, -0.3])))
    ref = scipy.optimize.lsq_linear(
        np.asarray(A, np.float64), np.asarray(y, np.float64), bounds=(0.0, 1.0), tol=1e-14
    ).x
    res = solve(
        Objective(linear, y, bounds=(0.0, 1.0)),
        solvers.ActiveSetPolish(iterations=16),
        jnp.full(12, 0.5),
        max_steps=30,
    )
    assert float(jnp.min(res.x)) >= 0.0 and float(jnp.max(res.x)) <= 1.0
    assert rel(res.x, ref) <= 1e-4


def test_active_set_polish_never_raises_the_objective():
    """Outside the region the full step may cross other regions; the true objective decides,
    so the history never increases (a rejected step keeps x)."""
    y = relu_affine(X_TRUE)
    res = solve(
        Objective(relu_affine, y), solvers.ActiveSetPolish(iterations=4), X_TRUE + 1.0,
        max_steps=12,
    )  # fmt: skip
    h = np.asarray(res.history)
    assert np.all(np.diff(h) <= 0) and h[-1] < h[0]


def test_cached_lbfgs_matches_scipy_lsq_linear_with_the_box_active():
    y = linear(X_TRUE.at[:4].set(jnp.asarray([1.4, -0.5, 1.2, -0.3])))
    ref = scipy.optimize.lsq_linear(
        np.asarray(A, np.float64), np.asarray(y, np.float64), bounds=(0.0, 1.0), tol=1e-14
    ).x
    res = solve(
        Objective(linear, y, bounds=(0.0, 1.0)), solvers.CachedLBFGS(), jnp.full(12, 0.5),
        max_steps=100,
    )  # fmt: skip
    assert float(jnp.min(res.x)) >= 0.0 and float(jnp.max(res.x)) <= 1.0
    assert rel(res.x, ref) <= 1e-3  # module docstring: kappa * sqrt(eps32)


def test_cached_lbfgs_state_value_is_the_objective_at_the_step_input():
    """The cached value and gradient belong to the current iterate: the history equals J at
    the iterates the plain LBFGS would report (checked directly against J(x))."""
    y = linear(X_TRUE)
    obj = Objective(linear, y, bounds=(0.0, 1.0))
    s = solvers.CachedLBFGS()
    x = jnp.full(12, 0.5)
    state = s.init(obj, x)
    step = jax.jit(s.step)
    for _ in range(5):
        x_next, state = step(obj, x, state)
        np.testing.assert_allclose(float(state.value), float(obj.value(x)), rtol=1e-6)
        np.testing.assert_allclose(float(state.x_value), float(obj.value(x_next)), rtol=1e-6)
        x = x_next


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: solvers.ActiveSetPolish(iterations=0), "iterations"),
        (lambda: solvers.ActiveSetPolish(damping=-1.0), "damping"),
        (lambda: solvers.CachedLBFGS(memory=0), "memory"),
        (lambda: solvers.CachedLBFGS(shrink=1.5), "shrink"),
    ],
)
def test_bad_arguments_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_active_set_polish_refuses_a_loss_without_least_squares_form():
    with pytest.raises(ValueError, match="least-squares"):
        solvers.ActiveSetPolish().check(Objective(linear, linear(X_TRUE), loss="cosine"))
