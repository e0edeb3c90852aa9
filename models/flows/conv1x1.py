"""Invertible 1×1 convolution (Glow), LU-parametrised."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models.flows.bijector import Bijector, positive_int


class Conv1x1(Bijector):
    """``y[i, j] = W x[i, j]`` at every pixel, with ``W`` (c × c) in LU form:

        W = P · L · (U + diag(sign · exp(log_s)))

    ``P`` a fixed permutation, ``L`` unit lower-triangular, ``U`` strictly upper-triangular and
    ``sign`` fixed (``P``, ``sign`` are not trained). Since ``|det P| = det L = 1``,

        log|det ∂y/∂x| = H·W·Σ_k log_s[k]                  (O(c), no determinant)

    and the inverse ``x = W⁻¹ y`` with ``W⁻¹ = (U + diag)⁻¹ · L⁻¹ · Pᵀ`` takes two triangular
    solves (O(c³) once per call, not per pixel); its log-det is minus the forward one.

    ``init='orthogonal'`` (Glow): ``W`` a random rotation (QR of a Gaussian matrix, then its
    LU), so ``log|det| = 0`` at init but ``W ≠ I``; ``init='identity'``: ``W = I``.

    A pixel's channels are mixed, so a NaN or inf entry spreads over the channels of that
    pixel only (not checked here); the log-det does not depend on ``x``.
    """

    def __init__(self, channels: int, *, init: str = "orthogonal", rngs: nnx.Rngs):
        self.channels = self.out_channels = positive_int("channels", channels)
        c = channels
        if init == "orthogonal":  # jnp, not numpy: traceable (nnx.eval_shape builds it abstractly)
            q, r = jnp.linalg.qr(jax.random.normal(rngs.params(), (c, c), jnp.float32))
            q = q * jnp.sign(jnp.diag(r))  # a Haar-distributed rotation
            p, lower, upper = jax.scipy.linalg.lu(q)
        elif init == "identity":
            p = lower = upper = jnp.eye(c, dtype=jnp.float32)
        else:
            raise ValueError(f"init must be 'orthogonal' or 'identity', got {init!r}")
        diag = jnp.diag(upper)
        self.permutation = nnx.Variable(p)
        self.sign = nnx.Variable(jnp.sign(diag))
        self.lower = nnx.Param(jnp.tril(lower, -1))
        self.upper = nnx.Param(jnp.triu(upper, 1))
        self.log_s = nnx.Param(jnp.log(jnp.abs(diag)))

    def _factors(self):
        c = self.channels
        eye = jnp.eye(c, dtype=self.lower[...].dtype)
        lower = jnp.tril(self.lower[...], -1) + eye
        upper = jnp.triu(self.upper[...], 1) + jnp.diag(self.sign[...] * jnp.exp(self.log_s[...]))
        return self.permutation[...], lower, upper

    def weight(self):
        """``W = P L (U + diag(sign·exp(log_s)))``."""
        p, lower, upper = self._factors()
        return p @ lower @ upper

    def inverse_weight(self):
        """``W⁻¹ = (U + diag)⁻¹ L⁻¹ Pᵀ`` by two triangular solves."""
        p, lower, upper = self._factors()
        eye = jnp.eye(self.channels, dtype=lower.dtype)
        l_inv = jax.scipy.linalg.solve_triangular(lower, eye, lower=True, unit_diagonal=True)
        u_inv = jax.scipy.linalg.solve_triangular(upper, eye, lower=False)
        return u_inv @ l_inv @ p.T

    def _log_det(self, x):
        b, h, w, _ = x.shape
        return jnp.full((b,), h * w * jnp.sum(self.log_s[...]), x.dtype)

    def _forward_and_log_det(self, x):
        return jnp.einsum("bhwj,ij->bhwi", x, self.weight().astype(x.dtype)), self._log_det(x)

    def _inverse_and_log_det(self, y):
        w_inv = self.inverse_weight().astype(y.dtype)
        return jnp.einsum("bhwj,ij->bhwi", y, w_inv), -self._log_det(y)
