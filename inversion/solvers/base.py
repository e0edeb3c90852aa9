"""The solver protocol: a small immutable object with ``init``, ``step`` and ``terminate``.

A solver works on ONE :class:`inversion.Objective` and one input ``x`` (batches come from
``jax.vmap``; :func:`inversion.solve` and the engine drive it). Its state is a ``NamedTuple``
pytree, so it can be carried through ``lax.while_loop``, vmapped, sharded and donated::

    state = solver.init(objective, x)                  # nothing evaluated yet: value = +inf
    x_next, state = solver.step(objective, x, state)   # state.value == objective.value(x),
                                                       # state.grad_zero == all(grad J(x) == 0)
    done, status = solver.terminate(objective, x_next, state)

Contract (what the drivers rely on):

* ``state`` has a field ``value``; after ``step(objective, x, state)`` it is the objective at
  the step's INPUT ``x`` (every solver evaluates it there anyway). The drivers use it for the
  history, ``tol`` and divergence (a non-finite value stops the row and returns the previous
  iterate), so solvers need not handle those.
* ``state`` also has a boolean field ``grad_zero``: after ``step(objective, x, state)``, whether
  every entry of ``grad J(x)`` at the step's input is exactly 0 (:func:`all_zero` of the
  gradient the step computes anyway; ``False`` before the first step). The drivers stop a row
  whose FIRST step reports it, with status ``'zero_gradient'`` (``'converged'`` when ``J(x) =
  0``): from such a start no gradient-based step can move.
* ``step`` returns a feasible ``x_next`` (inside the bounds when the objective has any).
* ``terminate`` returns ``(done, status)``: a boolean scalar and an int32 status code from
  :mod:`inversion.result` when done (``STATIONARY`` for a first-order test such as a small
  projected gradient, ``STALLED`` when no progress is possible; ``CONVERGED`` is the drivers'
  own: the objective reached ``tol``); the default never stops.
* Everything is traceable: no Python control flow on values, no host reads.

A new solver is one file: subclass :class:`Solver` (a frozen dataclass, so it is hashable and
compiled programs are reused), define ``init``/``step`` (and ``terminate`` if it can tell when
it is done), export it from :mod:`inversion.solvers` and test it on a closed-form problem.
"""

from __future__ import annotations

import abc
from typing import Any

import jax.numpy as jnp
from jaxtyping import Array

from inversion.objective import Objective
from inversion.result import MAX_STEPS

RUNNING = MAX_STEPS  # the status of a row that has not stopped (it ends as 'max_steps')


class Solver(abc.ABC):
    """Base class of every solver (see the module docstring for the contract)."""

    @abc.abstractmethod
    def init(self, objective: Objective, x: Array) -> Any:
        """The state before the first step at ``x`` (a NamedTuple with a ``value`` field)."""

    @abc.abstractmethod
    def step(self, objective: Objective, x: Array, state: Any) -> tuple[Array, Any]:
        """One iteration from ``x``: ``(x_next, state)`` with ``state.value = J(x)``."""

    def terminate(self, objective: Objective, x: Array, state: Any) -> tuple[Array, Array]:
        """``(done, status)``; by default a solver runs until the driver's ``max_steps``."""
        del objective, x, state
        return jnp.zeros((), bool), jnp.asarray(RUNNING, jnp.int32)

    def check(self, objective: Objective) -> None:  # noqa: B027 (optional hook)
        """Raise ``ValueError`` if this solver cannot handle ``objective`` (called before any
        compilation by the engine); by default every objective is accepted."""


def all_zero(grad: Array) -> Array:
    """Whether every entry of ``grad`` is exactly 0 (``-0.0`` included): a boolean scalar, one
    reduction over the gradient a step has already computed."""
    return jnp.all(grad == 0)


def inf_like(x: Array) -> Array:
    """``+inf`` in ``x``'s dtype (the ``value`` of a state before its first step)."""
    return jnp.full((), jnp.inf, jnp.result_type(x))
