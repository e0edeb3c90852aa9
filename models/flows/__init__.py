"""Invertible flows, one bijector a file (see :mod:`models.flows.bijector` for the convention).

Bijectors: :class:`Bijector` (base), :class:`Inverse`, :class:`Chain`, :class:`AffineCoupling`
(checkerboard and channel masks), :class:`AdditiveCoupling` (optionally with a certified
Lipschitz bound on its conditioner), :class:`ActNorm` (data-dependent
init), :class:`Conv1x1` (LU), :class:`Squeeze`, :class:`HaarDownsampling`,
:class:`SplitChannels` (factor-out / skip) and :class:`IResNetBlock` (fixed-point inverse;
:func:`fixed_point_errors` measures its convergence against the a-priori bound).

Networks built from them, each mapping an image to an image of the same shape:
:class:`Flow` (RealNVP), :class:`Glow`, :class:`IRevNet`, :class:`IResNet` and
:class:`InvertibleUNet` (``Glow`` and ``InvertibleUNet`` take ``coupling='additive'``, their
default, or ``'affine'``).

A trained network's float32 inverse is only as exact as its conditioning allows: train with
``models.TrainConfig(inverse_penalty=...)`` to keep it well conditioned (see the
``invertible_baselines`` experiment).
"""

from models.flows.actnorm import ActNorm
from models.flows.additive_coupling import AdditiveCoupling
from models.flows.affine_coupling import AffineCoupling
from models.flows.bijector import Bijector, Inverse
from models.flows.chain import Chain
from models.flows.conv1x1 import Conv1x1
from models.flows.glow import Glow
from models.flows.haar import HaarDownsampling
from models.flows.iresnet import IResNet, IResNetBlock, fixed_point_errors
from models.flows.irevnet import IRevNet
from models.flows.iunet import InvertibleUNet
from models.flows.realnvp import Flow
from models.flows.split import SplitChannels
from models.flows.squeeze import Squeeze

#: The invertible networks, by class name.
NETWORKS = ("Flow", "Glow", "IRevNet", "IResNet", "InvertibleUNet")

__all__ = [
    "NETWORKS",
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "Bijector",
    "Chain",
    "Conv1x1",
    "Flow",
    "Glow",
    "HaarDownsampling",
    "IResNet",
    "IResNetBlock",
    "IRevNet",
    "Inverse",
    "InvertibleUNet",
    "SplitChannels",
    "Squeeze",
    "fixed_point_errors",
]
