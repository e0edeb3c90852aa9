"""The conditioner network of the couplings (three 3×3 'SAME' convs, ReLU between) and the
Lipschitz bound of a convolution that spectral normalisation uses."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from models import layers
from models.init import he_normal


def conv_lipschitz_bound(kernel):
    """An upper bound on the 2-norm of the 'SAME' (zero-padded) convolution with ``kernel``
    (HWIO) as a linear map: ``sqrt(‖A‖₁ ‖A‖∞)`` (Schur / Hölder), where a column of ``A``
    sums at most ``max_j Σ_{taps, i} |K|`` and a row at most ``max_i Σ_{taps, j} |K|``."""
    a = jnp.abs(kernel)
    col = jnp.max(jnp.sum(a, axis=(0, 1, 3)))
    row = jnp.max(jnp.sum(a, axis=(0, 1, 2)))
    return jnp.sqrt(jnp.maximum(col * row, 1e-30))  # no infinite gradient at K = 0


def normalized_kernel(kernel, coeff: float):
    """Spectral normalisation: ``K · min(1, coeff / b(K))`` with ``b`` the rigorous bound
    :func:`conv_lipschitz_bound`, so the convolution with the result has 2-norm ``≤ coeff``
    (and ``K`` is unchanged where it already satisfies the bound)."""
    return kernel * jnp.minimum(1.0, coeff / jnp.maximum(conv_lipschitz_bound(kernel), 1e-12))


class Conv(nnx.Module):
    """A 3×3 'SAME' conv with HWIO kernel and bias (He-normal, or zeros for ``zero=True``)."""

    def __init__(self, c_in: int, c_out: int, *, zero: bool = False, rngs: nnx.Rngs):
        shape = (3, 3, c_in, c_out)
        kernel = jnp.zeros(shape, jnp.float32) if zero else he_normal(rngs.params(), shape)
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(jnp.zeros((c_out,), jnp.float32))

    def __call__(self, x, lipschitz: float | None = None):
        """The conv of ``x``; with ``lipschitz``, of its kernel normalised to that 2-norm."""
        kernel = self.kernel[...]
        if lipschitz is not None:
            kernel = normalized_kernel(kernel, lipschitz)
        return layers.conv2d(x, kernel, self.bias[...])

    def lipschitz_bound(self):
        """:func:`conv_lipschitz_bound` of the (raw) kernel."""
        return conv_lipschitz_bound(self.kernel[...])


class ConvNet(nnx.Module):
    """``NN(x) = out(relu(conv2(relu(conv1(x)))))``; ``out`` is zero at init, so ``NN ≡ 0``
    and every coupling that uses it starts as the identity. Receptive field 7×7.

    ``lipschitz = L`` (optional) spectrally normalises each conv to 2-norm ``≤ L^(1/3)``, so
    ``Lip(NN) ≤ L`` (ReLU is 1-Lipschitz; the biases do not count): :meth:`lipschitz_bound`
    certifies ``Π_i min(L^(1/3), b(K_i))``.
    """

    def __init__(self, c_in: int, hidden: int, c_out: int, *, lipschitz: float | None = None, rngs):
        if lipschitz is not None and not (isinstance(lipschitz, float | int) and lipschitz > 0):
            raise ValueError(f"lipschitz must be a positive number or None, got {lipschitz!r}")
        self.lipschitz = None if lipschitz is None else float(lipschitz)
        self.conv1 = Conv(c_in, hidden, rngs=rngs)
        self.conv2 = Conv(hidden, hidden, rngs=rngs)
        self.out = Conv(hidden, c_out, zero=True, rngs=rngs)

    def _coeff(self):
        return None if self.lipschitz is None else self.lipschitz ** (1 / 3)

    def __call__(self, x):
        c = self._coeff()
        h = layers.relu(self.conv1(x, c))
        h = layers.relu(self.conv2(h, c))
        return self.out(h, c)

    def lipschitz_bound(self):
        """A certified upper bound on ``Lip(NN)``: ``Π_i min(c, b(K_i))`` with
        ``c = L^(1/3)``, or ``Π_i b(K_i)`` without ``lipschitz``."""
        total = jnp.ones((), jnp.float32)
        for conv in (self.conv1, self.conv2, self.out):
            b = conv.lipschitz_bound()
            total = total * (b if self.lipschitz is None else jnp.minimum(self._coeff(), b))
        return total
