"""Invertible-flow baselines (RealNVP, Dinh et al. 2017) on NHWC float32 images.

Convention (distrax): every layer has ``forward_and_log_det(x) -> (y, logdet)`` and
``inverse_and_log_det(y) -> (x, logdet)``; ``forward`` / ``inverse`` drop the log-det.
``logdet`` is per sample, shape ``(batch,)``: log|det ∂y/∂x| for the forward map and
log|det ∂x/∂y| (= minus the forward one at the matching point) for the inverse.

Affine coupling with a checkerboard mask ``m[i, j] = (i + j + parity) mod 2`` (broadcast over
channels) and a conditioner network ``NN`` (three 3×3 convs, ReLU between):

    (s_raw, t) = NN(m⊙x),   s = scale · tanh(s_raw)        (learnable per-channel scale)
    y = m⊙x + (1−m)⊙(x⊙exp(s) + t)
    log|det ∂y/∂x| = Σ_{h,w,c} (1−m)⊙s

The masked entries pass through unchanged, and s, t depend on them only, so after ordering
the masked entries first the Jacobian is block lower-triangular with blocks I and
diag(exp(s)) on the diagonal: its log-determinant is the sum of the unmasked s. Since
m⊙y = m⊙x, the inverse recomputes the same s, t from m⊙y and undoes the affine map exactly
(no iteration, no fixed-point solve):

    x = m⊙y + (1−m)⊙((y − t)⊙exp(−s)),   log|det ∂x/∂y| = −Σ (1−m)⊙s.

The conditioner's last conv is zero at init, so every coupling starts as the identity.

ActNorm (per-channel affine, Kingma & Dhariwal 2018, without data-dependent init):

    y = (x − bias)·exp(log_scale),   log|det ∂y/∂x| = H·W·Σ_c log_scale.

:class:`Flow` alternates coupling parities 0, 1, 0, … (each optionally followed by an
ActNorm), sums the log-dets, and gives ``log_prob(x) = log N(forward(x); 0, I) + logdet``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from models import layers
from models.init import he_normal

Image = Float[Array, "b h w c"]
LogDet = Float[Array, " b"]


def _positive(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_input(x, channels: int, who: str, name: str = "x") -> None:
    """TypeError unless ``x`` is a floating array; ValueError unless it is (b, h, w, channels)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not hasattr(x, "shape"):
        raise TypeError(f"{who}: {name} must be an array, got {type(x).__name__}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{who}: {name} must be floating point, got dtype {dtype}")
    if x.ndim != 4:
        raise ValueError(
            f"{who}: {name} must be NHWC of rank 4 (b, h, w, {channels}), got shape {x.shape}"
        )
    if x.shape[-1] != channels:
        raise ValueError(
            f"{who}: {name} must have {channels} channels, got {x.shape[-1]} (shape {x.shape})"
        )


def _check_finite(x, who: str, name: str = "x") -> None:
    """ValueError if a concrete ``x`` has a NaN or inf entry (tracers are not checked)."""
    if isinstance(x, jax.core.Tracer):
        return
    finite = jnp.isfinite(x)
    if not bool(finite.all()):
        samples = sorted({int(i) for i in jnp.nonzero(~finite.all(axis=(1, 2, 3)))[0]})
        raise ValueError(
            f"{who}: {name} has {int((~finite).sum())} NaN or inf entries (in samples "
            f"{samples[:10]}); expected finite values (one would spread over the whole sample)"
        )


class Bijector(nnx.Module):
    """Base class: subclasses define the two ``*_and_log_det`` methods; the rest derives."""

    def forward_and_log_det(self, x: Image) -> tuple[Image, LogDet]:
        raise NotImplementedError

    def inverse_and_log_det(self, y: Image) -> tuple[Image, LogDet]:
        raise NotImplementedError

    def forward(self, x: Image) -> Image:
        """y = f(x)."""
        return self.forward_and_log_det(x)[0]

    def inverse(self, y: Image) -> Image:
        """x = f⁻¹(y)."""
        return self.inverse_and_log_det(y)[0]

    def __call__(self, x: Image) -> Image:
        return self.forward(x)


class _Conv(nnx.Module):
    """A 3×3 'SAME' conv with HWIO kernel and bias (He-normal, or zeros for ``zero=True``)."""

    def __init__(self, c_in: int, c_out: int, *, zero: bool = False, rngs: nnx.Rngs):
        shape = (3, 3, c_in, c_out)
        kernel = jnp.zeros(shape, jnp.float32) if zero else he_normal(rngs.params(), shape)
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(jnp.zeros((c_out,), jnp.float32))

    def __call__(self, x):
        return layers.conv2d(x, self.kernel[...], self.bias[...])


