"""``pp.RMH``: random-walk Metropolis from BlackJAX with an adapted Gaussian proposal.

Proposal z' = z + ε S ξ, ξ ~ N(0, I), with S Sᵀ the posterior covariance estimated by
Stan's window adaptation (diagonal, or dense with ``dense_mass``) and ε tuned by dual
averaging to the optimal acceptance rate for the dimension D: 0.44 for D = 1, 0.234
as D grows (Roberts, Gelman & Gilks 1997, Ann. Appl. Probab. 7:110; Roberts &
Rosenthal 2001, Stat. Sci. 16:351, table 1: 0.44, 0.35, 0.31, 0.28, 0.26 for D = 1..5;
Haario et al. 2001 for the adapted covariance). ``blackjax.normal_random_walk``
(additive-step Rosenbluth-Metropolis-Hastings). No gradients: one log-density
evaluation per transition.
"""

from __future__ import annotations

import dataclasses

import blackjax
import jax.numpy as jnp

from ..registry import register_method
from .adaptation import window_adaptation
from .base import WindowAdapted, mass_matrix_sqrt

_OPTIMAL = (0.44, 0.35, 0.31, 0.28, 0.26)  # Roberts & Rosenthal (2001), table 1

__all__ = ["RMH"]


@dataclasses.dataclass(frozen=True)
class RMH(WindowAdapted):
    """Random-walk Metropolis-Hastings with an adapted, scaled Gaussian proposal.

    Parameters
    ----------
    num_chains, num_warmup, num_samples, init_radius, dense_mass
        See :class:`~ppl_posteriors.mcmc.base.Sampler`.
    target_accept : float or None, default None
        Target acceptance rate of the proposal-scale adaptation; None: the optimum for the
        model's dimension D (0.44, 0.35, 0.31, 0.28, 0.26 for D = 1..5, then 0.234).

    Raises
    ------
    ConfigError
        Invalid option values.
    """

    target_accept: float | None = None
    display_name = "RMH"
    uses_gradients = False

    def __post_init__(self):
        if self.target_accept is None:  # validate the other options through a copy with a number
            dataclasses.replace(self, target_accept=0.5)
        else:
            super().__post_init__()

    def adaptation(self, logdensity_fn, ld, extras):
        target = self.target_accept
        if target is None:
            target = _OPTIMAL[ld.dim - 1] if ld.dim <= len(_OPTIMAL) else 0.234
        return window_adaptation(self.num_warmup, target, self.dense_mass)

    def build(self, logdensity_fn, tuned):
        sigma = tuned["step_size"] * mass_matrix_sqrt(tuned["inverse_mass_matrix"])
        return blackjax.normal_random_walk(logdensity_fn, sigma)

    def stats(self, state, info, tuned):
        return {"lp": state.logdensity, "n_steps": jnp.ones((), jnp.int32), "acceptance_rate": info.acceptance_rate}


register_method("rmh", RMH, "Random-walk Metropolis (BlackJAX) with an adapted Gaussian proposal")
