"""The conditioner network of the couplings: three 3×3 'SAME' convs, ReLU between."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from models import layers
from models.init import he_normal


class Conv(nnx.Module):
    """A 3×3 'SAME' conv with HWIO kernel and bias (He-normal, or zeros for ``zero=True``)."""

    def __init__(self, c_in: int, c_out: int, *, zero: bool = False, rngs: nnx.Rngs):
        shape = (3, 3, c_in, c_out)
        kernel = jnp.zeros(shape, jnp.float32) if zero else he_normal(rngs.params(), shape)
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(jnp.zeros((c_out,), jnp.float32))

    def __call__(self, x):
        return layers.conv2d(x, self.kernel[...], self.bias[...])


class ConvNet(nnx.Module):
    """``NN(x) = out(relu(conv2(relu(conv1(x)))))``; ``out`` is zero at init, so ``NN ≡ 0``
    and every coupling that uses it starts as the identity. Receptive field 7×7."""

    def __init__(self, c_in: int, hidden: int, c_out: int, *, rngs: nnx.Rngs):
        self.conv1 = Conv(c_in, hidden, rngs=rngs)
        self.conv2 = Conv(hidden, hidden, rngs=rngs)
        self.out = Conv(hidden, c_out, zero=True, rngs=rngs)

    def __call__(self, x):
        h = layers.relu(self.conv1(x))
        h = layers.relu(self.conv2(h))
        return self.out(h)
