"""RealNVP stack of checkerboard affine couplings (the ``alternatives`` experiment's flow)."""

from __future__ import annotations

from flax import nnx

from models.flows.actnorm import ActNorm
from models.flows.affine_coupling import AffineCoupling
from models.flows.bijector import Bijector, positive_int
from models.flows.chain import Chain


class Flow(Chain):
    """RealNVP (Dinh et al. 2017): ``couplings`` checkerboard :class:`AffineCoupling` layers of
    parity 0, 1, 0, …, each followed by an :class:`ActNorm` when ``actnorm`` is true; the
    identity at init. ``layers`` holds them in forward order; ``log_prob(x)`` is
    ``log N(f(x); 0, I) + log|det ∂f/∂x|``.

    Non-finite input: every coupling spreads a NaN or inf entry over a 7×7 neighbourhood, so a
    single NaN pixel would make the whole sample and its log-det non-finite; the public methods
    raise ``ValueError`` for a concrete input with a NaN or inf entry (under ``jax.jit``/``grad``
    there is no check and NaN propagates as described).
    """

    def __init__(
        self,
        channels: int = 1,
        hidden: int = 16,
        couplings: int = 4,
        *,
        actnorm: bool = True,
        rngs: nnx.Rngs,
    ):
        positive_int("channels", channels)
        positive_int("couplings", couplings)
        stack: list[Bijector] = []
        for k in range(couplings):
            stack.append(AffineCoupling(channels, hidden, k % 2, rngs=rngs))
            if actnorm:
                stack.append(ActNorm(channels))
        super().__init__(stack)
