"""Relative condition number of the inverse of an invertible map, from its float64 certificate.

For an invertible ``f`` with ``y = f(x)``, a perturbation ``δy`` of ``y`` moves ``f⁻¹(y)`` by
``J_f(x)⁻¹ δy`` to first order, so the relative condition number of the inverse at ``y`` is

    κ = ‖J_{f⁻¹}(y)‖₂ · ‖y‖ / ‖x‖ = ‖y‖ / (σ_min(J_f(x)) · ‖x‖),

with ``σ_min`` from :func:`inversion.analysis.certify` (float64 Jacobian). A relative
perturbation ``ρ`` of ``y`` moves ``f⁻¹(y)`` by up to ``κ·ρ`` relative, so storing ``y`` in
float32 (``ρ ≤ u = 2⁻²⁴`` per entry) already costs up to ``κ·u``: no float32 inverse, however
it is computed, can be trusted below that.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jaxtyping import Array, Float

from inversion.analysis.certificate import certify_batch

__all__ = ["inverse_condition"]


def inverse_condition(
    fn: Callable[[Array], Array],
    xs: Float[Array, "b ..."],
    *,
    ys: Float[Array, "b ..."] | None = None,
) -> Float[np.ndarray, " b"]:
    """κ (see the module docstring) of ``fn``'s inverse at each row ``xs[i]``.

    ``fn`` maps one input to one output (as for :func:`~inversion.analysis.certify_batch`).
    ``ys``: the outputs ``fn(xs[i])`` stacked, when the caller already has them (e.g. from a
    batched forward pass); default ``jax.vmap(fn)(xs)``. ``σ_min = 0`` (a singular Jacobian)
    gives ``inf``; an all-zero input, whose relative error is undefined, is refused.

    >>> import jax.numpy as jnp
    >>> # ‖y‖ = ‖(2, 0.5)‖ = 2.0616, σ_min = 0.5, ‖x‖ = √2: κ = 2.0616 / 0.7071
    >>> inverse_condition(lambda x: jnp.array([2.0, 0.5]) * x, jnp.ones((1, 2))).round(6)
    array([2.915476])
    """
    certificates = certify_batch(fn, xs)
    b = len(certificates)
    x = np.asarray(xs, np.float64).reshape(b, -1)
    y = np.asarray(jax.vmap(fn)(xs) if ys is None else ys, np.float64).reshape(b, -1)
    x_norm = np.linalg.norm(x, axis=1)
    if np.any(x_norm == 0):
        raise ValueError(
            f"xs rows {np.nonzero(x_norm == 0)[0].tolist()} are zero: the relative condition "
            "number ‖y‖/(σ_min ‖x‖) needs x ≠ 0"
        )
    sigma_min = np.array([c.sigma_min for c in certificates])
    with np.errstate(divide="ignore"):
        return np.linalg.norm(y, axis=1) / (sigma_min * x_norm)
