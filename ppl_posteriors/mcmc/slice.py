"""``pp.Slice``: multivariate (hit-and-run) slice sampling from BlackJAX.

Each transition draws a level log u = log π(z) - Exp(1), a random direction
d = S ξ / ‖S ξ‖ with ξ ~ N(0, I), brackets the slice {t : log π(z + t d) > log u}
along it by doubling from a width w, and draws t by shrinkage (Neal 2003, "Slice
sampling", Ann. Statist. 31:705, Figs. 4-6). No gradients and nothing to reject;
``n_steps`` counts the bracket expansions and shrinkage evaluations.
``blackjax.slice_sampling`` with ``direction_proposal(S)``. Warmup is Stan's
window adaptation of the mass matrix only (S Sᵀ = the estimated posterior
covariance; there is no step size to tune) and the width is ``width`` times the
root-mean-square posterior scale.
"""

from __future__ import annotations

import dataclasses

import blackjax
import jax.numpy as jnp
from blackjax.mcmc.slice import direction_proposal

from ..registry import register_method
from .base import WindowAdapted, mass_matrix_sqrt

__all__ = ["Slice"]


@dataclasses.dataclass(frozen=True)
class Slice(WindowAdapted):
    """Random-direction slice sampling with doubling and an adapted direction covariance.

    Parameters
    ----------
    num_chains, num_warmup, num_samples, init_radius, dense_mass
        See :class:`~ppl_posteriors.mcmc.base.Sampler`; warmup adapts the direction
        covariance (``target_accept`` is unused).
    width : float, default 2.0
        Initial bracket width, in units of the root-mean-square posterior scale.
    max_expansions : int, default 10
        Maximum doublings of the bracket.

    Raises
    ------
    ConfigError
        Invalid option values.
    """

    width: float = 2.0
    max_expansions: int = 10
    display_name = "Slice"
    uses_gradients = False
    reports_step_size = False

    def __post_init__(self):
        super().__post_init__()
        self._require(self.width > 0, "width", "must be > 0")
        self._positive_int("max_expansions")

    def build(self, logdensity_fn, tuned):
        imm = tuned["inverse_mass_matrix"]
        scale = jnp.sqrt(jnp.mean(imm if jnp.ndim(imm) == 1 else jnp.diag(imm)))
        return blackjax.slice_sampling(
            logdensity_fn,
            proposal_generator=direction_proposal(mass_matrix_sqrt(imm)),
            width=self.width * scale,
            max_expansions=self.max_expansions,
        )

    def stats(self, state, info, tuned):
        return {"lp": state.logdensity, "n_steps": jnp.asarray(info.num_expansions + info.num_shrink, jnp.int32)}


register_method("slice", Slice, "Random-direction slice sampling (BlackJAX) with an adapted direction covariance")
