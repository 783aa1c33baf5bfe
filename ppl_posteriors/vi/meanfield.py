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
from .guide import Guide

__all__ = ["MeanFieldGaussian", "MeanFieldParams", "entropy", "guide", "init", "log_prob", "sample"]

_LOG2PI = math.log(2 * math.pi)


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
    return -0.5 * jnp.sum(u * u, -1) - jnp.sum(params.log_scale) - 0.5 * d * _LOG2PI


def entropy(params: MeanFieldParams) -> jax.Array:
    """H[q] = Σ_i log σ_i + D/2 (1 + log 2π), a scalar in nats (Kucukelbir et al. 2017)."""
    d = params.loc.shape[-1]
    return jnp.sum(params.log_scale) + 0.5 * d * (1.0 + _LOG2PI)


def guide(init_scale: float = 0.1) -> Guide:
    """The mean-field :class:`~ppl_posteriors.vi.guide.Guide` (sd ``init_scale`` at init)."""

    def sample_and_log_prob(key, params, n):
        z = sample(key, params, n)
        return z, log_prob(params, z)

    return Guide(
        "meanfield",
        lambda key, loc: init(loc, init_scale),
        sample_and_log_prob,
        log_prob,
        entropy,
        MeanFieldGaussian.from_params,
        lambda p: (p.loc, jnp.exp(2.0 * p.log_scale)),
        lambda a: MeanFieldParams(jnp.asarray(a.mean), jnp.log(jnp.asarray(a.scale)))
        if isinstance(a, MeanFieldGaussian) else None,
        # σ_i = H_ii^(-1/2): the mean-field reverse-KL optimum for N(mode, H⁻¹)
        lambda key, mode, h: MeanFieldParams(mode, -0.5 * jnp.log(jnp.diag(h))),
    )


@register_approximation
class MeanFieldGaussian(NamedTuple):
    """Fitted mean-field Gaussian: mean (D,), scale (D,) (sd, position units), and
    optionally the objective trace of the fit (steps,) under the objective's name
    (``trace_name``, e.g. ``"elbo"``), kept with it for plots."""

    mean: jax.Array
    scale: jax.Array
    trace: jax.Array | None = None
    trace_name: str = "elbo"

    kind = "gaussian_meanfield"

    @property
    def elbo(self):
        return self.trace if self.trace_name == "elbo" else None

    @classmethod
    def from_params(cls, params: MeanFieldParams) -> MeanFieldGaussian:
        return cls(params.loc, jnp.exp(params.log_scale))

    def sample_flat(self, rng_key, num_samples: int) -> jax.Array:
        return sample(rng_key, MeanFieldParams(self.mean, jnp.log(self.scale)), num_samples)

    def log_prob(self, z) -> jax.Array:
        return log_prob(MeanFieldParams(self.mean, jnp.log(self.scale)), z)

    def to_arrays(self):
        out = {"mean": (("param",), self.mean), "scale": (("param",), self.scale)}
        return _with_trace(out, self)

    @classmethod
    def from_arrays(cls, arrays) -> MeanFieldGaussian:
        return cls(jnp.asarray(arrays["mean"]), jnp.asarray(arrays["scale"]), *_trace_of(arrays))


# objective names a stored trace can have (see objectives.OBJECTIVES)
TRACE_NAMES = ("elbo", "forward_kl", "iwae", "renyi", "chi2", "gvi")


def _with_trace(out: dict, approx) -> dict:
    if approx.trace is not None:
        out[approx.trace_name] = (("step",), approx.trace)
    return out


def _trace_of(arrays) -> tuple:
    for name in TRACE_NAMES:
        if name in arrays:
            return arrays[name], name
    return None, "elbo"
