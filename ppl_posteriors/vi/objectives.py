"""Variational objectives: functions of the log importance weights log w = log p(z) - log q(z).

The *objective* axis of VI = guide × objective × estimator. Draws come in S groups of K
(``num_particles`` × ``num_importance``); each objective is estimated per group and
averaged over groups. With the power mean

    M_β(log w_{1:K}) = (1/β) log( (1/K) Σ_k w_k^β ),   M_0 = (1/K) Σ_k log w_k,

every bound below is M_β for some β (Li & Turner 2016, eq. 8); the estimators in
:mod:`.estimators` use that structure.

* ``"elbo"`` (reverse KL; sbi "rKL"): ELBO = E_q[log p - log q] = log Z - KL(q‖p),
  β = 0, K = 1; maximised. Blei, Kucukelbir & McAuliffe (2017), JASA 112:859-877.
* ``"iwae"`` (sbi "IW"): L_K = E[log (1/K) Σ_k w_k], β = 1; a lower bound on log Z that
  increases with K; maximised. Burda, Grosse & Salakhutdinov (2016), ICLR.
* ``"renyi"`` (sbi "alpha"): the variational Rényi bound
  L_α = 1/(1-α) log E_q[w^{1-α}] = log Z - D_α(q‖p), estimated with K draws, β = 1 - α.
  For α ≥ 0 a lower bound (maximised; α → 1 is the ELBO, α = 0 the IWAE bound); for
  α < 0 an upper bound (minimised). Li & Turner (2016), "Rényi divergence variational
  inference", NeurIPS.
* ``"chi2"``: the χ² upper bound CUBO₂ = ½ log E_q[w²] ≥ log Z (β = 2, i.e. Rényi with
  α = -1), minimised; its minimiser minimises the χ² divergence χ²(p‖q). Dieng, Tran,
  Ranganath, Paisley & Blei (2017), "Variational inference via χ upper bound
  minimization", NeurIPS.
* ``"forward_kl"`` (sbi "fKL"): KL(p‖q) = E_p[log p̄ - log q] with p̄ = p/Z, estimated by
  self-normalised importance sampling with the K draws of q:
  KL ≈ Σ_k w̃_k log w_k - log((1/K) Σ_k w_k), w̃ = softmax(log w); minimised. Its
  gradient -E_p[∇_φ log q] ≈ -Σ_k w̃_k ∇_φ log q(z_k) is that of sbi's fKL loss
  (Glöckler, Deistler & Macke 2022, "Variational methods for simulation-based
  inference", ICLR) and of the wake-φ update of reweighted wake-sleep (Bornschein &
  Bengio 2015).

All values are in nats. The finite-K estimates of the IWAE, Rényi and CUBO bounds are
biased (towards smaller values) as estimators of their K → ∞ limits; for a given K
they are what the estimators' gradients are unbiased for.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from .._errors import ConfigError, closest

__all__ = ["ALIASES", "OBJECTIVES", "Objective", "estimate", "forward_kl", "power_mean", "resolve"]

OBJECTIVES = ("elbo", "forward_kl", "iwae", "renyi", "chi2")
ALIASES = {
    "rKL": "elbo",
    "reverse_kl": "elbo",
    "fKL": "forward_kl",
    "IW": "iwae",
    "alpha": "renyi",
    "cubo": "chi2",
}


class Objective(NamedTuple):
    """A resolved objective.

    name : one of OBJECTIVES; beta : the power β of M_β (None for forward KL);
    maximise : True for lower bounds (ELBO, IWAE, Rényi α ≥ 0), False for upper bounds
    and divergences (CUBO, Rényi α < 0, forward KL); grouped : whether K > 1 draws per
    group enter one estimate (all but the ELBO).
    """

    name: str
    beta: float | None
    maximise: bool
    grouped: bool


def resolve(name: str, alpha: float = 0.5) -> Objective:
    """The :class:`Objective` named ``name`` (or an sbi alias), with Rényi's ``alpha``.

    Raises
    ------
    ConfigError
        Unknown name, or ``alpha == 1`` for ``"renyi"`` (that limit is the ELBO).
    """
    canon = ALIASES.get(name, name)
    if canon not in OBJECTIVES:
        raise ConfigError(
            f"objective={name!r} is unknown; {closest(str(name), list(OBJECTIVES) + list(ALIASES))}"
        )
    if canon == "elbo":
        return Objective("elbo", 0.0, True, False)
    if canon == "iwae":
        return Objective("iwae", 1.0, True, True)
    if canon == "chi2":
        return Objective("chi2", 2.0, False, True)
    if canon == "forward_kl":
        return Objective("forward_kl", None, False, True)
    alpha = float(alpha)
    if alpha == 1.0:
        raise ConfigError("objective='renyi' with alpha=1 is the ELBO; use objective='elbo'")
    return Objective("renyi", 1.0 - alpha, alpha >= 0.0, True)


def power_mean(log_w: jax.Array, beta: float) -> jax.Array:
    """M_β over the last axis: (1/β) log mean_k exp(β log w_k); the mean of log w at β = 0.

    log_w : (..., K) -> (...,), nats.
    """
    if beta == 0.0:
        return jnp.mean(log_w, -1)
    k = log_w.shape[-1]
    return (logsumexp(beta * log_w, -1) - jnp.log(k)) / beta


def forward_kl(log_w: jax.Array) -> jax.Array:
    """Self-normalised IS estimate of KL(p‖q) from log w (..., K) of K draws of q -> (...,)."""
    k = log_w.shape[-1]
    w = jax.nn.softmax(log_w, -1)
    return jnp.sum(w * log_w, -1) - (logsumexp(log_w, -1) - jnp.log(k))


def estimate(objective: Objective, log_w: jax.Array) -> jax.Array:
    """The objective's Monte Carlo value (scalar, nats) from log w (S, K): mean over groups."""
    if objective.name == "forward_kl":
        return jnp.mean(forward_kl(log_w))
    return jnp.mean(power_mean(log_w, objective.beta))
