"""Image parameterisations for feature visualisation: pixels, Fourier with 1/f scaling, colour.

A :class:`Parameterisation` maps free parameters ``z`` to one input ``x = render(z)``:

* ``'pixels'``: ``u = z``, the input itself.
* ``'fourier'`` (Olah et al. 2017; lucent's ``fft_image``): ``z = (Re, Im)`` of a half spectrum
  of shape ``(2, H, W//2 + 1, C)`` and ``u = irfft2(s ⊙ (Re + i Im)) / 4`` (orthonormal inverse
  real FFT over the two spatial axes) with the 1/f scaling ``s(f) = 1 / max(|f|, 1/max(H, W))^d``
  (``d = decay``; ``|f|`` the radial frequency in cycles per pixel). Gradient steps on ``z``
  then change low frequencies as fast as high ones, where on pixels they would be dominated by
  the high ones.
* colour decorrelation (``decorrelate``, RGB only): ``u ← u Kᵀ`` per pixel with ``K`` lucent's
  square root of the ImageNet colour covariance, its columns scaled to a largest norm of 1, so
  that the parameters are decorrelated colour components.

Bounds ``(lo, hi)``: with plain pixels the solver projects ``z`` onto the box (``x = z``, so a
linear unit is maximised exactly at a corner); otherwise ``x = lo + (hi − lo) σ(u)`` (the
squashing lucent uses), and without bounds ``x = u``.

>>> import jax, jax.numpy as jnp
>>> p = Parameterisation("fourier", (8, 8, 3), decorrelate=True, bounds=(0.0, 1.0))
>>> z = p.init(jax.random.key(0), 2)
>>> z.shape, p.render(z).shape
((2, 2, 8, 5, 3), (2, 8, 8, 3))
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

__all__ = ["COLOR_CORRELATION", "PARAMS", "Parameterisation", "fourier_scale"]

PARAMS = ("pixels", "fourier")
#: Lucent's square root of the colour correlation (rows: R, G, B).
COLOR_CORRELATION = np.array(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32
)
FOURIER_MAGIC = 4.0  # lucent divides the image by 4 after the inverse FFT


def fourier_scale(h: int, w: int, decay: float = 1.0) -> np.ndarray:
    """``1 / max(|f|, 1/max(h, w))^decay`` on the ``(h, w//2 + 1)`` half spectrum."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freqs = np.sqrt(fx * fx + fy * fy)
    return (1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay).astype(np.float32)


@functools.cache
def _color_matrix() -> np.ndarray:
    return COLOR_CORRELATION / np.max(np.linalg.norm(COLOR_CORRELATION, axis=0))


@dataclasses.dataclass(frozen=True)
class Parameterisation:
    """``render(z)`` for a batch of parameters; see the module docstring for the maths.

    ``kind``: ``'pixels'`` or ``'fourier'``; ``shape``: one input's shape (``(H, W, C)`` for
    Fourier and colour); ``sd``: the standard deviation of the random start of ``z``.
    """

    kind: str
    shape: tuple[int, ...]
    decorrelate: bool = False
    bounds: tuple[float, float] | None = None
    sd: float = 0.01
    decay: float = 1.0

    def __post_init__(self):
        if self.kind not in PARAMS:
            raise ValueError(f"param must be one of {PARAMS}, got {self.kind!r}")
        if self.kind == "fourier" and len(self.shape) != 3:
            raise ValueError(f"param='fourier' needs shape (H, W, C), got {self.shape}")
        if self.decorrelate and (len(self.shape) != 3 or self.shape[-1] != 3):
            raise ValueError(f"decorrelate=True needs RGB inputs (H, W, 3), got {self.shape}")

    @property
    def projected(self) -> bool:
        """Whether bounds are kept by projecting ``z`` (plain pixels) rather than by ``σ``."""
        return self.kind == "pixels" and not self.decorrelate

    @property
    def z_shape(self) -> tuple[int, ...]:
        if self.kind == "pixels":
            return tuple(self.shape)
        h, w, c = self.shape
        return (2, h, w // 2 + 1, c)

    def init(self, key: Array, batch: int) -> Array:
        """``batch`` random starts: ``sd · N(0, I)``, around the box centre for projected
        pixels (the centre itself plus noise, clipped into the box)."""
        z = self.sd * jax.random.normal(key, (batch, *self.z_shape), jnp.float32)
        if self.projected and self.bounds is not None:
            lo, hi = self.bounds
            z = jnp.clip(z + (lo + hi) / 2, lo, hi)
        return z

    def render(self, z: Array) -> Array:
        """The inputs ``x`` (batch, *shape) for parameters ``z`` (batch, *z_shape)."""
        if self.kind == "fourier":
            h, w, _ = self.shape
            scale = jnp.asarray(fourier_scale(h, w, self.decay))[:, :, None]
            spectrum = (z[:, 0] + 1j * z[:, 1]) * scale
            u = jnp.fft.irfft2(spectrum, s=(h, w), axes=(1, 2), norm="ortho") / FOURIER_MAGIC
        else:
            u = z
        if self.decorrelate:
            u = u @ jnp.asarray(_color_matrix().T)
        if self.projected or self.bounds is None:
            return u
        lo, hi = self.bounds
        return lo + (hi - lo) * jax.nn.sigmoid(u)
