"""``pp.NUTS``: the No-U-Turn Sampler from BlackJAX with Stan's warmup.

Multinomial NUTS (Hoffman & Gelman 2014, JMLR 15:1593-1623; Betancourt 2017,
arXiv:1701.02434) as implemented by ``blackjax.nuts``; warmup adapts the step size
(dual averaging towards ``target_accept``) and a diagonal or dense inverse mass
matrix in Stan's expanding windows. Chains start from uniform(-2, 2) draws on the
unconstrained space (Stan's default) and run vmapped in one compiled program.

Divergent transitions after warmup are counted and reported as
``Status.DIVERGENCES`` with a ``NumericalWarning``: they mean that the sampler
cannot explore part of the posterior and that the draws may be biased.
"""

from __future__ import annotations

import dataclasses

import blackjax
import numpy as np

from ..registry import register_method
from .base import WindowAdapted
from .metric import kernel_metric

__all__ = ["NUTS"]


@dataclasses.dataclass(frozen=True)
class NUTS(WindowAdapted):
    """No-U-Turn Sampler (BlackJAX) with windowed adaptation of the step size and mass matrix.

    Parameters
    ----------
    num_chains, num_warmup, num_samples, init_radius, init, init_from, mass_matrix, dense_mass
        See :class:`~ppl_posteriors.mcmc.base.Sampler` and :class:`~ppl_posteriors.mcmc.base.WindowAdapted`
        (defaults 4, 1000, 1000, 2.0, "uniform", None, "auto", False); ``mass_matrix`` may be
        "auto" (nutpie's low-rank plus diagonal metric for 20 <= D <= 1000, else Stan's
        diagonal windows), "diag", "dense", "nutpie" or "low_rank".
    target_accept : float, default 0.8
        Target mean acceptance probability of the step-size adaptation, in (0, 1).
        Raise it (0.9, 0.95, 0.99) when there are divergences.
    max_tree_depth : int, default 10
        Maximum number of trajectory doublings (at most 2**depth - 1 leapfrog steps).

    Raises
    ------
    ConfigError
        Invalid option values.
    """

    target_accept: float = 0.8
    max_tree_depth: int = 10
    mass_matrix: str = "auto"
    display_name = "NUTS"
    mass_matrices = ("auto", "diag", "dense", "nutpie", "low_rank")

    def __post_init__(self):
        super().__post_init__()
        self._positive_int("max_tree_depth")

    def build(self, logdensity_fn, tuned):
        return blackjax.nuts(
            logdensity_fn, tuned["step_size"], kernel_metric(tuned), max_num_doublings=self.max_tree_depth
        )

    def stats(self, state, info, tuned):
        return {
            "lp": state.logdensity,
            "energy": info.energy,
            "diverging": info.is_divergent,
            "tree_depth": info.num_trajectory_expansions,
            "n_steps": info.num_integration_steps,
            "acceptance_rate": info.acceptance_rate,
        }

    def extra_info(self, stats, tuned):
        return {"max_tree_depth_fraction": float(np.mean(stats["tree_depth"] >= self.max_tree_depth)),
                **self.mass_matrix_info(tuned)}


register_method("nuts", NUTS, "No-U-Turn Sampler (BlackJAX); mass matrix auto: low-rank (20 <= D <= 1000) or diag")
