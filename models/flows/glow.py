"""Glow (Kingma & Dhariwal 2018): multi-scale flow of ActNorm, invertible 1×1 conv and affine
coupling steps, with squeeze and factor-out."""

from __future__ import annotations

from flax import nnx

from models.flows.actnorm import ActNorm
from models.flows.bijector import Bijector, Inverse, positive_int
from models.flows.chain import Chain
from models.flows.conv1x1 import Conv1x1
from models.flows.coupling import check_coupling, make_coupling
from models.flows.split import SplitChannels
from models.flows.squeeze import Squeeze

#: What the last coupling of a level conditions on: the channels factored out, or those that
#: continue to the coarser levels (see :class:`Glow`).
CONDITION_ON = ("factored", "continuing")


def glow_step(
    channels: int,
    hidden: int,
    parity: int,
    *,
    coupling: str = "additive",
    lipschitz: float | None = None,
    rngs: nnx.Rngs,
) -> list[Bijector]:
    """One step of flow: ActNorm → invertible 1×1 conv → channel-mask coupling."""
    return [
        ActNorm(channels),
        Conv1x1(channels, rngs=rngs),
        make_coupling(
            coupling, channels, hidden, parity, mask="channel", lipschitz=lipschitz, rngs=rngs
        ),
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

    ``coupling``: ``'additive'`` (the default of the reference implementation, openai/glow's
    ``--flow_coupling 0``) or ``'affine'`` (the paper's other variant); ``lipschitz`` bounds
    the additive conditioners (:class:`AdditiveCoupling`).

    Float32 exactness after training (``condition_on``). By default (``'factored'``) the
    steps' parities run ``…, 1, 0`` so that the last coupling before a factor-out conditions
    on the channels that leave (parity 0: the first ``2c`` are passive) and transforms those
    that continue. In the inverse, the coarser levels' rounding error then arrives in that
    coupling's *active* half, where ``x_a = y_a − NN(y_p)`` passes it on unchanged, instead of
    in the passive half, where the trained conditioner's slope multiplies it into the other
    half as well. ``'continuing'`` is the other order (parities ``…, 0, 1``), the arrangement
    of openai/glow, whose couplings condition on the half that continues. The
    ``invertible_baselines`` experiment measures both on the segmentation task.
    """

    def __init__(
        self,
        channels: int = 1,
        hidden: int = 16,
        levels: int = 2,
        depth: int = 2,
        *,
        coupling: str = "additive",
        lipschitz: float | None = None,
        condition_on: str = "factored",
        rngs: nnx.Rngs,
    ):
        check_coupling(coupling, lipschitz)
        positive_int("levels", levels)
        positive_int("depth", depth)
        if condition_on not in CONDITION_ON:
            raise ValueError(f"condition_on must be one of {CONDITION_ON}, got {condition_on!r}")
        last = 0 if condition_on == "factored" else 1  # the last step's parity

        def level(c: int, index: int) -> Chain:
            stack: list[Bijector] = [Squeeze(c)]
            for k in range(depth):
                stack += glow_step(
                    4 * c,
                    hidden,
                    (depth - 1 - k + last) % 2,
                    coupling=coupling,
                    lipschitz=lipschitz,
                    rngs=rngs,
                )
            if index + 1 < levels:
                stack.append(SplitChannels(4 * c, 2 * c, level(2 * c, index + 1)))
            stack.append(Inverse(Squeeze(c)))
            return Chain(stack)

        super().__init__([level(positive_int("channels", channels), 0), ActNorm(channels)])
