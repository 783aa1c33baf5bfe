"""``pp.ChEESHMC``: jittered HMC tuned across many chains by ChEES, from BlackJAX.

ChEES-HMC (Hoffman, Radul & Sountsov 2021, AISTATS, "An adaptive MCMC scheme for
setting trajectory lengths in Hamiltonian Monte Carlo") runs many chains in
lockstep; during warmup it adapts one step size (dual averaging to the acceptance
rate 0.651) and one trajectory length T for all chains by stochastic gradient
ascent (Adam) on the Change in the Estimator of the Expected Square,
ChEES = ¼ E[(‖z' - E z‖² - ‖z - E z‖²)²], estimated across chains, and (here, by
default) a diagonal inverse mass matrix from the pooled chains. Each transition then
takes ceil(h_t · T / ε) leapfrog steps with h_t from a Halton sequence in (0, 1]
(jitter). ``blackjax.chees_adaptation`` runs the warmup (before the chain loop; it
advances the progress bar once per step) and ``blackjax.dynamic_hmc`` samples.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..registry import register_method
from .adaptation import tuned_before_loop
from .base import Sampler
from .hmc import hmc_stats, jittered_hmc

__all__ = ["ChEESHMC"]


class _Steps(NamedTuple):  # the warmup info we keep (BlackJAX wraps it; attribute access passes through)
    num_integration_steps: jax.Array


@dataclasses.dataclass(frozen=True)
class ChEESHMC(Sampler):
    """HMC with a jittered trajectory length tuned by ChEES across many chains.

    Parameters
    ----------
    num_chains : int, default 16
        Chains; the ChEES criterion is an average over them, so use many (>= 8).
    num_warmup, num_samples, init_radius
        See :class:`~ppl_posteriors.mcmc.base.Sampler`.
    target_accept : float, default 0.651
        Target acceptance rate of the step-size adaptation (BlackJAX's default).
    initial_step_size : float, default 0.1
    learning_rate : float, default 0.025
        Adam learning rate of the log trajectory length.
    adapt_mass_matrix : bool, default True
        Estimate a diagonal inverse mass matrix from the pooled chains in the last
        half of warmup (BlackJAX's ``mass_matrix_estimation="diagonal"``); else identity.
    max_leapfrog_steps : int, default 1000
        Cap on the trajectory length in steps during warmup.

    Raises
    ------
    ConfigError
        Invalid option values.
    """

    num_chains: int = 16
    target_accept: float = 0.651
    initial_step_size: float = 0.1
    learning_rate: float = 0.025
    adapt_mass_matrix: bool = True
    max_leapfrog_steps: int = 1000
    display_name = "ChEES-HMC"
    min_warmup = 10

    def __post_init__(self):
        super().__post_init__()
        self._require(self.num_chains >= 2, "num_chains", "must be >= 2 (ChEES averages over chains; use 8 or more)")
        self._require(self.initial_step_size > 0, "initial_step_size", "must be > 0")
        self._require(self.learning_rate > 0, "learning_rate", "must be > 0")
        self._positive_int("max_leapfrog_steps")

    def _max_bits(self):
        return int(np.ceil(np.log2(self.num_warmup + self.num_samples)))

    def build(self, logdensity_fn, tuned):
        # BlackJAX's Halton jitter, as in chees_adaptation: mean num_leapfrog_steps / 2
        return jittered_hmc(logdensity_fn, tuned["step_size"], tuned["inverse_mass_matrix"],
                            tuned["num_leapfrog_steps"], self._max_bits())

    def stats(self, state, info, tuned):
        return hmc_stats(state, info)

    def adaptation(self, logdensity_fn, ld, extras):
        n, d = self.num_chains, ld.dim

        def initial(n):
            return {
                "step_size": jnp.full((n,), self.initial_step_size),
                "inverse_mass_matrix": jnp.ones((n, d)),
                "num_leapfrog_steps": jnp.ones((n,)),
            }

        def tuner(key, states, tuned, tick):
            def info(state, info, astate):  # BlackJAX calls it once per ChEES step
                tick()
                return _Steps(info.num_integration_steps)

            warmup = blackjax.chees_adaptation(
                logdensity_fn,
                n,
                target_acceptance_rate=self.target_accept,
                max_leapfrog_steps=self.max_leapfrog_steps,
                mass_matrix_estimation="diagonal" if self.adapt_mass_matrix else None,
                adaptation_info_fn=info,
            )
            (last, params), steps = warmup.run(
                key, states.position, self.initial_step_size, optax.adam(self.learning_rate), self.num_warmup,
                max_sampling_steps=self.num_samples,
            )
            out = {
                "step_size": jnp.broadcast_to(params["step_size"], (n,)),
                "inverse_mass_matrix": jnp.broadcast_to(params["inverse_mass_matrix"], (n, d)),
                "num_leapfrog_steps": jnp.broadcast_to(params["integration_steps_params"][0], (n,)),
            }
            return last, out, jnp.sum(steps.num_integration_steps, axis=0).astype(jnp.int32)

        return tuned_before_loop(initial, tuner)

    def extra_info(self, stats, tuned):
        return {
            "step_size_mean": float(tuned["step_size"].mean()),
            "trajectory_length": float((tuned["num_leapfrog_steps"] * tuned["step_size"]).mean()),
        }


register_method("chees_hmc", ChEESHMC, "Jittered HMC tuned by ChEES across many chains (BlackJAX)")
