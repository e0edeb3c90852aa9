"""Dense models: ``Linear`` (y = W x + b) and ``MLP`` (alternating dense layers and activations).

Both act on the last axis of ``x`` (shape ``(..., in_features)``) and expose their named
intermediates through ``features(x)`` like :class:`models.UNet`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from models import layers
from models.init import lecun_normal


def _check_features(x, in_features: int, model: str) -> None:
    if getattr(x, "ndim", 0) < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"{model} expects inputs of shape (..., {in_features}), got {getattr(x, 'shape', None)}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{model} input must be floating point, got dtype {x.dtype}")


def _positive(name: str, value) -> int:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class LinearConfig(NamedTuple):
    in_features: int
    out_features: int


class MLPConfig(NamedTuple):
    in_features: int
    features: tuple[int, ...]
    activation: str
    activate_output: bool


class Linear(nnx.Module):
    """Affine map y = x Wᵀ + b with W of shape (out_features, in_features) stored as ``kernel``
    (in_features, out_features), the Flax convention: y = x @ kernel + bias."""

    def __init__(self, in_features: int = 1, out_features: int = 1, *, rngs: nnx.Rngs):
        self.config = LinearConfig(
            _positive("in_features", in_features), _positive("out_features", out_features)
        )
        self.kernel = nnx.Param(lecun_normal(rngs.params(), (in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))

    def features(self, x) -> dict[str, jax.Array]:
        _check_features(x, self.config.in_features, "Linear")
        return {"out": x @ self.kernel[...] + self.bias[...]}

    def __call__(self, x):
        return self.features(x)["out"]

    def layer_names(self) -> list[str]:
        return ["out"]


class MLP(nnx.Module):
    """Multi-layer perceptron: h_0 = x, z_i = h_{i−1} W_i + b_i, h_i = σ(z_i).

    ``features`` are the widths of the dense layers (the last is the output width). The
    activation σ follows every hidden layer, and the output layer too when
    ``activate_output=True`` (e.g. a single sigmoid unit: ``MLP(1, (1,), 'sigmoid',
    activate_output=True)``). Named intermediates: ``dense1, act1, …, out``.
    """

    def __init__(
        self,
        in_features: int,
        features: tuple[int, ...],
        activation: str = "relu",
        *,
        activate_output: bool = False,
        rngs: nnx.Rngs,
    ):
        features = tuple(features)
        if not features:
            raise ValueError("features must name at least one layer width, got ()")
        for i, f in enumerate(features):
            _positive(f"features[{i}]", f)
        layers.activation(activation)  # validates the name
        self.config = MLPConfig(
            in_features=_positive("in_features", in_features),
            features=features,
            activation=activation,
            activate_output=bool(activate_output),
        )
        widths = (in_features,) + features
        self.dense = nnx.List(
            [Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )

    def features(self, x) -> dict[str, jax.Array]:
        _check_features(x, self.config.in_features, "MLP")
        act = layers.activation(self.config.activation)
        acts, n = {}, len(self.dense)
        for i, dense in enumerate(self.dense, start=1):
            x = dense(x)
            if i < n or self.config.activate_output:
                acts[f"dense{i}"] = x
                x = act(x)
                if i < n:
                    acts[f"act{i}"] = x
        acts["out"] = x
        return acts

    def __call__(self, x):
        return self.features(x)["out"]

    def layer_names(self) -> list[str]:
        probe = jnp.zeros((1, self.config.in_features), jnp.float32)
        return list(self.features(probe))
