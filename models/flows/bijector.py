"""The bijector base class, its event-shape convention and the checks every bijector shares.

Convention (distrax): a bijector ``f`` has two primitives,

    forward_and_log_det(x) -> (y, log|det ∂y/∂x|)
    inverse_and_log_det(y) -> (x, log|det ∂x/∂y|) = (f⁻¹(y), −log|det ∂y/∂x| at x = f⁻¹(y)),

and ``forward``, ``inverse`` and ``__call__`` derive from them.

Event shapes: a bijector acts on one NHWC image ``(h, w, c)`` (the log-det is a scalar) or on a
batch ``(b, h, w, c)`` (the log-det has shape ``(b,)``, one per image). A single image is the
batch of one with the batch axis removed, so ``jax.vmap(bijector.forward)`` over a batch of
single images equals ``bijector.forward`` of the batch, and ``inversion.invert`` can invert
``bijector.forward`` as a function of one image. Subclasses implement the batched forms
``_forward_and_log_det`` and ``_inverse_and_log_det`` on rank-4 arrays; the public methods check
the input (a floating array of rank 3 or 4 with :attr:`channels` channels and spatial sizes
divisible by :attr:`spatial_multiple`; ``TypeError``/``ValueError`` naming the shape otherwise)
and add or remove the batch axis.

Non-finite values: single bijectors do not look at values (each documents how a NaN or inf
spreads); :class:`models.flows.Chain` and the networks built on it raise ``ValueError`` for a
concrete input with a NaN or inf entry, and for a finite concrete input whose result overflows
(e.g. the inverse of an image of 3e38: a NaN or inf result is never returned eagerly). Under
``jax.jit``/``vmap``/``grad`` values are unknown while tracing, so no value check runs there:
the result then holds the inf/NaN of the overflow, and a caller that needs finite values checks
``jnp.isfinite`` itself. :meth:`Bijector.initialize` (eager) refuses a non-finite batch for
every bijector, so no parameter is ever set to NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

Image = Float[Array, "*b h w c"]
Batch = Float[Array, "b h w c"]
LogDet = Float[Array, "*b"]


def positive_int(name: str, value) -> int:
    """``value`` if it is a positive int, else ``ValueError`` naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_image(x, *, channels: int, multiple: int, who: str, name: str) -> None:
    """TypeError unless ``x`` is a floating array; ValueError unless it is ``(h, w, channels)``
    or ``(b, h, w, channels)`` with ``h`` and ``w`` divisible by ``multiple``."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not hasattr(x, "shape"):
        raise TypeError(f"{who}: {name} must be an array, got {type(x).__name__}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{who}: {name} must be floating point, got dtype {dtype}")
    if x.ndim not in (3, 4):
        raise ValueError(
            f"{who}: {name} must be one NHWC image (h, w, {channels}) of rank 3 or a batch "
            f"(b, h, w, {channels}) of rank 4, got shape {x.shape}"
        )
    if x.shape[-1] != channels:
        raise ValueError(
            f"{who}: {name} must have {channels} channels, got {x.shape[-1]} (shape {x.shape})"
        )
    h, w = x.shape[-3:-1]
    if h % multiple or w % multiple:
        raise ValueError(
            f"{who}: {name} must have height and width divisible by {multiple} (it halves them "
            f"{multiple.bit_length() - 1} times), got {h}x{w} (shape {x.shape})"
        )


def check_finite(x, *, who: str, name: str) -> None:
    """ValueError if a concrete ``x`` (rank 4) has a NaN or inf entry; tracers are not checked."""
    if isinstance(x, jax.core.Tracer):
        return
    finite = np.isfinite(np.asarray(x))  # numpy: under a trace, jnp on a constant is traced
    if not finite.all():
        samples = sorted({int(i) for i in np.nonzero(~finite.all(axis=(1, 2, 3)))[0]})
        raise ValueError(
            f"{who}: {name} has {int((~finite).sum())} NaN or inf entries (in samples "
            f"{samples[:10]}); expected finite values (one would spread over the whole sample)"
        )


def check_finite_result(out, inp, *, who: str, name: str) -> None:
    """ValueError if a concrete result ``out`` (rank 4) of the finite input ``inp`` has a NaN or
    inf entry (an overflow); tracers are not checked."""
    if isinstance(out, jax.core.Tracer) or isinstance(inp, jax.core.Tracer):
        return
    finite = np.isfinite(np.asarray(out))
    if not finite.all():
        samples = sorted({int(i) for i in np.nonzero(~finite.all(axis=(1, 2, 3)))[0]})
        largest = float(np.max(np.abs(np.asarray(inp)[samples])))
        raise ValueError(
            f"{who}: the result for the finite {name} has {int((~finite).sum())} NaN or inf "
            f"entries (in samples {samples[:10]}; largest |{name}| there {largest:.3g}): {name} "
            f"is outside the range where this map is finite in {np.asarray(out).dtype}"
        )


class Bijector(nnx.Module):
    """Base class of every invertible layer and network (see the module docstring).

    Attributes set by subclasses: ``channels`` (input channels), ``out_channels``,
    ``downsampling`` (input height / output height: 2 for a squeeze, 1/2 for its inverse, as a
    float) and ``spatial_multiple`` (what the input height and width must be divisible by).
    ``checks_finite``: whether the public methods reject concrete non-finite input.
    """

    channels: int
    out_channels: int
    downsampling: float = 1.0
    spatial_multiple: int = 1
    checks_finite: bool = False

    # -- the primitives, on batches (b, h, w, c) -------------------------------------------
    def _forward_and_log_det(self, x: Batch) -> tuple[Batch, Float[Array, " b"]]:
        raise NotImplementedError

    def _inverse_and_log_det(self, y: Batch) -> tuple[Batch, Float[Array, " b"]]:
        raise NotImplementedError

    def _forward(self, x: Batch) -> Batch:
        """``f(x)`` without the log-det (override where the log-det costs more than ``f``)."""
        return self._forward_and_log_det(x)[0]

    def _inverse(self, y: Batch) -> Batch:
        """``f⁻¹(y)`` without the log-det."""
        return self._inverse_and_log_det(y)[0]

    def _initialize(self, x: Batch) -> Batch:
        """Data-dependent initialisation from a batch; returns the forward output (without
        the log-det, which may cost far more: i-ResNet). Default: nothing to initialise."""
        return self._forward(x)

    # -- public forms: one image or a batch ------------------------------------------------
    def _lift(self, x, method: str, name: str, channels: int, multiple: int):
        who = f"{type(self).__name__}.{method}"
        check_image(x, channels=channels, multiple=multiple, who=who, name=name)
        single = x.ndim == 3
        xb = x[None] if single else x
        if self.checks_finite:
            check_finite(xb, who=who, name=name)
        return xb, single

    def _check_result(self, out, inp, method: str, name: str) -> None:
        if self.checks_finite:
            check_finite_result(out, inp, who=f"{type(self).__name__}.{method}", name=name)

    def forward_and_log_det(self, x: Image) -> tuple[Image, LogDet]:
        """``(f(x), log|det ∂f/∂x|)`` for one image ``(h, w, c)`` or a batch ``(b, h, w, c)``."""
        xb, single = self._lift(x, "forward", "x", self.channels, self.spatial_multiple)
        y, logdet = self._forward_and_log_det(xb)
        self._check_result(y, xb, "forward", "x")
        return (y[0], logdet[0]) if single else (y, logdet)

    def inverse_and_log_det(self, y: Image) -> tuple[Image, LogDet]:
        """``(f⁻¹(y), log|det ∂f⁻¹/∂y|)``, the log-det being minus the forward one at f⁻¹(y)."""
        multiple = max(1, round(self.spatial_multiple / self.downsampling))
        yb, single = self._lift(y, "inverse", "y", self.out_channels, multiple)
        x, logdet = self._inverse_and_log_det(yb)
        self._check_result(x, yb, "inverse", "y")
        return (x[0], logdet[0]) if single else (x, logdet)

    def forward(self, x: Image) -> Image:
        """y = f(x) (the log-det is not computed)."""
        xb, single = self._lift(x, "forward", "x", self.channels, self.spatial_multiple)
        y = self._forward(xb)
        self._check_result(y, xb, "forward", "x")
        return y[0] if single else y

    def inverse(self, y: Image) -> Image:
        """x = f⁻¹(y) (the log-det is not computed)."""
        multiple = max(1, round(self.spatial_multiple / self.downsampling))
        yb, single = self._lift(y, "inverse", "y", self.out_channels, multiple)
        x = self._inverse(yb)
        self._check_result(x, yb, "inverse", "y")
        return x[0] if single else x

    def __call__(self, x: Image) -> Image:
        return self.forward(x)

    def initialize(self, x: Image) -> Image:
        """Data-dependent initialisation (eager: it sets parameters) from the batch ``x``, e.g.
        every :class:`models.flows.ActNorm` to zero mean and unit variance of its input; returns
        ``f(x)`` with the new parameters. Bijectors without such parameters change nothing.
        A batch with a NaN or inf entry is refused (``ValueError``): it would set parameters to
        NaN for good."""
        xb, single = self._lift(x, "initialize", "x", self.channels, self.spatial_multiple)
        check_finite(xb, who=f"{type(self).__name__}.initialize", name="x")  # for every bijector
        y = self._initialize(xb)
        return y[0] if single else y


class Inverse(Bijector):
    """The inverse of a bijector: ``forward`` is ``bijector.inverse`` and vice versa, with the
    log-dets swapped (e.g. ``Inverse(Squeeze(c))`` is depth-to-space)."""

    def __init__(self, bijector: Bijector):
        self.bijector = bijector
        self.channels = bijector.out_channels
        self.out_channels = bijector.channels
        self.downsampling = 1.0 / bijector.downsampling
        self.spatial_multiple = max(1, round(bijector.spatial_multiple / bijector.downsampling))

    def _forward_and_log_det(self, x):
        return self.bijector._inverse_and_log_det(x)

    def _inverse_and_log_det(self, y):
        return self.bijector._forward_and_log_det(y)

    def _forward(self, x):
        return self.bijector._inverse(x)

    def _inverse(self, y):
        return self.bijector._forward(y)
