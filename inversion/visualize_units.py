"""What a feature visualisation optimises: linear read-outs of a layer, and a goal for each.

Every selection is a stack of ``k`` linear functionals of one activation ``a = fn(x)``,
``s_r(a) = <W_r, a>`` for ``r = 1..k``, built for the activation's shape by :meth:`Units.weights`
(so ``k`` visualisations are one ``vmap`` over the rows of ``W``, one compiled program):

* :func:`units`: one entry, ``s = a[i]`` (``i`` a full index into the activation);
* :func:`channels`: the mean of channel ``c`` over all positions, ``s = mean_p a[p, c]``;
* :func:`positions`: the mean over channels at one spatial position, ``s = mean_c a[y, x, c]``;
* :func:`directions`: the mean over positions of ``<v, a[p, :]>`` (a direction ``v`` in
  channel space; Olah et al. 2017);
* :func:`weights`: any ``W`` of shape ``(k, *activation_shape)``.

The goal (the loss minimised per image, with ``s = s_r(fn(x))``):

* ``'max'``: ``−s``; ``'min'``: ``s``; ``'value'``: ``(s − v)²`` (drive ``s`` to ``v``);
* ``'below'`` (shut the unit down with the least change of a reference input ``x₀``):
  ``½‖x − x₀‖² + (μ/2)·relu(s − v + δ)²`` (``μ = penalty``, ``δ = margin``). For a linear ``s
  = wᵀx + b`` with ``s(x₀) > v`` its minimiser is ``x₀ − τ w`` with ``τ = μ(s(x₀) − v + δ) / (1 +
  μ‖w‖²)``: the Euclidean projection of ``x₀`` onto the half-space ``{s ≤ v − δ}`` up to a
  relative ``1/(1 + μ‖w‖²)``, and ``s ≤ v`` there whenever ``μ‖w‖²δ ≥ s(x₀) − v``.

>>> import numpy as np
>>> channels([0, 2]).weights((2, 2, 3))[1, ..., 2]
array([[0.25, 0.25],
       [0.25, 0.25]], dtype=float32)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = ["GOALS", "Units", "channels", "directions", "positions", "units", "weights"]

GOALS = ("max", "min", "value", "below")
KINDS = ("unit", "channel", "position", "direction", "weights")


@dataclasses.dataclass(frozen=True, eq=False)
class Units:
    """``k`` linear read-outs of an activation and the goal for each (module docstring)."""

    kind: str
    index: Any  # per kind: full indices, channels, (y, x) pairs, direction vectors, W
    goal: str = "max"
    value: float = 0.0
    penalty: float = 1e4
    margin: float = 1e-3

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.goal not in GOALS:
            raise ValueError(f"goal must be one of {GOALS}, got {self.goal!r}")
        for name in ("value", "penalty", "margin"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if self.penalty <= 0 or self.margin < 0:
            raise ValueError(
                f"penalty must be > 0 and margin >= 0, got {self.penalty!r} and {self.margin!r}"
            )
        if len(self) == 0:
            raise ValueError(f"no {self.kind}s selected: index is empty")

    def __len__(self) -> int:
        return len(self.index)

    def weights(self, shape: tuple[int, ...]) -> np.ndarray:
        """``W`` of shape ``(k, *shape)`` (float32) for an activation of ``shape``;
        ``ValueError`` naming the bad index when one does not fit."""
        shape = tuple(int(s) for s in shape)
        k = len(self)
        if self.kind == "weights":
            w = np.asarray(self.index, np.float32)
            if w.shape[1:] != shape:
                raise ValueError(
                    f"weights must have shape (k, *activation_shape) = (k, {shape}), got {w.shape}"
                )
            return w
        w = np.zeros((k, *shape), np.float32)
        if self.kind == "unit":
            for r, i in enumerate(self.index):
                i = tuple(np.atleast_1d(i).tolist())
                if len(i) != len(shape) or not all(
                    -n <= j < n for j, n in zip(i, shape, strict=True)
                ):
                    raise ValueError(f"unit index {i} does not fit an activation of shape {shape}")
                w[(r, *i)] = 1.0
            return w
        if len(shape) < 2:
            raise ValueError(f"{self.kind}s need an activation (..., C), got shape {shape}")
        c_count, spatial = shape[-1], shape[:-1]
        n_pos = int(np.prod(spatial))
        if self.kind == "channel":
            for r, c in enumerate(self.index):
                if not -c_count <= int(c) < c_count:
                    raise ValueError(f"channel {c} out of range for {c_count} channels ({shape})")
                w[r, ..., int(c)] = 1.0 / n_pos
            return w
        if self.kind == "position":
            for r, p in enumerate(self.index):
                p = tuple(np.atleast_1d(p).tolist())
                if len(p) != len(spatial) or not all(
                    -n <= j < n for j, n in zip(p, spatial, strict=True)
                ):
                    raise ValueError(f"position {p} does not fit the spatial shape {spatial}")
                w[(r, *p)] = 1.0 / c_count
            return w
        v = np.asarray(self.index, np.float32)  # directions (k, C)
        if v.ndim != 2 or v.shape[1] != c_count:
            raise ValueError(f"directions must have shape (k, {c_count}), got {v.shape}")
        return np.broadcast_to(v.reshape(k, *([1] * len(spatial)), c_count) / n_pos, w.shape).copy()


def _goal_kw(goal, value, penalty, margin) -> dict:
    return dict(goal=goal, value=value, penalty=penalty, margin=margin)


def units(indices, *, goal="max", value=0.0, penalty=1e4, margin=1e-3) -> Units:
    """Single entries ``a[i]`` (each ``i`` a full index, or an int for a flat activation)."""
    return Units("unit", tuple(indices), **_goal_kw(goal, value, penalty, margin))


def channels(indices, *, goal="max", value=0.0, penalty=1e4, margin=1e-3) -> Units:
    """Channel means ``mean_p a[p, c]`` for each ``c`` in ``indices``."""
    return Units(
        "channel", tuple(int(c) for c in indices), **_goal_kw(goal, value, penalty, margin)
    )


def positions(indices, *, goal="max", value=0.0, penalty=1e4, margin=1e-3) -> Units:
    """Channel means ``mean_c a[y, x, c]`` at each spatial position ``(y, x)``."""
    return Units("position", tuple(indices), **_goal_kw(goal, value, penalty, margin))


def directions(vectors, *, goal="max", value=0.0, penalty=1e4, margin=1e-3) -> Units:
    """``mean_p <v, a[p, :]>`` for each row ``v`` of ``vectors`` (k, C)."""
    return Units(
        "direction", np.asarray(vectors, np.float32), **_goal_kw(goal, value, penalty, margin)
    )


def weights(w, *, goal="max", value=0.0, penalty=1e4, margin=1e-3) -> Units:
    """Any linear read-outs ``<W_r, a>``: ``w`` of shape ``(k, *activation_shape)``."""
    return Units("weights", np.asarray(w, np.float32), **_goal_kw(goal, value, penalty, margin))
