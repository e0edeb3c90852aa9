"""Glow (Kingma & Dhariwal 2018): multi-scale flow of ActNorm, invertible 1×1 conv and affine
coupling steps, with squeeze and factor-out."""

from __future__ import annotations

from flax import nnx

from models.flows.actnorm import ActNorm
from models.flows.affine_coupling import AffineCoupling
from models.flows.bijector import Bijector, Inverse, positive_int
from models.flows.chain import Chain
from models.flows.conv1x1 import Conv1x1
from models.flows.split import SplitChannels
from models.flows.squeeze import Squeeze


def glow_step(channels: int, hidden: int, parity: int, *, rngs: nnx.Rngs) -> list[Bijector]:
    """One step of flow: ActNorm → invertible 1×1 conv → channel-mask affine coupling."""
    return [
        ActNorm(channels),
        Conv1x1(channels, rngs=rngs),
        AffineCoupling(channels, hidden, parity, mask="channel", rngs=rngs),
    ]


class Glow(Chain):
    """Multi-scale Glow whose output has the input's shape (so it can serve as mask logits).

    Level ``l`` on ``c`` channels: squeeze (``c → 4c``, half the size), ``depth`` steps of
    flow (:func:`glow_step`), then, except at the last level, factor-out: the first ``2c``
    channels leave (:class:`SplitChannels`) and the other ``2c`` go through level ``l + 1``;
    then depth-to-space back to ``c`` channels. For ``levels = 2``, ``c = 1``:

        32²×1 → squeeze → 16²×4 → K steps → (2 kept, 2 → squeeze → 8²×8 → K steps → unsqueeze)
              → unsqueeze → 32²×1 → ActNorm (the logit scale)

    The log-det is the sum of the steps' (squeezes and splits add 0). Height and width must
    be divisible by ``2**levels``. Not the identity at init (the 1×1 convs start as random
    rotations), but volume-preserving there.
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
        positive_int("levels", levels)
        positive_int("depth", depth)

        def level(c: int, index: int) -> Chain:
            stack: list[Bijector] = [Squeeze(c)]
            for k in range(depth):
                stack += glow_step(4 * c, hidden, k % 2, rngs=rngs)
            if index + 1 < levels:
                stack.append(SplitChannels(4 * c, 2 * c, level(2 * c, index + 1)))
            stack.append(Inverse(Squeeze(c)))
            return Chain(stack)

        super().__init__([level(positive_int("channels", channels), 0), ActNorm(channels)])
