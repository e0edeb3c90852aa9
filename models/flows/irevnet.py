"""The bijective i-RevNet (Jacobsen et al. 2018): invertible downsampling and additive
couplings, no information discarded anywhere."""

from __future__ import annotations

from flax import nnx

from models.flows.actnorm import ActNorm
from models.flows.additive_coupling import AdditiveCoupling
from models.flows.bijector import Bijector, Inverse, positive_int
from models.flows.chain import Chain
from models.flows.haar import HaarDownsampling


class IRevNet(Chain):
    """``levels`` stages, each an invertible Haar downsampling (``c → 4c`` channels, half the
    size) followed by ``depth`` additive couplings with channel masks of alternating parity
    (the i-RevNet block: ``y_a = x_a + F(x_p)``, the halves swapping roles from block to
    block); then the inverse downsamplings bring the result back to the input's shape, and an
    ActNorm sets the logit scale:

        [Haar(c), K × AdditiveCoupling(4c), Haar(4c), K × AdditiveCoupling(16c), …,
         Haar⁻¹(4c), Haar⁻¹(c), ActNorm(c)]

    Volume-preserving except for the last ActNorm; the identity at init up to the Haar
    transforms, which cancel (``Haar⁻¹ ∘ Haar = I``): a fresh IRevNet is the identity.
    Height and width must be divisible by ``2**levels``.
    """

    def __init__(
        self,
        channels: int = 1,
        hidden: int = 16,
        levels: int = 2,
        depth: int = 2,
        *,
        rngs: nnx.Rngs,
    ):
        c = positive_int("channels", channels)
        positive_int("levels", levels)
        positive_int("depth", depth)
        stack: list[Bijector] = []
        widths = []
        for _ in range(levels):
            stack.append(HaarDownsampling(c))
            widths.append(c)
            c *= 4
            stack += [
                AdditiveCoupling(c, hidden, k % 2, mask="channel", rngs=rngs) for k in range(depth)
            ]
        stack += [Inverse(HaarDownsampling(w)) for w in reversed(widths)]
        stack.append(ActNorm(channels))
        super().__init__(stack)
