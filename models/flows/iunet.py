"""A fully invertible U-Net in the spirit of iUNets (Etmann et al. 2020)."""

from __future__ import annotations

from flax import nnx

from models.flows.actnorm import ActNorm
from models.flows.bijector import Bijector, Inverse, positive_int
from models.flows.chain import Chain
from models.flows.coupling import check_coupling, make_coupling
from models.flows.haar import HaarDownsampling
from models.flows.split import SplitChannels


class InvertibleUNet(Chain):
    """Invertible U-Net: couplings at every level on the way down and on the way up, orthogonal
    Haar down- and upsampling, and channel splits as the skip connections.

    With ``C(c)`` = ``depth`` couplings on ``c`` channels (checkerboard masks at full
    resolution, where ``c`` may be 1; channel masks below) and ``H(c)`` the Haar downsampling:

        level(c, l) = [H(c), C(4c), Skip(keep 2c, level(2c, l + 1)), C(4c), H⁻¹(c)]
        network     = [C(c), level(c, 0), C(c), ActNorm(c)]

    where the bottom level has no Skip, and ``Skip`` (:class:`SplitChannels`) holds the first
    ``2c`` channels aside (the skip path) while the other ``2c`` go down a level and come back
    at the same size: the decoder couplings ``C(4c)`` then see both, as a U-Net's decoder sees
    the concatenation of skip and upsampled features. Nothing is discarded, so the inverse is
    exact by construction. The identity at init (couplings zero, Haar cancelled by Haar⁻¹).
    Height and width must be divisible by ``2**levels``.

    ``coupling``: ``'additive'`` (the default, as in iUNets, whose building blocks are additive
    couplings) or ``'affine'``; ``lipschitz`` bounds the additive conditioners. The couplings'
    parities run ``…, 1, 0``, so the last coupling before a Skip conditions on the channels
    held aside and transforms those that go down (see :class:`Glow` for why that keeps the
    trained float32 inverse exact).
    """

    def __init__(
        self,
        channels: int = 1,
        hidden: int = 16,
        levels: int = 2,
        depth: int = 1,
        *,
        coupling: str = "additive",
        lipschitz: float | None = None,
        rngs: nnx.Rngs,
    ):
        check_coupling(coupling, lipschitz)
        c0 = positive_int("channels", channels)
        positive_int("levels", levels)
        positive_int("depth", depth)

        def couplings(c: int) -> list[Bijector]:
            mask = "checkerboard" if c == c0 else "channel"
            return [
                make_coupling(
                    coupling,
                    c,
                    hidden,
                    (depth - 1 - k) % 2,
                    mask=mask,
                    lipschitz=lipschitz,
                    rngs=rngs,
                )
                for k in range(depth)
            ]

        def level(c: int, index: int) -> Chain:
            stack: list[Bijector] = [HaarDownsampling(c), *couplings(4 * c)]
            if index + 1 < levels:
                stack.append(SplitChannels(4 * c, 2 * c, level(2 * c, index + 1)))
                stack += couplings(4 * c)
            stack.append(Inverse(HaarDownsampling(c)))
            return Chain(stack)

        down = couplings(c0)
        middle = level(c0, 0)
        up = couplings(c0)
        super().__init__([*down, middle, *up, ActNorm(c0)])
