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


# draws per vmapped block of the log densities: bounds the memory of a big model's forward pass
# over thousands of draws (S x data x hidden units) at ~no cost for small ones
_WEIGHT_BLOCK = 256


def _weights(ld, bar, approx, draws):
    lp = jax.lax.map(lambda x: ld.posterior_logdensity_fn(ld.unravel(x)), draws,
                     batch_size=min(draws.shape[0], _WEIGHT_BLOCK))
    return lp, lp - approx.log_prob(draws)


def approximation_weights(rt, approx, draws):
    """``(lp, log_weight)``, each (S,), for flat draws (S, D) of ``approx`` (which has
    ``log_prob``): the unnormalised log posterior (Jacobian included) and log p - log q.

    With batches (``pp.Batches``) the log posterior is summed over one epoch: the
    global sites' terms once, the batch plate's terms from every batch, unscaled."""
    if rt.batches is None:
        return rt.call("weights", _weights, approx, draws, full_data=True, config=None)
    local = rt.batches.plate_sites

    def per_batch(ld, ctx, draws):
        terms = jax.vmap(ld.site_terms)(ld.unravel(draws))
        return sum(v for k, v in terms.items() if k in local)

    def global_terms(ld, ctx, draws):
        pos = ld.unravel(draws)
        terms = jax.vmap(ld.site_terms)(pos)
        lp_global = sum((v for k, v in terms.items() if k not in local), 0.0)
        if not ld.jacobian:  # the weights need the Jacobian of the posterior density
            lp_global = lp_global + jax.vmap(ld.posterior_logdensity_fn)(pos) - jax.vmap(ld.logdensity_fn)(pos)
        return lp_global

    lp = rt.call("weights_global", global_terms, draws, full_data=True, config=None)
    lp = lp + rt.epoch_sum("weights_local", per_batch, draws)
    return lp, lp - approx.log_prob(draws)


def _constrain(ld, bar, position):
    mapped = jax.vmap(jax.vmap(ld.constrain))(position)
    loglik = jax.vmap(jax.vmap(ld.pointwise_loglik))(position) if ld.split.observed else {}
    return mapped, loglik, ld.split.observed


def constrained_draws(rt, position):
    """``(posterior, log_likelihood, observed)`` as numpy dicts for ``position`` with leaves
    (chain, draw, *unconstrained shape).

    With batches the full data are never in memory: ``posterior`` holds the global
    sites (deterministic sites inside the batch plate are left out), and the other
    two are empty."""
    if rt.batches is not None:
        local = rt.batches.plate_sites

        def _global(ld, ctx, position):
            mapped = jax.vmap(jax.vmap(ld.constrain))(position)
            return {k: v for k, v in mapped.items() if k not in local}

        posterior = rt.call("results_batched", _global, position, full_data=True, config=None)
        return {k: np.asarray(v) for k, v in posterior.items()}, {}, {}
    out = rt.call("results", _constrain, position, full_data=True, config=None)
    return tuple({k: np.asarray(v) for k, v in d.items()} for d in out)
