"""Gaussian approximation parametrised by its mean and precision matrix.

q(z) = N(z; m, P⁻¹) with P = L Lᵀ (Cholesky). Draws: z = m + L⁻ᵀ ε, ε ~ N(0, I),
a triangular solve (no explicit inverse). Density:
log q(z) = -D/2 log 2π + Σ log L_ii - ½ ‖Lᵀ (z - m)‖².

Used by the Laplace approximation (Tierney & Kadane 1986; MacKay 1992).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from ..results.approximation import register_approximation

__all__ = ["DenseGaussian", "laplace_log_evidence"]


@register_approximation
class DenseGaussian(NamedTuple):
    """N(mean, precision⁻¹) on the flat unconstrained space.

    mean : (D,); precision : (D, D) symmetric positive definite (units 1/position²);
    cholesky : (D, D) lower-triangular L with precision = L Lᵀ.
    """

    mean: jax.Array
    precision: jax.Array
    cholesky: jax.Array

    kind = "gaussian_precision"

    @classmethod
    def from_precision(cls, mean, precision) -> DenseGaussian:
        return cls(mean, precision, jnp.linalg.cholesky(precision))

    def sample_flat(self, rng_key, num_samples: int) -> jax.Array:
        """Draws (num_samples, D)."""
        eps = jax.random.normal(rng_key, (num_samples, self.mean.shape[0]), self.mean.dtype)
        return self.mean + solve_triangular(self.cholesky.T, eps.T, lower=False).T

    def log_prob(self, z) -> jax.Array:
        """log q(z) for z (..., D)."""
        d = self.mean.shape[0]
        w = (z - self.mean) @ self.cholesky
        return -0.5 * d * math.log(2 * math.pi) + jnp.sum(jnp.log(jnp.diag(self.cholesky))) - 0.5 * jnp.sum(w * w, -1)

    def covariance(self) -> jax.Array:
        """P⁻¹ (D, D), from two triangular solves."""
        eye = jnp.eye(self.mean.shape[0], dtype=self.mean.dtype)
        linv = solve_triangular(self.cholesky, eye, lower=True)
        return linv.T @ linv

    def to_arrays(self):
        return {"mean": (("param",), self.mean), "precision": (("param", "param_"), self.precision)}

    @classmethod
    def from_arrays(cls, arrays) -> DenseGaussian:
        return cls.from_precision(jnp.asarray(arrays["mean"]), jnp.asarray(arrays["precision"]))


def laplace_log_evidence(logdensity_at_mode, cholesky) -> jax.Array:
    """log Z ≈ log p(y, z*) + D/2 log 2π - ½ log det P, with log det P = 2 Σ log L_ii."""
    d = cholesky.shape[0]
    return logdensity_at_mode + 0.5 * d * math.log(2 * math.pi) - jnp.sum(jnp.log(jnp.diag(cholesky)))
