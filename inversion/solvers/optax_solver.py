"""Any optax gradient transformation as a solver: ``x <- P(x + update(grad J(x)))``."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array

from inversion.objective import Objective
from inversion.solvers.base import Solver, all_zero, inf_like


class OptaxState(NamedTuple):
    opt_state: Any  # the optax transformation's state
    value: Array  # J at the last step's input (+inf before the first step)
    grad_zero: Array  # grad J was exactly zero there (False before the first step)


@dataclasses.dataclass(frozen=True)
class Optax(Solver):
    """Projected first-order descent with an optax transformation.

    One step at ``x``: ``v, g = J(x), grad J(x)``; ``u, s = optimizer.update(g, s, x)``
    (extra-args transformations such as ``optax.lbfgs()`` also receive ``value=v``, ``grad=g``
    and ``value_fn=J``); ``x_next = P(x + u)`` with ``P`` the projection onto the bounds.
    Covers Adam, SGD, schedules, ``optax.chain`` and optax's own L-BFGS (whose line search
    does not know the bounds; :class:`inversion.solvers.LBFGS` does).
    """

    optimizer: optax.GradientTransformation

    def __post_init__(self):
        if not isinstance(self.optimizer, optax.GradientTransformation):
            raise TypeError(
                "optimizer must be an optax.GradientTransformation, got "
                f"{type(self.optimizer).__name__}"
            )

    @classmethod
    def by_name(cls, name: str, learning_rate: float | None = None) -> Optax:
        """``Optax(optax.adam(lr))`` (``'adam'``, ``'sgd'``; ``'lbfgs'``: ``optax.lbfgs``), the
        SAME object for equal arguments. The engine caches compiled programs per solver object
        and ``optax.adam(lr)`` makes a new one at every call, so ``Optax(optax.adam(lr))``
        written inside a loop recompiles at every call; ``Optax.by_name('adam', lr)`` does not."""
        return _by_name(name, None if learning_rate is None else float(learning_rate))

    def init(self, objective: Objective, x: Array) -> OptaxState:
        return OptaxState(self.optimizer.init(x), inf_like(x), jnp.zeros((), bool))

    def step(self, objective: Objective, x: Array, state: OptaxState):
        value, grad = jax.value_and_grad(objective.value)(x)
        if isinstance(self.optimizer, optax.GradientTransformationExtraArgs):
            updates, opt_state = self.optimizer.update(
                grad, state.opt_state, x, value=value, grad=grad, value_fn=objective.value
            )
        else:
            updates, opt_state = self.optimizer.update(grad, state.opt_state, x)
        x_next = objective.project(optax.apply_updates(x, updates))
        return x_next, OptaxState(opt_state, value, all_zero(grad))


@functools.lru_cache(maxsize=64)
def _by_name(name: str, learning_rate: float | None) -> Optax:
    from inversion import checks

    return Optax(checks.resolve_optimizer(name, learning_rate))