class AffineCoupling(Bijector):
    """Checkerboard affine coupling (see the module docstring); the identity at init.

    ``conv1``, ``conv2``, ``out`` are the conditioner's convs (``out`` starts at zero);
    ``scale`` (per channel, ones at init) bounds the log-scale: s = scale · tanh(s_raw).

    Non-finite input is not checked here (only by :class:`Flow`): a NaN or inf entry, masked or
    not (``0 · NaN = NaN``), reaches the conditioner and spreads through its three 3×3 convs to
    the 7×7 neighbourhood in ``y`` and to that sample's log-det; other samples are unaffected.
    """

    def __init__(self, channels: int, hidden: int, parity: int, *, rngs: nnx.Rngs):
        self.channels = _positive("channels", channels)
        _positive("hidden", hidden)
        if parity not in (0, 1) or isinstance(parity, bool):
            raise ValueError(f"parity must be 0 or 1, got {parity!r}")
        self.parity = parity
        self.conv1 = _Conv(channels, hidden, rngs=rngs)
        self.conv2 = _Conv(hidden, hidden, rngs=rngs)
        self.out = _Conv(hidden, 2 * channels, zero=True, rngs=rngs)
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))

    def mask(self, height: int, width: int) -> Float[Array, "h w 1"]:
        """m[i, j] = (i + j + parity) mod 2: 1 where entries pass through unchanged."""
        i = jnp.arange(height)[:, None]
        j = jnp.arange(width)[None, :]
        return ((i + j + self.parity) % 2).astype(jnp.float32)[..., None]

    def _shift_and_log_scale(self, masked: Image) -> tuple[Image, Image]:
        h = layers.relu(self.conv1(masked))
        h = layers.relu(self.conv2(h))
        s_raw, t = jnp.split(self.out(h), 2, axis=-1)
        return self.scale[...] * jnp.tanh(s_raw), t

    def forward_and_log_det(self, x: Image) -> tuple[Image, LogDet]:
        _check_input(x, self.channels, "AffineCoupling.forward")
        m = self.mask(*x.shape[1:3])
        s, t = self._shift_and_log_scale(m * x)
        y = m * x + (1 - m) * (x * jnp.exp(s) + t)
        return y, jnp.sum((1 - m) * s, axis=(1, 2, 3))

    def inverse_and_log_det(self, y: Image) -> tuple[Image, LogDet]:
        _check_input(y, self.channels, "AffineCoupling.inverse", "y")
        m = self.mask(*y.shape[1:3])
        s, t = self._shift_and_log_scale(m * y)
        x = m * y + (1 - m) * ((y - t) * jnp.exp(-s))
        return x, -jnp.sum((1 - m) * s, axis=(1, 2, 3))


class ActNorm(Bijector):
    """Per-channel affine y = (x − bias)·exp(log_scale); zeros at init (the identity).

    Elementwise, so a NaN or inf entry of ``x`` stays in that entry of ``y`` (not checked here,
    only by :class:`Flow`); the log-det does not depend on ``x``.
    """

    def __init__(self, channels: int, *, rngs: nnx.Rngs | None = None):
        del rngs  # no random parameters; accepted for a uniform constructor signature
        self.channels = _positive("channels", channels)
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.log_scale = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def _log_det(self, x: Image) -> LogDet:
        b, h, w, _ = x.shape
        return jnp.full((b,), h * w * jnp.sum(self.log_scale[...]), jnp.float32)

    def forward_and_log_det(self, x: Image) -> tuple[Image, LogDet]:
        _check_input(x, self.channels, "ActNorm.forward")
        return (x - self.bias[...]) * jnp.exp(self.log_scale[...]), self._log_det(x)

    def inverse_and_log_det(self, y: Image) -> tuple[Image, LogDet]:
        _check_input(y, self.channels, "ActNorm.inverse", "y")
        return y * jnp.exp(-self.log_scale[...]) + self.bias[...], -self._log_det(y)


class Flow(Bijector):
    """RealNVP stack: ``couplings`` affine couplings of parity 0, 1, 0, …, each followed by
    an :class:`ActNorm` when ``actnorm`` is true. ``layers`` holds them in forward order.

    Non-finite input: every coupling spreads a NaN or inf entry over a 7×7 neighbourhood (see
    :class:`AffineCoupling`), so a single NaN pixel makes the whole sample and its log-det
    non-finite. ``forward_and_log_det``, ``inverse_and_log_det`` (and so ``forward``,
    ``inverse``, ``log_prob``) therefore raise ``ValueError`` for a concrete input with a NaN or
    inf entry. Under ``jax.jit``/``grad`` the values are unknown when tracing: no check, and NaN
    propagates as described.
    """

    def __init__(
        self,
        channels: int = 1,
        hidden: int = 16,
        couplings: int = 4,
        *,
        actnorm: bool = True,
        rngs: nnx.Rngs,
    ):
        self.channels = _positive("channels", channels)
        _positive("couplings", couplings)
        stack: list[Bijector] = []
        for k in range(couplings):
            stack.append(AffineCoupling(channels, hidden, k % 2, rngs=rngs))
            if actnorm:
                stack.append(ActNorm(channels))
        self.layers = nnx.List(stack)

    def forward_and_log_det(self, x: Image) -> tuple[Image, LogDet]:
        _check_input(x, self.channels, "Flow.forward")
        _check_finite(x, "Flow.forward")
        total = jnp.zeros((x.shape[0],), jnp.float32)
        for layer in self.layers:
            x, logdet = layer.forward_and_log_det(x)
            total = total + logdet
        return x, total

    def inverse_and_log_det(self, y: Image) -> tuple[Image, LogDet]:
        _check_input(y, self.channels, "Flow.inverse", "y")
        _check_finite(y, "Flow.inverse", "y")
        total = jnp.zeros((y.shape[0],), jnp.float32)
        for layer in reversed(self.layers):
            y, logdet = layer.inverse_and_log_det(y)
            total = total + logdet
        return y, total

    def log_prob(self, x: Image) -> LogDet:
        """Per-sample log density: log N(z; 0, I) + log|det ∂z/∂x| with z = forward(x)."""
        z, logdet = self.forward_and_log_det(x)
        n = math.prod(z.shape[1:])
        base = -0.5 * jnp.sum(z * z, axis=(1, 2, 3)) - 0.5 * n * math.log(2 * math.pi)
        return base + logdet
