"""The composable stages (coarse-to-fine, continuation, per-row compaction) on closed forms.

Tolerances: the maps are the identity, a translation or a matrix of condition number < 10, so
a float32 L-BFGS solve is within ``kappa * sqrt(eps32) ~ 3.5e-3`` relative of the exact
minimiser where it stops on round-off, and much closer in practice; ``1e-3`` is asked. An
``Optax(sgd(0))`` stage does not move, which exposes the previous stage's answer exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from inversion import compaction, continuation, multiscale, solvers

RNG = np.random.default_rng(2)
STILL = solvers.Optax(optax.sgd(0.0))  # a stage that leaves x where it is


def test_downsample_inverts_upsample_and_is_its_scaled_transpose():
    z = jnp.asarray(RNG.normal(size=(3, 2, 1)), jnp.float32)
    x = jnp.asarray(RNG.normal(size=(6, 4, 1)), jnp.float32)
    np.testing.assert_array_equal(multiscale.downsample(multiscale.upsample(z, 2), 2), z)
    # <U z, x> = factor^2 <z, D x>
    lhs = float(jnp.vdot(multiscale.upsample(z, 2), x))
    np.testing.assert_allclose(lhs, 4 * float(jnp.vdot(z, multiscale.downsample(x, 2))), 1e-5)


def test_coarse_stage_is_the_block_mean():
    """For fn = identity the coarse minimiser is z = D y, so with a fine stage that does not
    move the answer is U D y."""
    y = jnp.asarray(RNG.uniform(0.1, 0.9, size=(2, 4, 4, 1)), jnp.float32)
    still = multiscale.coarse_to_fine(
        lambda x: x, y, x0=jnp.full_like(y, 0.5), solver=solvers.LBFGS(), steps=20,
        bounds=(0.0, 1.0), fine_solver=STILL,
    )  # fmt: skip
    expect = jax.vmap(lambda a: multiscale.upsample(multiscale.downsample(a, 2), 2))(y)
    np.testing.assert_allclose(np.asarray(still.x), np.asarray(expect), atol=1e-5)


def test_continuation_warm_starts_every_stage():
    """fn_a(x) = x - a, mse over m entries: one sgd step of length m/4 goes half way to the
    minimiser y + a. Stage a = 3 from 0 ends at (y + 3)/2; stage a = 0 from there ends at
    3y/4 + 3/4 (from a cold start it would be y/2)."""
    y = jnp.asarray(RNG.normal(size=(2, 4)), jnp.float32)
    half = solvers.Optax(optax.sgd(4 / 4))  # m = 4 entries: lr = m/4
    out = continuation.continuation(
        lambda a: lambda x: x - a, (3.0, 0.0), y, x0=jnp.zeros_like(y), solver=half, steps=1
    )
    np.testing.assert_allclose(np.asarray(out.x), 0.75 * np.asarray(y) + 0.75, atol=1e-6)
    assert np.all(np.asarray(out.steps) == 2)


def test_compaction_stops_rows_that_are_done_and_solves_the_rest():
    """Rows that start within the residual tolerance leave after the first round (their steps
    stop growing); the others go on to the least-squares answer."""
    a = jnp.asarray(RNG.normal(size=(20, 8)), jnp.float32)
    assert np.linalg.cond(np.asarray(a)) < 10
    x_true = jnp.asarray(RNG.normal(size=(4, 8)), jnp.float32)
    y = x_true @ a.T
    x0 = jnp.concatenate([x_true[:2] * (1 + 1e-6), jnp.zeros((2, 8))])
    out = compaction.invert_compacting(
        lambda x: a @ x, y, x0=x0, solver=solvers.LBFGS(), residual_tol=1e-4, round_steps=5
    )
    steps = np.asarray(out.steps)
    assert np.all(steps[:2] <= 5) and np.all(steps[2:] > 5)
    assert np.all(np.asarray(out.status) == "converged")
    assert float(np.max(np.asarray(out.residual))) <= 1e-4
    np.testing.assert_allclose(np.asarray(out.x), np.asarray(x_true), rtol=1e-3, atol=1e-3)
    assert out.history.shape[0] == 4 and out.history.shape[1] % 5 == 0


def test_bucket_sizes_are_powers_of_two_capped_at_the_batch():
    assert [compaction.bucket(k, 64) for k in (1, 2, 3, 33, 64)] == [1, 2, 4, 64, 64]
    assert compaction.bucket(5, 6) == 6


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: multiscale.coarse_to_fine(
            lambda x: x, jnp.zeros((1, 6, 6, 1)), x0=jnp.zeros((1, 6, 6, 1)),
            solver=STILL, steps=1, factor=4), "factor=4"),
        (lambda: multiscale.coarse_to_fine(
            lambda x: x, jnp.zeros((1, 4, 4, 1)), x0=jnp.zeros((1, 4, 4, 1)),
            solver=STILL, steps=1, coarse_time=0.0), "coarse_time"),
        (lambda: continuation.continuation(
            lambda a: (lambda x: x), (), jnp.zeros((1, 2)), x0=jnp.zeros((1, 2)),
            solver=STILL, steps=1), "schedule"),
        (lambda: compaction.invert_compacting(
            lambda x: x, jnp.zeros((1, 2)), x0=jnp.zeros((1, 2)), solver=STILL,
            residual_tol=-1.0), "residual_tol"),
        (lambda: compaction.invert_compacting(
            lambda x: x, jnp.zeros((1, 2)), x0=jnp.zeros((1, 2)), solver=STILL,
            residual_tol=0.1, time_limit=0), "time_limit"),
    ],
)  # fmt: skip
def test_bad_arguments_are_named_before_anything_runs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
