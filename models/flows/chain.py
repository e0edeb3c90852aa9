"""Composition of bijectors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from models.flows.bijector import Bijector


class Chain(Bijector):
    """``f = f_n ∘ … ∘ f_1`` for ``layers = [f_1, …, f_n]`` (applied in list order).

    forward:  x_0 = x, x_i = f_i(x_{i−1}), y = x_n,   log|det ∂y/∂x| = Σ_i log|det ∂f_i/∂x_{i−1}|
    inverse:  x_{i−1} = f_i⁻¹(x_i) for i = n, …, 1,     log|det ∂x/∂y| = Σ_i log|det ∂f_i⁻¹/∂x_i|

    (the chain rule: the Jacobian is the product of the layers' Jacobians, its determinant the
    product of their determinants). Consecutive layers must agree on channels
    (``ValueError`` at construction otherwise); the input's height and width must be divisible
    by what every layer needs after the downsamplings before it (:attr:`spatial_multiple`).
    A concrete input with a NaN or inf entry raises ``ValueError`` (``checks_finite``).
    """

    checks_finite = True

    def __init__(self, layers: Sequence[Bijector]):
        layers = list(layers)
        if not layers or not all(isinstance(b, Bijector) for b in layers):
            raise ValueError(f"Chain needs a non-empty sequence of Bijectors, got {layers!r:.200}")
        for i, (a, b) in enumerate(zip(layers, layers[1:], strict=False)):
            if a.out_channels != b.channels:
                raise ValueError(
                    f"Chain: layer {i} ({type(a).__name__}) gives {a.out_channels} channels but "
                    f"layer {i + 1} ({type(b).__name__}) expects {b.channels}"
                )
        self.layers = nnx.List(layers)
        self.channels = layers[0].channels
        self.out_channels = layers[-1].out_channels
        scale, multiple = 1.0, 1
        for b in layers:
            multiple = math.lcm(multiple, max(1, math.ceil(b.spatial_multiple * scale - 1e-9)))
            scale *= b.downsampling
        self.downsampling = scale
        self.spatial_multiple = multiple

    def _forward_and_log_det(self, x):
        total = jnp.zeros((x.shape[0],), x.dtype)
        for layer in self.layers:
            x, logdet = layer._forward_and_log_det(x)
            total = total + logdet
        return x, total

    def _inverse_and_log_det(self, y):
        total = jnp.zeros((y.shape[0],), y.dtype)
        for layer in reversed(self.layers):
            y, logdet = layer._inverse_and_log_det(y)
            total = total + logdet
        return y, total

    def _forward(self, x):
        for layer in self.layers:
            x = layer._forward(x)
        return x

    def _inverse(self, y):
        for layer in reversed(self.layers):
            y = layer._inverse(y)
        return y

    def log_prob(self, x):
        """Log density under a standard normal base: ``log N(f(x); 0, I) + log|det ∂f/∂x|``
        (a scalar for one image, ``(b,)`` for a batch)."""
        z, logdet = self.forward_and_log_det(x)
        axes = tuple(range(z.ndim - 3, z.ndim))
        n = math.prod(z.shape[-3:])
        return -0.5 * jnp.sum(z * z, axis=axes) - 0.5 * n * math.log(2 * math.pi) + logdet

    def _initialize(self, x):
        for layer in self.layers:
            x = layer._initialize(x)
        return x
