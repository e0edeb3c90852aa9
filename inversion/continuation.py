"""Continuation: invert a family of networks that ends at the true one, warm-starting each.

Given ``family(a) -> fn_a`` and a schedule ``a_1, ..., a_K`` whose last member is the true
network (``fn_{a_K} = fn``), stage ``k`` minimises

    J_k(x) = L(fn_{a_k}(x), y)    from the point where stage k - 1 stopped (stage 1: x0),

and the answer is stage ``K``'s. A typical family replaces each ReLU by a leaky ReLU of slope
``a`` (``a -> 0``: no unit is dead, so the gradient reaches every input through every unit
and the early stages cannot stall on a dead region) or by a softplus of sharpness ``a``
(``a -> inf``: smooth early stages). The targets stay those of the true network: the early
stages solve a nearby problem whose minimiser moves continuously to the true one as ``a ->
a_K``.

This module never builds a network: ``family`` is the caller's (e.g. a model rebuilt from its
weights with the activation's parameter as an argument).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jaxtyping import Array

from inversion import stages
from inversion.result import Result


def continuation(
    family: Callable[[Any], Callable[[Array], Array]],
    schedule: Sequence[Any],
    targets: Array,
    *,
    x0: Array,
    solver,
    steps: int,
    stage_steps: int | None = None,
    stage_time: float = 0.15,
    bounds: tuple[Any, Any] | None = None,
    time_limit: float | None = None,
    check_every: int = 1,
) -> Result:
    """Invert ``targets`` through the networks ``family(a)`` for ``a`` in ``schedule``, the
    last one the true network (module docstring).

    Every stage but the last runs at most ``stage_steps`` steps (default ``steps``) and, with
    a ``time_limit``, at most ``stage_time`` of it; the last stage runs ``steps`` steps within
    what is left. Returns the last stage's :class:`inversion.Result` (residual and loss of the
    true network) with ``steps`` summed over the stages.
    """
    if not callable(family):
        raise TypeError(f"family must be a callable a -> fn, got {type(family).__name__}")
    if isinstance(schedule, str) or not isinstance(schedule, Sequence) or not schedule:
        raise ValueError(f"schedule must be a non-empty sequence of parameters, got {schedule!r}")
    steps = stages.check_positive_int("steps", steps)
    stage_steps = stages.check_positive_int(
        "stage_steps", steps if stage_steps is None else stage_steps
    )
    stage_time = stages.check_fraction("stage_time", stage_time)
    time_limit = stages.check_time_limit(time_limit)
    fns = [family(a) for a in schedule]
    for a, f in zip(schedule, fns, strict=True):
        if not callable(f):
            raise TypeError(f"family({a!r}) must return a callable x -> y, got {type(f).__name__}")
    budget = stages.Budget(time_limit)
    x, total = x0, 0
    for k, f in enumerate(fns):
        last = k == len(fns) - 1
        result = stages.run(
            f, targets, x0=x, solver=solver, steps=steps if last else stage_steps,
            bounds=bounds, time_limit=budget.left() if last else budget.share(stage_time),
            check_every=check_every,
        )  # fmt: skip
        x, total = result.x, total + np.asarray(result.steps)
    return stages.with_steps(result, total)
