"""A second call with new targets of the same shape compiles nothing: the engine reuses its
programs (cached per problem; the solver and fn are hashable), and a user's
``jax.jit(jax.vmap(solve))`` reuses its own, because the target is a leaf of the Objective."""

from __future__ import annotations

import contextlib
import logging

import jax
import jax.numpy as jnp
import numpy as np

import inversion
from inversion import Objective, solve, solvers

RNG = np.random.default_rng(3)
A = jnp.asarray(RNG.normal(size=(8, 5)), jnp.float32)
SOLVER = solvers.LevenbergMarquardt(cg_steps=5)


def fn(x):
    return jnp.tanh(A @ x)


class _Count(logging.Handler):
    def __init__(self):
        super().__init__()
        self.compiles: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if "Compiling" in message:
            self.compiles.append(message)


@contextlib.contextmanager
def count_compiles():
    """Collect JAX's 'Compiling ...' log lines (``jax_log_compiles``) while the block runs."""
    handler = _Count()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with jax.log_compiles(True):
            yield handler.compiles
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def targets(seed):
    xs = jnp.asarray(np.random.default_rng(seed).uniform(size=(4, 5)), jnp.float32)
    return jax.vmap(fn)(xs)


def test_counter_sees_a_compilation():
    with count_compiles() as compiles:
        jax.jit(lambda x: x * 3.0 + 1.0)(jnp.ones(7)).block_until_ready()
    assert compiles  # otherwise the tests below could not fail


def test_engine_second_call_with_new_targets_compiles_nothing():
    kw = dict(
        starts=inversion.Starts(x_shape=(5,)),
        solver=SOLVER,
        steps=6,
        problem=inversion.Problem(bounds=(-1.0, 1.0)),
    )
    first = inversion.invert_batch(fn, targets(0), **kw)
    first.x.block_until_ready()
    with count_compiles() as compiles:
        second = inversion.invert_batch(fn, targets(1), **kw)
        second.x.block_until_ready()
    assert compiles == []
    assert not np.array_equal(first.x, second.x)  # it did solve the new targets


def test_user_jit_vmap_of_solve_second_call_compiles_nothing():
    run = jax.jit(
        jax.vmap(lambda y, x0: solve(Objective(fn, y, bounds=(-1.0, 1.0)), SOLVER, x0, max_steps=6))
    )
    x0 = jnp.zeros((4, 5))
    run(targets(0), x0).x.block_until_ready()
    with count_compiles() as compiles:
        out = run(targets(1), x0)
        out.x.block_until_ready()
    assert compiles == []
