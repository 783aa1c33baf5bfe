"""Mean-field Gaussian guide on the flat unconstrained space (ADVI).

q_φ(z) = Π_i N(z_i; μ_i, σ_i²), φ = (μ, ω) with σ = exp(ω) (Kucukelbir et al. 2017,
"Automatic Differentiation Variational Inference", JMLR 18:1-45). Reparametrised
draws z = μ + σ ⊙ ε, ε ~ N(0, I); entropy H[q] = Σ ω_i + D/2 (1 + log 2π).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..results.approximation import register_approximation

__all__ = ["MeanFieldGaussian", "MeanFieldParams", "entropy", "init", "log_prob", "sample"]


class MeanFieldParams(NamedTuple):
    """Variational parameters: loc (D,) and log_scale (D,) (log of the sd, position units)."""

    loc: jax.Array
    log_scale: jax.Array


def init(loc: jax.Array, init_scale: float = 0.1) -> MeanFieldParams:
    """Guide centred at ``loc`` (D,) with every sd equal to ``init_scale``."""
    return MeanFieldParams(loc, jnp.full_like(loc, math.log(init_scale)))


def sample(rng_key, params: MeanFieldParams, num_samples: int) -> jax.Array:
    """Reparametrised draws (num_samples, D), differentiable in ``params``."""
    eps = jax.random.normal(rng_key, (num_samples,) + params.loc.shape, params.loc.dtype)
    return params.loc + jnp.exp(params.log_scale) * eps


def log_prob(params: MeanFieldParams, z: jax.Array) -> jax.Array:
    """log q(z) for z (..., D)."""
    u = (z - params.loc) * jnp.exp(-params.log_scale)
    d = params.loc.shape[-1]
    return -0.5 * jnp.sum(u * u, -1) - jnp.sum(params.log_scale) - 0.5 * d * math.log(2 * math.pi)


def entropy(params: MeanFieldParams) -> jax.Array:
    """H[q] = Σ_i log σ_i + D/2 (1 + log 2π), a scalar in nats (Kucukelbir et al. 2017)."""
    d = params.loc.shape[-1]
    return jnp.sum(params.log_scale) + 0.5 * d * (1.0 + math.log(2 * math.pi))


@register_approximation
class MeanFieldGaussian(NamedTuple):
    """Fitted mean-field Gaussian: mean (D,), scale (D,) (sd, position units), and
    optionally the ELBO trace of the fit (num_steps,), kept with it for plots."""

    mean: jax.Array
    scale: jax.Array
    elbo: jax.Array | None = None

    kind = "gaussian_meanfield"

    @classmethod
    def from_params(cls, params: MeanFieldParams, elbo=None) -> MeanFieldGaussian:
        return cls(params.loc, jnp.exp(params.log_scale), elbo)

    def sample_flat(self, rng_key, num_samples: int) -> jax.Array:
        return sample(rng_key, MeanFieldParams(self.mean, jnp.log(self.scale)), num_samples)

    def log_prob(self, z) -> jax.Array:
        return log_prob(MeanFieldParams(self.mean, jnp.log(self.scale)), z)

    def to_arrays(self):
        out = {"mean": (("param",), self.mean), "scale": (("param",), self.scale)}
        if self.elbo is not None:
            out["elbo"] = (("step",), self.elbo)
        return out

    @classmethod
    def from_arrays(cls, arrays) -> MeanFieldGaussian:
        elbo = arrays.get("elbo")
        return cls(jnp.asarray(arrays["mean"]), jnp.asarray(arrays["scale"]), elbo)
