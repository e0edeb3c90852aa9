"""Choosing a coupling by name: ``'affine'`` (:class:`AffineCoupling`) or ``'additive'``
(:class:`AdditiveCoupling`, optionally Lipschitz-bounded), for the networks that offer both."""

from __future__ import annotations

from flax import nnx

from models.flows.additive_coupling import AdditiveCoupling
from models.flows.affine_coupling import AffineCoupling
from models.flows.bijector import Bijector

COUPLINGS = ("affine", "additive")


def check_coupling(coupling: str, lipschitz: float | None = None) -> str:
    """``coupling`` if it names a coupling (and ``lipschitz`` is ``None`` unless it is
    additive: an affine coupling's scale multiplies its input, so a bound on its conditioner
    would bound nothing), else ``ValueError``."""
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
    if lipschitz is not None and coupling != "additive":
        raise ValueError(
            f"lipschitz={lipschitz!r} needs coupling='additive' (got coupling={coupling!r})"
        )
    return coupling


def make_coupling(
    coupling: str,
    channels: int,
    hidden: int,
    parity: int,
    *,
    mask: str,
    lipschitz: float | None = None,
    rngs: nnx.Rngs,
) -> Bijector:
    """A ``coupling`` layer on ``channels`` channels with the given mask and parity."""
    check_coupling(coupling, lipschitz)
    if coupling == "additive":
        return AdditiveCoupling(channels, hidden, parity, mask=mask, lipschitz=lipschitz, rngs=rngs)
    return AffineCoupling(channels, hidden, parity, mask=mask, rngs=rngs)
