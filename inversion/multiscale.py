"""Coarse-to-fine starts: solve for a coarse image first, then for the full one from it.

With ``U`` the nearest-neighbour upsampling by ``factor`` (each coarse pixel copied into a
``factor x factor`` block of the ``(H, W, ...)`` input) and ``D`` its pseudo-inverse, the
block mean (``U^T U = factor^2 I``, so ``D = U^T / factor^2``), the coarse stage minimises

    J(U z) = L(fn(U z), y)    over z of shape (H / factor, W / factor, ...), from z0 = D x0,

and the fine stage minimises ``J(x)`` from ``x = U z``. ``U`` copies values, so it maps the
box ``lo <= z <= hi`` onto the box of ``x`` and the coarse stage keeps the same scalar bounds.
The coarse problem has ``factor^2`` times fewer unknowns and keeps the directions of ``x``
that vary slowly (``fn``'s large singular directions for a smoothing network), so its
minimiser is a start whose low frequencies are already fitted (DeepInversion's half-resolution
warm-up; here ``fn`` still runs at full resolution, so a coarse step costs as much as a fine
one and the gain is conditioning only).

For ``fn = identity`` the coarse minimiser is ``z = D y`` (the least-squares projection onto
the range of ``U``), a closed form the tests use.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from inversion import stages
from inversion.result import Result


def upsample(z: Array, factor: int) -> Array:
    """``U z``: every entry of ``z`` (one input, axes 0 and 1 spatial) copied into a
    ``factor x factor`` block."""
    return jnp.repeat(jnp.repeat(z, factor, axis=0), factor, axis=1)


def downsample(x: Array, factor: int) -> Array:
    """``D x``: the mean of every ``factor x factor`` block of axes 0 and 1 (``D U = I``)."""
    h, w = x.shape[0] // factor, x.shape[1] // factor
    blocks = x.reshape(h, factor, w, factor, *x.shape[2:])
    return blocks.mean(axis=(1, 3))


def coarse_to_fine(
    fn: Callable[[Array], Array],
    targets: Array,
    *,
    x0: Array,
    solver,
    steps: int,
    factor: int = 2,
    coarse_steps: int | None = None,
    coarse_time: float = 0.3,
    fine_solver=None,
    bounds: tuple[float, float] | None = None,
    time_limit: float | None = None,
    check_every: int = 1,
) -> Result:
    """Invert ``targets`` (one per row of ``x0``) in two stages: ``solver`` on the coarse
    problem ``J(U z)`` (module docstring) from ``D x0``, then ``fine_solver`` (default
    ``solver``) on ``J(x)`` from ``U z``.

    The coarse stage runs at most ``coarse_steps`` steps (default ``steps``) and, with a
    ``time_limit``, at most ``coarse_time`` of it; the fine stage runs ``steps`` steps within
    what is left. Returns the fine stage's :class:`inversion.Result` with ``steps`` summed
    over both stages. ``x0`` has shape ``(N, H, W, ...)`` with ``H`` and ``W`` divisible by
    ``factor``; ``bounds`` is ``None`` or a pair of numbers.
    """
    factor = stages.check_positive_int("factor", factor)
    steps = stages.check_positive_int("steps", steps)
    coarse_steps = steps if coarse_steps is None else coarse_steps
    coarse_steps = stages.check_positive_int("coarse_steps", coarse_steps)
    coarse_time = stages.check_fraction("coarse_time", coarse_time, open_high=True)
    time_limit = stages.check_time_limit(time_limit)
    x0 = jnp.asarray(x0)
    if x0.ndim < 3 or x0.shape[1] % factor or x0.shape[2] % factor:
        raise ValueError(
            f"x0 must have shape (N, H, W, ...) with H and W divisible by factor={factor}, "
            f"got {x0.shape}"
        )
    if bounds is not None and not all(
        isinstance(b, int | float) and not isinstance(b, bool) for b in bounds
    ):
        raise ValueError(f"bounds must be None or a pair of numbers (lo, hi), got {bounds!r}")
    budget = stages.Budget(time_limit)
    z0 = jax.vmap(lambda x: downsample(x, factor))(x0)
    coarse = stages.run(
        lambda z: fn(upsample(z, factor)), targets, x0=z0, solver=solver,
        steps=coarse_steps, bounds=bounds, time_limit=budget.share(coarse_time),
        check_every=check_every,
    )  # fmt: skip
    x1 = jax.vmap(lambda z: upsample(z, factor))(coarse.x)
    fine = stages.run(
        fn, targets, x0=x1, solver=solver if fine_solver is None else fine_solver,
        steps=steps, bounds=bounds, time_limit=budget.left(), check_every=check_every,
    )  # fmt: skip
    return stages.with_steps(fine, np.asarray(coarse.steps) + np.asarray(fine.steps))
