"""Programs shared by every method, compiled once per model and shapes (not per method).

* :func:`approximation_weights`: log p and log p - log q of an approximation's draws,
  for PSIS k-hat (Laplace, VI);
* :func:`constrained_draws`: the draws on the constrained space (latent and
  deterministic sites) and the pointwise log-likelihood, for the results.

Both bind the full data (every item of subsampled plates).
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["approximation_weights", "constrained_draws"]


def _weights(ld, bar, approx, draws):
    lp = jax.vmap(ld.posterior_logdensity_fn)(ld.unravel(draws))
    return lp, lp - approx.log_prob(draws)


def approximation_weights(rt, approx, draws):
    """``(lp, log_weight)``, each (S,), for flat draws (S, D) of ``approx`` (which has
    ``log_prob``): the unnormalised log posterior (Jacobian included) and log p - log q."""
    return rt.call("weights", _weights, approx, draws, full_data=True, config=None)


def _constrain(ld, bar, position):
    mapped = jax.vmap(jax.vmap(ld.constrain))(position)
    loglik = jax.vmap(jax.vmap(ld.pointwise_loglik))(position) if ld.split.observed else {}
    return mapped, loglik, ld.split.observed


def constrained_draws(rt, position):
    """``(posterior, log_likelihood, observed)`` as numpy dicts for ``position`` with leaves
    (chain, draw, *unconstrained shape)."""
    out = rt.call("results", _constrain, position, full_data=True, config=None)
    return tuple({k: np.asarray(v) for k, v in d.items()} for d in out)
