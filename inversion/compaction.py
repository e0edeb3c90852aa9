"""Per-row compaction: rows that have reached the asked residual stop costing time.

The engine steps every row of a batch until the whole batch stops, so a row that is done
still costs a full step. Here the rows run in rounds of ``round_steps`` steps; after each
round the rows with relative residual ``||fn(x) - y|| / ||y|| <= residual_tol`` (and those the
solver stopped: stalled, stationary, diverged) leave the batch, and the next round runs only
the rest, warm-started where they stopped. The solver's state (an L-BFGS memory, say) starts
afresh at every round, so rounds should be long compared with the memory it builds.

To bound the number of compiled programs, a round's rows are padded (by repeating one of
them) to the next power of two, at most the full batch: at most ``log2(N) + 1`` shapes.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from inversion import stages
from inversion.result import CONVERGED, MAX_STEPS, Result


def bucket(n: int, total: int) -> int:
    """The padded size of a round of ``n`` rows: the next power of two, at most ``total``."""
    return min(1 << (n - 1).bit_length(), total)


def invert_compacting(
    fn: Callable[[Array], Array],
    targets: Array,
    *,
    x0: Array,
    solver,
    residual_tol: float,
    round_steps: int = 50,
    max_rounds: int = 1000,
    bounds: tuple | None = None,
    time_limit: float | None = None,
    check_every: int = 1,
) -> Result:
    """Invert ``targets`` (one per row of ``x0``) with ``solver`` in rounds of ``round_steps``
    steps, dropping the rows that are done after every round (module docstring), until no
    row is left, ``max_rounds`` rounds have run or ``time_limit`` seconds have passed.

    Returns a :class:`inversion.Result` for all rows: ``steps`` summed over a row's rounds,
    ``history`` the rounds' histories side by side (a row that left holds its final loss),
    status ``'converged'`` for the rows that reached ``residual_tol``, else the status of
    their last round.
    """
    if isinstance(residual_tol, bool) or not isinstance(residual_tol, int | float):
        raise ValueError(f"residual_tol must be a number >= 0, got {residual_tol!r}")
    if not residual_tol >= 0:
        raise ValueError(f"residual_tol must be a number >= 0, got {residual_tol!r}")
    round_steps = stages.check_positive_int("round_steps", round_steps)
    max_rounds = stages.check_positive_int("max_rounds", max_rounds)
    time_limit = stages.check_time_limit(time_limit)
    x = np.array(x0)
    y = np.asarray(targets)
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"targets has {y.shape[0]} rows, x0 has {n}; expected the same number")
    budget = stages.Budget(time_limit)
    active = np.arange(n)
    steps = np.zeros(n, np.int64)
    loss = np.full(n, np.inf)
    residual = np.full(n, np.inf)
    code = np.full(n, MAX_STEPS, np.int32)
    histories: list[np.ndarray] = []
    for _ in range(max_rounds):
        if active.size == 0 or budget.spent():
            break
        size = bucket(active.size, n)
        rows = np.concatenate([active, np.repeat(active[-1:], size - active.size)])
        out = stages.run(
            fn, jnp.asarray(y[rows]), x0=jnp.asarray(x[rows]), solver=solver,
            steps=round_steps, bounds=bounds, time_limit=budget.left(),
            check_every=check_every,
        )  # fmt: skip
        k = active.size
        x[active] = np.asarray(out.x)[:k]
        steps[active] += np.asarray(out.steps)[:k]
        loss[active] = np.asarray(out.loss)[:k]
        residual[active] = np.asarray(out.residual)[:k]
        code[active] = np.asarray(out.status_code)[:k]
        history = np.repeat(loss[:, None], round_steps, axis=1)
        history[active] = np.asarray(out.history)[:k]
        histories.append(history)
        reached = residual[active] <= residual_tol
        code[active[reached]] = CONVERGED
        active = active[~reached & (code[active] == MAX_STEPS)]
    history = np.concatenate(histories, axis=1) if histories else np.zeros((n, 0))
    return Result(
        x=jnp.asarray(x),
        history=jnp.asarray(history, x.dtype),
        loss=jnp.asarray(loss, x.dtype),
        residual=jnp.asarray(residual, x.dtype),
        steps=jnp.asarray(steps, jnp.int32),
        status_code=jnp.asarray(code, jnp.int32),
    )
