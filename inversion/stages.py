"""What the composable stages (:mod:`inversion.multiscale`, :mod:`inversion.continuation`,
:mod:`inversion.compaction`) share: one call of the engine, a wall-time budget split between
stages, and the checks of their arguments.

A stage is a function ``(fn, targets, *, x0, solver, ..., bounds, time_limit) -> Result`` that
calls :func:`inversion.invert_batch` one or more times, each warm-started where the previous
call stopped, and returns the last call's :class:`inversion.Result` with ``steps`` summed over
the calls. Every call compiles its own program (a new ``fn``); that time counts against
``time_limit`` like the steps do.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from inversion.options import Execution, Problem
from inversion.result import Result


def check_fraction(name: str, value: Any, *, open_high: bool = False) -> float:
    """A real number in ``(0, 1]`` (``(0, 1)`` with ``open_high``), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a real number in (0, 1], got {value!r}")
    if not 0 < value <= 1 or (open_high and value == 1):
        high = "1)" if open_high else "1]"
        raise ValueError(f"{name} must lie in (0, {high}, got {value!r}")
    return float(value)


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def check_time_limit(time_limit: Any) -> float | None:
    if time_limit is None:
        return None
    if isinstance(time_limit, bool) or not isinstance(time_limit, int | float):
        raise ValueError(f"time_limit must be None or a number of seconds > 0, got {time_limit!r}")
    if not (math.isfinite(time_limit) and time_limit > 0):
        raise ValueError(f"time_limit must be None or a number of seconds > 0, got {time_limit!r}")
    return float(time_limit)


@dataclasses.dataclass
class Budget:
    """Wall time left of ``time_limit`` seconds (``None``: no limit) since it was made."""

    time_limit: float | None
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def left(self) -> float | None:
        if self.time_limit is None:
            return None
        return self.time_limit - (time.perf_counter() - self.start)

    def share(self, fraction: float) -> float | None:
        """``fraction`` of the whole budget, at most what is left (``None`` without a limit)."""
        if self.time_limit is None:
            return None
        return min(fraction * self.time_limit, self.left())

    def spent(self) -> bool:
        left = self.left()
        return left is not None and left <= 0


MIN_STAGE_S = 1e-3  # a stage given no time still runs (at least one check) so it has a result


def run(fn, targets, *, x0, solver, steps, bounds, time_limit, check_every=1) -> Result:
    """One :func:`inversion.invert_batch` call (``time_limit`` ``None`` or seconds)."""
    from inversion.engine import invert_batch

    if time_limit is not None:
        time_limit = max(time_limit, MIN_STAGE_S)
    return invert_batch(
        fn, targets, x0=x0, solver=solver, steps=steps, problem=Problem(bounds=bounds),
        execution=Execution(time_limit=time_limit, check_every=check_every),
    )  # fmt: skip


def with_steps(result: Result, steps: Any) -> Result:
    """``result`` with ``steps`` replaced (the stages report steps summed over their calls)."""
    return dataclasses.replace(result, steps=np.asarray(steps))
