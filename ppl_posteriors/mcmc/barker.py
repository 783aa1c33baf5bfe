"""``pp.Barker``: the Barker proposal (gradient-based, robust to step size) from BlackJAX.

Each coordinate moves by z_i ± |w_i| with w ~ N(0, ε² M⁻¹), the sign chosen with
probability 1 / (1 + exp(-w_i ∂_i log π(z))), then a Metropolis-Hastings correction
(Livingstone & Zanella 2022, "The Barker proposal: combining robustness and efficiency
in gradient-based MCMC", JRSS-B 84:496). ``blackjax.barker`` with step size and mass
matrix from Stan's window adaptation; the default target acceptance 0.4 follows the
optimal-scaling results for the Barker proposal (Vogrinc, Livingstone & Zanella 2023,
Biometrika 110:579).
"""

from __future__ import annotations

import dataclasses

import blackjax
import jax.numpy as jnp

from ..registry import register_method
from .base import WindowAdapted
from .metric import kernel_metric

__all__ = ["Barker"]


@dataclasses.dataclass(frozen=True)
class Barker(WindowAdapted):
    """Barker's locally balanced proposal with Stan's window adaptation.

    Parameters
    ----------
    num_chains, num_warmup, num_samples, init_radius, dense_mass
        See :class:`~ppl_posteriors.mcmc.base.Sampler`.
    target_accept : float, default 0.4
        Target acceptance rate of the step-size adaptation.

    Raises
    ------
    ConfigError
        Invalid option values.
    """

    target_accept: float = 0.4
    display_name = "Barker"

    def build(self, logdensity_fn, tuned):
        # kernel_metric: a dense matrix's factors come from the adaptation (no LAPACK call per step)
        return blackjax.barker(logdensity_fn, tuned["step_size"], kernel_metric(tuned))

    def stats(self, state, info, tuned):
        return {"lp": state.logdensity, "n_steps": jnp.ones((), jnp.int32), "acceptance_rate": info.acceptance_rate}


register_method("barker", Barker, "Barker proposal MCMC (BlackJAX), gradient-based, window adaptation")
