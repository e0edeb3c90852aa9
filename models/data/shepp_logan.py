"""CT-like phantoms: randomly perturbed (modified) Shepp–Logan ellipse phantoms.

Coordinates: pixel ``(i, j)`` of a ``size × size`` image sits at ``x = 2 (j + ½)/size − 1``
(left → right) and ``y = 1 − 2 (i + ½)/size`` (bottom → top), i.e. the square ``[−1, 1]²``.
An ellipse ``(A, a, b, x₀, y₀, φ)`` adds intensity ``A`` where
``(u/a)² + (v/b)² ≤ 1`` with ``u = (x − x₀) cos φ + (y − y₀) sin φ`` and
``v = −(x − x₀) sin φ + (y − y₀) cos φ``; the image is the sum over the ten ellipses of the
modified Shepp–Logan phantom (Toft, 1996; `SHEPP_LOGAN`), clipped to ``[0, 1]``.

Random perturbation of one phantom, all draws uniform:

* a global similarity-like map for all ten ellipses: axis scales ``s_x, s_y ∈ [0.8, 1]``
  (``a ← s_x a``, ``b ← s_y b``, ``x₀ ← s_x x₀``, ``y₀ ← s_y y₀``), then a rotation by
  ``ψ ∈ [−15°, 15°]`` (centres rotated, ``φ ← φ + ψ``) and a shift ``t ∈ [−0.05, 0.05]²``;
  for the two axis-aligned outer ellipses (body and brain) this is an exact affine image, so the
  brain stays inside the body;
* each inner feature (ellipses 3–10): centre ``± 0.02``, axes ``× [0.85, 1.15]``,
  angle ``± 10°``, intensity ``× [0.75, 1.25]``.

Mask: the tissue mask, ``1`` inside the (perturbed) outer body ellipse — skull included — and
``0`` in the surrounding air. Every ellipse lies inside the body, so the image is ``0`` outside
the mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from models.data.dataset import Dataset, check_int, check_key, numpy_rng

__all__ = ["SHEPP_LOGAN", "phantoms"]

# Modified Shepp–Logan phantom: rows (A, a, b, x0, y0, phi in degrees).
SHEPP_LOGAN = np.array(
    [
        [1.0, 0.6900, 0.920, 0.00, 0.0000, 0.0],
        [-0.8, 0.6624, 0.874, 0.00, -0.0184, 0.0],
        [-0.2, 0.1100, 0.310, 0.22, 0.0000, -18.0],
        [-0.2, 0.1600, 0.410, -0.22, 0.0000, 18.0],
        [0.1, 0.2100, 0.250, 0.00, 0.3500, 0.0],
        [0.1, 0.0460, 0.046, 0.00, 0.1000, 0.0],
        [0.1, 0.0460, 0.046, 0.00, -0.1000, 0.0],
        [0.1, 0.0460, 0.023, -0.08, -0.6050, 0.0],
        [0.1, 0.0230, 0.023, 0.00, -0.6060, 0.0],
        [0.1, 0.0230, 0.046, 0.06, -0.6050, 0.0],
    ],
    dtype=np.float64,
)


def phantoms(key: jax.Array, n: int, *, size: int = 64) -> Dataset:
    """``n`` random Shepp–Logan-style CT phantoms and their tissue (body) masks.

    The model, coordinates and perturbations are in the module docstring. All randomness comes
    from ``key`` (same key, same phantoms).

    Args:
        key: PRNG key.
        n: number of phantoms, ``>= 1``.
        size: height and width, ``>= 16``.

    Returns:
        ``Dataset(images (n, size, size, 1) in [0, 1], masks (n, size, size, 1), labels=None)``.
    """
    check_key(key)
    n = check_int("n", n, minimum=1)
    size = check_int("size", size, minimum=16)
    images, masks = _generate(numpy_rng(key), n, size)
    return Dataset(jnp.asarray(images), jnp.asarray(masks), None)


def _generate(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    m = len(SHEPP_LOGAN)
    amp, a, b, x0, y0, phi = (np.broadcast_to(c, (n, m)).copy() for c in SHEPP_LOGAN.T)
    phi = np.deg2rad(phi)
    inner = slice(2, m)  # the features; ellipses 0 (body) and 1 (brain) keep their shape
    k = m - 2
    x0[:, inner] += rng.uniform(-0.02, 0.02, (n, k))
    y0[:, inner] += rng.uniform(-0.02, 0.02, (n, k))
    a[:, inner] *= rng.uniform(0.85, 1.15, (n, k))
    b[:, inner] *= rng.uniform(0.85, 1.15, (n, k))
    phi[:, inner] += np.deg2rad(rng.uniform(-10.0, 10.0, (n, k)))
    amp[:, inner] *= rng.uniform(0.75, 1.25, (n, k))

    sx, sy = rng.uniform(0.8, 1.0, (n, 1)), rng.uniform(0.8, 1.0, (n, 1))
    psi = np.deg2rad(rng.uniform(-15.0, 15.0, (n, 1)))
    tx, ty = rng.uniform(-0.05, 0.05, (n, 1)), rng.uniform(-0.05, 0.05, (n, 1))
    a, b, x0, y0 = a * sx, b * sy, x0 * sx, y0 * sy
    x0, y0 = x0 * np.cos(psi) - y0 * np.sin(psi) + tx, x0 * np.sin(psi) + y0 * np.cos(psi) + ty
    phi = phi + psi

    c = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    x, y = c[None, None, None, :], -c[None, None, :, None]  # (1, 1, 1, W), (1, 1, H, 1)
    e = lambda t: t.astype(np.float32)[..., None, None]  # noqa: E731  (n, m) -> (n, m, 1, 1)
    dx, dy = x - e(x0), y - e(y0)
    cos, sin = e(np.cos(phi)), e(np.sin(phi))
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    inside = (u / e(a)) ** 2 + (v / e(b)) ** 2 <= 1.0  # (n, m, H, W)
    image = np.einsum("nmhw,nm->nhw", inside.astype(np.float32), amp.astype(np.float32))
    images = np.clip(image, 0.0, 1.0)[..., None]
    masks = inside[:, 0, :, :, None].astype(np.float32)
    return images, masks
