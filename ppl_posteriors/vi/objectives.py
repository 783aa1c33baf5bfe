"""Variational objectives.

Reverse-KL ELBO with pathwise (reparametrisation) gradients,

    ELBO(φ) = E_{ε}[ log p(T_φ(ε)) ] + H[q_φ]              (closed-form entropy), or
    ELBO(φ) = E_{ε}[ log p(T_φ(ε)) - log q_{⊥φ}(T_φ(ε)) ]   (sticking the landing),

where ⊥ stops the gradient through the variational parameters in the score term.
Both have the same expectation; the sticking-the-landing (STL) estimator drops
the score-function term whose expectation is zero, so its variance vanishes when
q equals the posterior (Roeder, Wu & Duvenaud 2017, "Sticking the Landing",
NeurIPS).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from . import meanfield

__all__ = ["elbo"]


def elbo(
    flat_logdensity_fn: Callable[[jax.Array], jax.Array],
    params: meanfield.MeanFieldParams,
    rng_key,
    num_particles: int = 1,
    stl: bool = True,
) -> jax.Array:
    """Monte Carlo ELBO estimate (scalar, nats) from ``num_particles`` draws of the guide."""
    z = meanfield.sample(rng_key, params, num_particles)
    logp = jax.vmap(flat_logdensity_fn)(z)
    if stl:
        logq = meanfield.log_prob(jax.lax.stop_gradient(params), z)
        return jnp.mean(logp - logq)
    return jnp.mean(logp) + meanfield.entropy(params)
