"""Invertible residual networks (i-ResNet, Behrmann et al. 2019): a contractive residual block
inverted by fixed-point iteration, and the network of such blocks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models import layers
from models.flows.actnorm import ActNorm
from models.flows.bijector import Bijector, positive_int
from models.flows.chain import Chain
from models.flows.conditioner import Conv, conv_lipschitz_bound, normalized_kernel


class IResNetBlock(Bijector):
    """``y = x + g(x)`` with ``Lip(g) ≤ L < 1`` (``L = lipschitz``); the identity at init.

    ``g = conv₂ ∘ ELU ∘ conv₁`` (3×3 'SAME' convs, ``channels → hidden → channels``; ``conv₂``
    zero at init). Spectral normalisation: each kernel ``K`` is used as
    ``K · min(1, √L / b(K))`` with ``b`` the rigorous bound :func:`conv_lipschitz_bound`, so
    ``Lip(convᵢ) ≤ √L``, ``Lip(ELU) = 1`` and ``Lip(g) ≤ L_g := Πᵢ min(√L, b(Kᵢ)) ≤ L``
    (:meth:`lipschitz_bound`; the biases do not count).

    Inverse: ``x* = y − g(x*)`` is the fixed point of the contraction ``T(x) = y − g(x)``;
    :attr:`iterations` steps ``x_{k+1} = T(x_k)`` from ``x_0 = y`` give (Banach, a priori)

        ‖x_k − x*‖ ≤ L_g^k / (1 − L_g) · ‖x_1 − x_0‖,    ‖x_1 − x_0‖ = ‖g(y)‖,

    per image; in float32 the iterates stall at the rounding of one ``T`` step, about
    ``eps32·(‖y‖ + ‖g‖)/(1 − L_g)`` (:meth:`fixed_point`, :meth:`inverse_error_bound`).

    Log-det: ``log det(I + J_g) = Σ_{k ≥ 1} (−1)^{k+1} tr(J_g^k)/k`` (det > 0 since every
    eigenvalue of ``I + J_g`` has real part ≥ 1 − L_g > 0), truncated after ``n = log_det_terms``
    terms; ``|tr(J_g^k)| ≤ d·L_g^k`` (``d`` entries per image) bounds the truncation error by
    ``d·L_g^{n+1} / ((n + 1)(1 − L_g))``. The traces are exact, from the dense ``d × d``
    Jacobian of ``g`` (``d`` forward-mode products, then ``n`` matrix products: O(n d³), for
    small images; Behrmann et al. estimate them stochastically instead). The inverse log-det
    is minus the forward one at the computed ``x``.

    A NaN or inf entry spreads through ``g`` to the 5×5 neighbourhood in the forward; in the
    inverse each iteration widens it by 2 pixels, so it covers the image (not checked here).
    """

    def __init__(
        self,
        channels: int,
        hidden: int,
        *,
        lipschitz: float = 0.9,
        iterations: int = 50,
        log_det_terms: int = 10,
        rngs: nnx.Rngs,
    ):
        self.channels = self.out_channels = positive_int("channels", channels)
        positive_int("hidden", hidden)
        if not (isinstance(lipschitz, float | int) and 0 < lipschitz < 1):
            raise ValueError(f"lipschitz must be in (0, 1), got {lipschitz!r}")
        self.lipschitz = float(lipschitz)
        self.iterations = positive_int("iterations", iterations)
        self.log_det_terms = positive_int("log_det_terms", log_det_terms)
        self.conv1 = Conv(channels, hidden, rngs=rngs)
        self.conv2 = Conv(hidden, channels, zero=True, rngs=rngs)

    def _kernels(self):
        coeff = math.sqrt(self.lipschitz)
        return [
            (normalized_kernel(c.kernel[...], coeff), c.bias[...]) for c in (self.conv1, self.conv2)
        ]

    def lipschitz_bound(self):
        """``L_g = Πᵢ min(√L, b(Kᵢ)) ≤ L``: the certified Lipschitz constant of ``g``."""
        coeff = math.sqrt(self.lipschitz)
        bounds = [conv_lipschitz_bound(c.kernel[...]) for c in (self.conv1, self.conv2)]
        return jnp.minimum(coeff, bounds[0]) * jnp.minimum(coeff, bounds[1])

    def residual(self, x):
        """``g(x)`` on a batch ``(b, h, w, c)``."""
        (k1, b1), (k2, b2) = self._kernels()
        return layers.conv2d(jax.nn.elu(layers.conv2d(x, k1, b1)), k2, b2)

    def fixed_point(self, y, iterations: int | None = None):
        """``x_k`` after ``k = iterations`` (default :attr:`iterations`) steps of
        ``x ← y − g(x)`` from ``x_0 = y``, on a batch."""
        k = self.iterations if iterations is None else iterations
        return jax.lax.fori_loop(0, k, lambda _, x: y - self.residual(x), y)

    def inverse_error_bound(self, y, iterations: int | None = None):
        """The a-priori bound ``L_g^k / (1 − L_g) · ‖g(y)‖`` on ``‖x_k − x*‖`` per image."""
        k = self.iterations if iterations is None else iterations
        lip = self.lipschitz_bound()
        step = jnp.sqrt(jnp.sum(self.residual(y) ** 2, axis=(1, 2, 3)))
        return lip**k / (1 - lip) * step

    def _log_det(self, x):
        terms = self.log_det_terms

        def one(xi):  # one image (h, w, c) -> log det(I + J_g)
            shape = xi.shape
            flat = lambda v: self.residual(v.reshape(1, *shape)).reshape(-1)  # noqa: E731
            jac = jax.jacfwd(flat)(xi.reshape(-1))
            total, power = jnp.zeros((), x.dtype), jac
            for k in range(1, terms + 1):
                total = total + (-1) ** (k + 1) * jnp.trace(power) / k
                if k < terms:
                    power = power @ jac
            return total

        return jax.vmap(one)(x)

    def _forward(self, x):
        return x + self.residual(x)

    def _inverse(self, y):
        return self.fixed_point(y)

    def _forward_and_log_det(self, x):
        return self._forward(x), self._log_det(x)

    def _inverse_and_log_det(self, y):
        x = self._inverse(y)
        return x, -self._log_det(x)


class IResNet(Chain):
    """``blocks`` i-ResNet blocks at full resolution, each after an :class:`ActNorm`, and a
    last ActNorm (the logit scale): ``[ActNorm, IResNetBlock] × blocks + [ActNorm]``.

    Every block is contractive in its residual (``Lip(g) ≤ lipschitz``); the network's inverse
    runs each block's fixed-point iteration (:class:`IResNetBlock`), ActNorms exactly.
    """

    def __init__(
        self,
        channels: int = 1,
        hidden: int = 16,
        blocks: int = 4,
        *,
        lipschitz: float = 0.9,
        iterations: int = 50,
        log_det_terms: int = 10,
        rngs: nnx.Rngs,
    ):
        positive_int("blocks", blocks)
        stack: list[Bijector] = []
        for _ in range(blocks):
            stack.append(ActNorm(channels))
            stack.append(
                IResNetBlock(
                    channels,
                    hidden,
                    lipschitz=lipschitz,
                    iterations=iterations,
                    log_det_terms=log_det_terms,
                    rngs=rngs,
                )
            )
        stack.append(ActNorm(channels))
        super().__init__(stack)

    @property
    def blocks(self) -> list[IResNetBlock]:
        """The residual blocks, in forward order."""
        return [b for b in self.layers if isinstance(b, IResNetBlock)]


def fixed_point_errors(model: IResNet, x, iterations: int) -> list[dict]:
    """How each block's fixed-point inverse converges on the batch ``x`` against its bound.

    For every :class:`IResNetBlock` of ``model`` (in forward order), with ``x*`` the block's
    true input on ``x`` and ``y = x* + g(x*)`` its output, the iterates ``x_{k+1} = y − g(x_k)``
    from ``x_0 = y`` are compared with the a-priori (Banach) bound for ``k = 0 … iterations``:

        ‖x_k − x*‖ ≤ L_g^k / (1 − L_g) · ‖g(y)‖      (per image; ``L_g``: lipschitz_bound()).

    In float32 the iterates stall at about ``eps32·(‖y‖ + ‖g(y)‖)/(1 − L_g)``; ``float32_floor``
    is 10 times that (the convolutions' accumulated rounding), and ``below_bound`` says whether
    every image's error at every ``k`` is within ``bound + float32_floor``.

    Returns one dict per block: ``lipschitz_bound`` (``L_g``), ``error`` and ``bound`` (the
    medians over the images, length ``iterations + 1``), ``float32_floor`` (the median floor)
    and ``below_bound``.
    """
    if not isinstance(model, IResNet):
        raise TypeError(f"model must be a models.flows.IResNet, got {type(model).__name__}")
    positive_int("iterations", iterations)
    rows = []
    h = x
    for layer in model.layers:
        if isinstance(layer, IResNetBlock):
            y = layer.forward(h)

            def step(xk, _, y=y, layer=layer, target=h):
                err = jnp.sqrt(jnp.sum((xk - target) ** 2, axis=(1, 2, 3)))
                return y - layer.residual(xk), err

            _, errs = jax.jit(lambda y, step=step: jax.lax.scan(step, y, None, iterations + 1))(y)
            lip = float(layer.lipschitz_bound())
            first = np.asarray(jnp.sqrt(jnp.sum(layer.residual(y) ** 2, axis=(1, 2, 3))))
            ks = np.arange(iterations + 1)
            bound = lip ** ks[:, None] / (1 - lip) * first[None, :]
            # float32: each step rounds at ~eps32 (|y| + |g|), so the iterates stall within
            # that over (1 - L) of x*; 10x for the conv sums' accumulated rounding
            size = np.asarray(jnp.sqrt(jnp.sum(y**2, axis=(1, 2, 3)))) + first
            floor = 10 * float(jnp.finfo(jnp.float32).eps) * size / (1 - lip)
            rows.append(
                {
                    "lipschitz_bound": lip,
                    "error": np.median(np.asarray(errs), axis=1),
                    "bound": np.median(bound, axis=1),
                    "float32_floor": float(np.median(floor)),
                    "below_bound": bool(np.all(np.asarray(errs) <= bound + floor[None, :])),
                }
            )
        h = layer.forward(h)
    return rows
