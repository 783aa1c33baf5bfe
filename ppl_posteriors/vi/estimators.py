"""Gradient estimators: where the gradient of an objective flows.

The *estimator* axis of VI = guide × objective × estimator. Each returns a surrogate
loss whose gradient (in the guide parameters φ) is the estimator, and the objective's
value. Notation: K draws z_k = T_φ(ε_k) per group, log w_k = log p(z_k) - log q_φ(z_k),
ŵ = softmax(β log w) (normalised w^β), ⊥ = ``stop_gradient``; M_β as in
:mod:`.objectives`.

* ``"pathwise"`` (reparametrisation): differentiate M_β(log p(T_φ(ε)) - log q_φ(T_φ(ε)))
  through z and φ. For the ELBO with a Gaussian guide the entropy is taken in closed
  form (Kingma & Welling 2014; Kucukelbir et al. 2017). Unbiased for ∇E[M_β].
* ``"stl"`` (sticking the landing; ELBO only): log q_{⊥φ}(T_φ(ε)): drops the score term
  whose mean is zero, so the variance vanishes when q = p (Roeder, Wu & Duvenaud
  2017, NeurIPS). For K > 1 bounds it is biased (Tucker et al. 2019, §3), so refused.
* ``"dreg"`` (doubly reparametrised; IWAE, Rényi, CUBO, forward KL): the score term
  of the total derivative is rewritten with E_q[f(z) ∂_φ log q_φ(z)] = E[∂_z f · ∂_φ T_φ]
  (Tucker, Lawson, Gu & Maddison 2019, "Doubly reparameterized gradient estimators
  for Monte Carlo objectives", ICLR, eq. 5). For M_β this gives

      ∇ = Σ_k ⊥((1-β) ŵ_k + β ŵ_k²) ∇_φ log w_{⊥φ}(T_φ(ε_k)),

  which is Tucker et al.'s IWAE-DReG (ŵ², β = 1) and STL at β = 0; for forward KL
  (their RWS-DReG wake-φ update) ∇ = Σ_k ⊥(w̃_k² - w̃_k) ∇_φ log w_{⊥φ}(T_φ(ε_k)).
* ``"score"`` (score function / REINFORCE with a control variate; no gradient of
  log p needed, e.g. for simulators that are not differentiable): z held fixed,
  ∇E[L̂] = E[Σ_k (L̂ - b_k) ∇ log q(z_k)] + E[∇_φ L̂ | z]. For K = 1 (ELBO) the
  baseline b_s is the leave-one-out mean of the other groups' L̂ (Kool, van Hoof &
  Welling 2019, "Buy 4 REINFORCE samples, get a baseline for free!"), so
  ``num_particles >= 2``; for K > 1 it is VIMCO's b_k = M_β with log w_k replaced by the
  mean of the others (Mnih & Rezende 2016, "Variational inference for Monte Carlo
  objectives", ICML), so ``num_importance >= 2``. Baselines that do not depend on z_k
  keep it unbiased. For forward KL the score gradient is -Σ_k ⊥(w̃_k) ∇_φ log q_φ(z_k).

Every estimator above is unbiased for the gradient of the expectation of its
finite-sample objective estimate (tests/test_vi_objectives.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from .._errors import ConfigError, closest
from .guide import Guide
from .objectives import Objective, estimate, power_mean

__all__ = ["ESTIMATORS", "check", "default_estimator", "surrogate"]

ESTIMATORS = ("pathwise", "score", "stl", "dreg")

sg = jax.lax.stop_gradient


def default_estimator(objective: Objective) -> str:
    """"score" for forward KL (its gradient is a score function), "pathwise" otherwise."""
    return "score" if objective.name == "forward_kl" else "pathwise"


def check(objective: Objective, estimator: str, guide_name: str, has_log_prob: bool,
          num_particles: int, num_importance: int) -> None:
    """Raise ConfigError for an impossible (objective, estimator, guide) combination.

    ``has_log_prob``: whether the guide can evaluate log q at a given point."""
    if estimator not in ESTIMATORS:
        raise ConfigError(f"estimator={estimator!r} is unknown; {closest(str(estimator), ESTIMATORS)}")
    o = objective.name
    if o == "forward_kl" and estimator in ("pathwise", "stl"):
        raise ConfigError(
            f"objective='forward_kl' with estimator={estimator!r}: the draws come from q, and the "
            "forward-KL gradient -E_p[∇ log q] is a self-normalised score function; use "
            "estimator='score' or 'dreg'"
        )
    if estimator == "stl" and objective.grouped:
        raise ConfigError(
            f"estimator='stl' with objective={o!r}: sticking the landing is biased for K-sample "
            "bounds (Tucker et al. 2019, §3); use estimator='dreg' (its unbiased generalisation)"
        )
    if estimator == "dreg" and not objective.grouped:
        raise ConfigError(
            "estimator='dreg' with objective='elbo': with one draw per group DReG is "
            "sticking the landing; use estimator='stl'"
        )
    if estimator in ("score", "stl", "dreg") and not has_log_prob:
        raise ConfigError(
            f"estimator={estimator!r} needs log q at a given point, which the {guide_name} guide "
            "cannot evaluate (a flow with no analytic inverse, or a NumPyro guide); use "
            "estimator='pathwise' or another guide"
        )
    if estimator == "score":
        if objective.grouped and num_importance < 2:
            raise ConfigError(
                f"estimator='score' with objective={o!r} uses the VIMCO leave-one-out baseline, "
                "which needs num_importance >= 2"
            )
        if not objective.grouped and num_particles < 2:
            raise ConfigError(
                "estimator='score' with objective='elbo' uses the leave-one-out baseline over "
                "particles, which needs num_particles >= 2 (e.g. num_particles=8)"
            )


def _vimco_baseline(log_w: jax.Array, beta: float) -> jax.Array:
    """b (S, K): M_β of each group with log w_k replaced by the mean of the other K-1."""
    k = log_w.shape[-1]
    others = (jnp.sum(log_w, -1, keepdims=True) - log_w) / (k - 1)
    eye = jnp.eye(k, dtype=bool)
    replaced = jnp.where(eye, others[..., :, None], log_w[..., None, :])  # (S, K, K)
    return power_mean(replaced, beta)


def surrogate(
    guide: Guide,
    objective: Objective,
    estimator: str,
    params,
    rng_key,
    logdensity_fn: Callable[[jax.Array], jax.Array],
    num_particles: int = 1,
    num_importance: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """``(loss, value)``: a scalar surrogate loss whose gradient in ``params`` is the chosen
    estimator of -∇(objective) for bounds that are maximised (+∇ for those minimised), and
    the objective's Monte Carlo value (stopped), in nats.

    ``logdensity_fn`` maps a flat position (D,) to log p (unnormalised, scalar). Draws:
    ``num_particles`` groups S of ``num_importance`` K (K = 1 for the ELBO).
    """
    s = num_particles
    k = num_importance if objective.grouped else 1
    n = s * k
    sp = sg(params)
    beta = objective.beta
    sign = -1.0 if objective.maximise else 1.0  # loss = sign * objective

    if estimator == "score":
        z, _ = guide.sample_and_log_prob(rng_key, sp, n)
        z = sg(z)
        log_q = guide.log_prob(params, z).reshape(s, k)  # gradient in φ at fixed z
        log_p = sg(jax.vmap(logdensity_fn)(z)).reshape(s, k)
        log_w = sg(log_p - log_q)
        if objective.name == "forward_kl":
            loss = -jnp.mean(jnp.sum(sg(jax.nn.softmax(log_w, -1)) * log_q, -1))
            return loss, estimate(objective, log_w)
        l_hat = power_mean(log_w, beta)  # (S,)
        if k > 1:
            base = _vimco_baseline(log_w, beta)
        else:
            base = ((jnp.sum(l_hat) - l_hat) / (s - 1))[:, None]
        surr = jnp.mean(jnp.sum(sg(l_hat[:, None] - base) * log_q, -1) + power_mean(log_p - log_q, beta))
        return sign * surr, jnp.mean(l_hat)

    z, log_q = guide.sample_and_log_prob(rng_key, params, n)
    log_p = jax.vmap(logdensity_fn)(z)
    if estimator == "pathwise":
        if objective.name == "elbo" and guide.entropy is not None:
            surr = jnp.mean(log_p) + guide.entropy(params)
            return sign * surr, sg(surr)
        log_w = (log_p - log_q).reshape(s, k)
        surr = estimate(objective, log_w)
        return sign * surr, sg(surr)

    log_w = (log_p - guide.log_prob(sp, z)).reshape(s, k)  # q's parameters stopped
    if estimator == "stl":
        surr = jnp.mean(log_w)
        return sign * surr, sg(surr)
    # dreg
    if objective.name == "forward_kl":
        w = sg(jax.nn.softmax(log_w, -1))
        loss = jnp.mean(jnp.sum((w * w - w) * log_w, -1))
        return loss, sg(estimate(objective, log_w))
    w = sg(jax.nn.softmax(beta * log_w, -1))
    surr = jnp.mean(jnp.sum(((1.0 - beta) * w + beta * w * w) * log_w, -1))
    return sign * surr, sg(estimate(objective, log_w))
