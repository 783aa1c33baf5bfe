"""Full-rank Gaussian guide on the flat unconstrained space.

q_φ(z) = N(z; μ, L Lᵀ) with L lower-triangular, φ = (μ, L̃): L = tril(L̃, -1) + diag(exp(diag L̃))
(positive diagonal, so the parametrisation is unconstrained). Draws z = μ + L ε,
ε ~ N(0, I_D); log q(z) = -½‖L⁻¹(z - μ)‖² - Σ_i log L_ii - D/2 log 2π; entropy
H[q] = Σ_i log L_ii + D/2 (1 + log 2π).

Reference: Kucukelbir et al. (2017), JMLR 18:1-45, §2.4 ("full-rank ADVI");
Titsias & Lázaro-Gredilla (2014), "Doubly stochastic variational Bayes", ICML.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from ..results.approximation import register_approximation
from .guide import Guide
from .meanfield import _trace_of, _with_trace

__all__ = ["FullRankGaussian", "FullRankParams", "guide"]

_LOG2PI = math.log(2 * math.pi)


class FullRankParams(NamedTuple):
    """loc (D,); raw_scale_tril (D, D): strictly-lower part = L's, diagonal = log L_ii."""

    loc: jax.Array
    raw_scale_tril: jax.Array


def scale_tril(params: FullRankParams) -> jax.Array:
    """L (D, D), lower-triangular with a positive diagonal."""
    raw = params.raw_scale_tril
    return jnp.tril(raw, -1) + jnp.diag(jnp.exp(jnp.diag(raw)))


def _log_prob(loc, tril, z):
    u = solve_triangular(tril, (z - loc).T, lower=True).T
    d = loc.shape[-1]
    return -0.5 * jnp.sum(u * u, -1) - jnp.sum(jnp.log(jnp.diag(tril))) - 0.5 * d * _LOG2PI


def guide(init_scale: float = 0.1) -> Guide:
    """The full-rank :class:`~ppl_posteriors.vi.guide.Guide`: L = ``init_scale`` · I at init."""

    def init(key, loc):
        return FullRankParams(loc, jnp.diag(jnp.full_like(loc, math.log(init_scale))))

    def sample_and_log_prob(key, params, n):
        tril = scale_tril(params)
        eps = jax.random.normal(key, (n,) + params.loc.shape, params.loc.dtype)
        z = params.loc + eps @ tril.T
        d = params.loc.shape[-1]
        logq = -0.5 * jnp.sum(eps * eps, -1) - jnp.sum(jnp.diag(params.raw_scale_tril)) - 0.5 * d * _LOG2PI
        return z, logq

    def log_prob(params, z):
        return _log_prob(params.loc, scale_tril(params), z)

    def entropy(params):
        d = params.loc.shape[-1]
        return jnp.sum(jnp.diag(params.raw_scale_tril)) + 0.5 * d * (1.0 + _LOG2PI)

    def approximation(params):
        return FullRankGaussian(params.loc, scale_tril(params))

    def moments(params):
        return params.loc, jnp.sum(scale_tril(params) ** 2, -1)

    def from_approximation(a):
        if not isinstance(a, FullRankGaussian):
            return None
        tril = jnp.asarray(a.scale_tril)
        return FullRankParams(jnp.asarray(a.mean), jnp.tril(tril, -1) + jnp.diag(jnp.log(jnp.diag(tril))))

    def init_laplace(key, mode, h):
        cov = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), jnp.eye(h.shape[0], dtype=h.dtype))
        tril = jnp.linalg.cholesky(0.5 * (cov + cov.T))  # L Lᵀ = H⁻¹
        return FullRankParams(mode, jnp.tril(tril, -1) + jnp.diag(jnp.log(jnp.diag(tril))))

    return Guide("fullrank", init, sample_and_log_prob, log_prob, entropy, approximation, moments, from_approximation,
                 init_laplace)


@register_approximation
class FullRankGaussian(NamedTuple):
    """Fitted N(mean, L Lᵀ): mean (D,), scale_tril (D, D) lower-triangular (position units),
    and optionally the objective trace (steps,) named ``trace_name``."""

    mean: jax.Array
    scale_tril: jax.Array
    trace: jax.Array | None = None
    trace_name: str = "elbo"

    kind = "gaussian_fullrank"

    def sample_flat(self, rng_key, num_samples: int) -> jax.Array:
        eps = jax.random.normal(rng_key, (num_samples, self.mean.shape[0]), self.mean.dtype)
        return self.mean + eps @ self.scale_tril.T

    def log_prob(self, z) -> jax.Array:
        return _log_prob(self.mean, self.scale_tril, z)

    def covariance(self) -> jax.Array:
        """L Lᵀ (D, D)."""
        return self.scale_tril @ self.scale_tril.T

    def to_arrays(self):
        out = {
            "mean": (("param",), self.mean),
            "scale_tril": (("param", "param_"), self.scale_tril),
            # marginal sds sqrt(diag(L Lᵀ)), stored for comparison with other guides (not reloaded)
            "scale": (("param",), jnp.sqrt(jnp.sum(self.scale_tril**2, -1))),
        }
        return _with_trace(out, self)

    @classmethod
    def from_arrays(cls, arrays) -> FullRankGaussian:
        return cls(jnp.asarray(arrays["mean"]), jnp.asarray(arrays["scale_tril"]), *_trace_of(arrays))
