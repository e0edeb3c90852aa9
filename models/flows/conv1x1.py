"""Invertible 1×1 convolution (Glow), LU-parametrised."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
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
        if init == "orthogonal":
            a = np.asarray(jax.random.normal(rngs.params(), (c, c)), np.float64)
            q, r = np.linalg.qr(a)
            q = q * np.sign(np.diag(r))  # a Haar-distributed rotation
            p, lower, upper = scipy.linalg.lu(q)
        elif init == "identity":
            p, lower, upper = np.eye(c), np.eye(c), np.eye(c)
        else:
            raise ValueError(f"init must be 'orthogonal' or 'identity', got {init!r}")
        diag = np.diag(upper)
        self.permutation = nnx.Variable(jnp.asarray(p, jnp.float32))
        self.sign = nnx.Variable(jnp.asarray(np.sign(diag), jnp.float32))
        self.lower = nnx.Param(jnp.asarray(np.tril(lower, -1), jnp.float32))
        self.upper = nnx.Param(jnp.asarray(np.triu(upper, 1), jnp.float32))
        self.log_s = nnx.Param(jnp.asarray(np.log(np.abs(diag)), jnp.float32))

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
