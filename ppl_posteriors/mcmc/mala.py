"""``pp.MALA``: the Metropolis-adjusted Langevin algorithm from BlackJAX, preconditioned.

A proposal z' = z + ε M⁻¹∇log π(z) + √(2ε) M^{-1/2} ξ, ξ ~ N(0, I), accepted with the
Metropolis-Hastings probability (Roberts & Tweedie 1996, Bernoulli 2:341; Roberts &
Rosenthal 1998, whose optimal acceptance rate is 0.574). ``blackjax.mala`` has no
mass matrix, so the adapter runs it in whitened coordinates u = S⁻¹z with S Sᵀ = M⁻¹
(the inverse mass matrix of Stan's window adaptation): the state's position and
gradient are mapped in and out around each BlackJAX step (∇_u = Sᵀ∇_z), at no extra
gradient evaluation.
"""

from __future__ import annotations

import dataclasses

import blackjax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import solve_triangular

from ..registry import register_method
from .base import WindowAdapted, mass_matrix_sqrt

__all__ = ["MALA", "whitened"]


def whitened(algorithm_fn, logdensity_fn, tuned, state_cls):
    """Run ``algorithm_fn(logdensity_u)`` (a BlackJAX algorithm without a mass matrix
    whose state is ``state_cls(position, logdensity, logdensity_grad)``) in the
    coordinates u = S⁻¹ z, S Sᵀ = ``tuned["inverse_mass_matrix"]`` ((D,) or (D, D)); the
    returned algorithm's states and draws are in z. A dense matrix's S and S⁻ᵀ are
    ``tuned["imm_chol"]`` and ``tuned["mass_sqrt"]`` where the adaptation made them
    (:func:`.metric.dense_factors`: then the kernel calls no LAPACK routine, which a
    batched call on host devices could deadlock), else they are factored here."""
    imm = tuned["inverse_mass_matrix"]
    diag = jnp.ndim(imm) == 1
    if diag:
        s, s_inv_t = mass_matrix_sqrt(imm), None  # (D,): elementwise
    elif "imm_chol" in tuned:
        s, s_inv_t = tuned["imm_chol"], tuned["mass_sqrt"]
    else:
        s = mass_matrix_sqrt(imm)
        s_inv_t = solve_triangular(s, jnp.eye(s.shape[-1], dtype=s.dtype), lower=True, trans=1)

    def z_of(u):
        return s * u if diag else s @ u

    def u_of(z):  # S⁻¹ z = (S⁻ᵀ)ᵀ z
        return z / s if diag else z @ s_inv_t

    def grad_u_of(g):  # Sᵀ g
        return s * g if diag else g @ s

    def grad_z_of(g):  # S⁻ᵀ g
        return g / s if diag else s_inv_t @ g

    def init(position, rng_key=None):
        return state_cls(*blackjax.mala.init(position, logdensity_fn))

    def step(rng_key, state):
        flat, unravel = ravel_pytree(state.position)
        algorithm = algorithm_fn(lambda u: logdensity_fn(unravel(z_of(u))))
        inner = state_cls(u_of(flat), state.logdensity, grad_u_of(ravel_pytree(state.logdensity_grad)[0]))
        new, info = algorithm.step(rng_key, inner)
        out = state_cls(unravel(z_of(new.position)), new.logdensity, unravel(grad_z_of(new.logdensity_grad)))
        return out, info

    return SamplingAlgorithm(init, step)


@dataclasses.dataclass(frozen=True)
class MALA(WindowAdapted):
    """Metropolis-adjusted Langevin algorithm with Stan's window adaptation (step size and mass matrix).

    Parameters
    ----------
    num_chains, num_warmup, num_samples, init_radius, init, init_from, mass_matrix, dense_mass
        See :class:`~ppl_posteriors.mcmc.base.Sampler`.
    target_accept : float, default 0.574
        Target acceptance rate of the step-size adaptation (optimal for MALA in high
        dimension, Roberts & Rosenthal 1998).

    Raises
    ------
    ConfigError
        Invalid option values.
    """

    target_accept: float = 0.574
    display_name = "MALA"

    def build(self, logdensity_fn, tuned):
        from blackjax.mcmc.mala import MALAState

        return whitened(lambda ld: blackjax.mala(ld, tuned["step_size"]), logdensity_fn, tuned, MALAState)

    def stats(self, state, info, tuned):
        return {"lp": state.logdensity, "n_steps": jnp.ones((), jnp.int32), "acceptance_rate": info.acceptance_rate}


register_method("mala", MALA, "Metropolis-adjusted Langevin algorithm (BlackJAX), preconditioned, window adaptation")
