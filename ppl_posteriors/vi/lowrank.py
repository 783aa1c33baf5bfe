"""Low-rank-plus-diagonal Gaussian guide on the flat unconstrained space.

q_φ(z) = N(z; μ, F Fᵀ + diag(d²)), F (D, r), d > 0 (D,), φ = (μ, F, log d). Draws
z = μ + F ε₁ + d ⊙ ε₂ with ε₁ ~ N(0, I_r), ε₂ ~ N(0, I_D). With the capacitance
C = I_r + Fᵀ diag(d⁻²) F = K Kᵀ (Cholesky), the Woodbury identity and the matrix
determinant lemma give, for r = z - μ and u = Fᵀ diag(d⁻²) r,

    log q(z) = -½ (rᵀ diag(d⁻²) r - ‖K⁻¹ u‖²) - Σ log d_i - Σ log K_jj - D/2 log 2π,
    H[q]    = Σ log d_i + Σ log K_jj + D/2 (1 + log 2π),

at O(D r²) per point. F starts at small random values (F = 0 is a stationary point of
the ELBO in F). References: Rezende, Mohamed & Wierstra (2014), ICML, §4 (rank-one
plus diagonal); Ong, Nott & Smith (2018), "Gaussian variational approximation with a
factor covariance structure", J. Comput. Graph. Stat. 27:465-478.
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

__all__ = ["LowRankGaussian", "LowRankParams", "guide"]

_LOG2PI = math.log(2 * math.pi)


class LowRankParams(NamedTuple):
    """loc (D,); cov_factor F (D, r); log_diag (D,) = log d (position units)."""

    loc: jax.Array
    cov_factor: jax.Array
    log_diag: jax.Array


def _capacitance_cholesky(factor, diag):
    a = factor / diag[:, None] ** 2
    cap = jnp.eye(factor.shape[1], dtype=factor.dtype) + factor.T @ a
    return jnp.linalg.cholesky(cap), a


def _log_prob(loc, factor, diag, z):
    k, a = _capacitance_cholesky(factor, diag)
    r = z - loc
    u = solve_triangular(k, (r @ a).T, lower=True).T
    maha = jnp.sum((r / diag) ** 2, -1) - jnp.sum(u * u, -1)
    d = loc.shape[-1]
    return -0.5 * maha - jnp.sum(jnp.log(diag)) - jnp.sum(jnp.log(jnp.diag(k))) - 0.5 * d * _LOG2PI


def _entropy(factor, diag):
    k, _ = _capacitance_cholesky(factor, diag)
    d = diag.shape[-1]
    return jnp.sum(jnp.log(diag)) + jnp.sum(jnp.log(jnp.diag(k))) + 0.5 * d * (1.0 + _LOG2PI)


def _sample(key, loc, factor, diag, n):
    k1, k2 = jax.random.split(key)
    e1 = jax.random.normal(k1, (n, factor.shape[1]), loc.dtype)
    e2 = jax.random.normal(k2, (n, loc.shape[0]), loc.dtype)
    return loc + e1 @ factor.T + diag * e2


def guide(rank: int, init_scale: float = 0.1) -> Guide:
    """The low-rank :class:`~ppl_posteriors.vi.guide.Guide` of ``rank`` r: d = ``init_scale``
    and F ~ N(0, (init_scale / 10)²) entrywise at init."""

    def init(key, loc):
        factor = 0.1 * init_scale * jax.random.normal(key, (loc.shape[0], rank), loc.dtype)
        return LowRankParams(loc, factor, jnp.full_like(loc, math.log(init_scale)))

    def log_prob(params, z):
        return _log_prob(params.loc, params.cov_factor, jnp.exp(params.log_diag), z)

    def sample_and_log_prob(key, params, n):
        z = _sample(key, params.loc, params.cov_factor, jnp.exp(params.log_diag), n)
        return z, log_prob(params, z)

    def entropy(params):
        return _entropy(params.cov_factor, jnp.exp(params.log_diag))

    def approximation(params):
        return LowRankGaussian(params.loc, params.cov_factor, jnp.exp(params.log_diag))

    def moments(params):
        return params.loc, jnp.sum(params.cov_factor**2, -1) + jnp.exp(2.0 * params.log_diag)

    def from_approximation(a):
        if not isinstance(a, LowRankGaussian) or a.cov_factor.shape[-1] != rank:
            return None
        return LowRankParams(jnp.asarray(a.mean), jnp.asarray(a.cov_factor), jnp.log(jnp.asarray(a.diag)))

    def init_laplace(key, mode, h):
        # Σ = H⁻¹; F: its top-r eigenvectors scaled as in probabilistic PCA (Tipping & Bishop
        # 1999: sqrt(λ_j - σ²), σ² the mean of the other eigenvalues); d² matches diag(Σ),
        # floored at a quarter of the conditional variances 1 / H_ii
        cov = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), jnp.eye(h.shape[0], dtype=h.dtype))
        lam, vec = jnp.linalg.eigh(0.5 * (cov + cov.T))  # ascending
        r = min(rank, h.shape[0])
        rest = lam[: h.shape[0] - r]
        sigma2 = jnp.mean(rest) if rest.size else jnp.zeros((), h.dtype)
        top = jnp.sqrt(jnp.maximum(lam[h.shape[0] - r:] - sigma2, 0.0))
        factor = jnp.zeros((h.shape[0], rank), h.dtype).at[:, :r].set(vec[:, h.shape[0] - r:] * top)
        d2 = jnp.maximum(jnp.diag(cov) - jnp.sum(factor**2, -1), 0.25 / jnp.diag(h))
        return LowRankParams(mode, factor, 0.5 * jnp.log(d2))

    return Guide(f"lowrank{rank}", init, sample_and_log_prob, log_prob, entropy, approximation, moments,
                 from_approximation, init_laplace)


@register_approximation
class LowRankGaussian(NamedTuple):
    """Fitted N(mean, F Fᵀ + diag(d²)): mean (D,), cov_factor F (D, r), diag d (D,),
    optionally the objective trace (steps,) named ``trace_name``."""

    mean: jax.Array
    cov_factor: jax.Array
    diag: jax.Array
    trace: jax.Array | None = None
    trace_name: str = "elbo"

    kind = "gaussian_lowrank"

    def sample_flat(self, rng_key, num_samples: int) -> jax.Array:
        return _sample(rng_key, self.mean, self.cov_factor, self.diag, num_samples)

    def log_prob(self, z) -> jax.Array:
        return _log_prob(self.mean, self.cov_factor, self.diag, z)

    def covariance(self) -> jax.Array:
        """F Fᵀ + diag(d²) (D, D)."""
        return self.cov_factor @ self.cov_factor.T + jnp.diag(self.diag**2)

    def to_arrays(self):
        out = {
            "mean": (("param",), self.mean),
            "cov_factor": (("param", "rank"), self.cov_factor),
            "diag": (("param",), self.diag),
            # marginal sds sqrt(diag(F Fᵀ) + d²), for comparison with other guides (not reloaded)
            "scale": (("param",), jnp.sqrt(jnp.sum(self.cov_factor**2, -1) + self.diag**2)),
        }
        return _with_trace(out, self)

    @classmethod
    def from_arrays(cls, arrays) -> LowRankGaussian:
        a = {k: jnp.asarray(arrays[k]) for k in ("mean", "cov_factor", "diag")}
        return cls(a["mean"], a["cov_factor"], a["diag"], *_trace_of(arrays))
