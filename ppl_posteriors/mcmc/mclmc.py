"""``pp.MCLMC`` and ``pp.AdjustedMCLMC``: microcanonical Langevin Monte Carlo from BlackJAX.

MCLMC (Robnik, De Luca, Silverstein & Seljak 2023, JMLR 24:311; Robnik & Seljak 2024,
arXiv:2303.18221) moves with unit-speed (isokinetic) dynamics whose momentum is
partially refreshed with decoherence length L; the unadjusted version has no
accept/reject step, so its bias is controlled by the energy-error variance per
dimension (``desired_energy_var``). ``blackjax.mclmc`` with the isokinetic McLachlan
integrator (2 gradient evaluations per step) and BlackJAX's tuner
``mclmc_find_L_and_step_size``: step size from the energy error, a diagonal
preconditioner, then L from the effective sample size.

Adjusted MCLMC (Robnik, Cohn-Gordon & Seljak 2025, arXiv:2503.01707) adds a
Metropolis-Hastings correction after a trajectory of random length (mean L / ε
steps); tuned by ``adjusted_mclmc_find_L_and_step_size`` to ``target_accept``
(default 0.9). ``blackjax.adjusted_mclmc_dynamic``. In BlackJAX 1.7.1 that tuner does
not tune L separately: it pins L = ``target_num_integration_steps`` x ε at entry and
again at its end, and tunes the step size ε (and the diagonal preconditioner) at that
mean trajectory length, so ``target_num_integration_steps`` sets L/ε.

Both tuners run before the chain loop, per chain (vmapped), on
``num_warmup`` iterations: BlackJAX splits them in three phases whose fractions
are ``frac_tune``. The progress bar counts the tuner's kernel calls (a callback per
tuning step) through its tuning phase, then the sampling.
"""

from __future__ import annotations

import dataclasses

import blackjax
import jax
import jax.numpy as jnp
from blackjax.adaptation.mclmc_adaptation import MCLMCAdaptationState
from blackjax.mcmc import adjusted_mclmc_dynamic as _amd
from blackjax.mcmc.integrators import isokinetic_mclachlan

from ..registry import register_method
from .adaptation import tuned_before_loop
from .base import Sampler

__all__ = ["MCLMC", "AdjustedMCLMC"]

_GRADS_PER_STEP = 2  # isokinetic McLachlan: two gradient evaluations per step


def _fractions(frac_tune):
    total = sum(frac_tune)
    return tuple(f / total for f in frac_tune)


def _as_tuned(params: MCLMCAdaptationState):
    return {"L": params.L, "step_size": params.step_size, "inverse_mass_matrix": params.inverse_mass_matrix}


def _initial(dim):
    def initial(n):
        return {
            "L": jnp.full((n,), jnp.sqrt(dim)),
            "step_size": jnp.full((n,), 0.25 * jnp.sqrt(dim)),
            "inverse_mass_matrix": jnp.ones((n, dim)),
        }

    return initial


@dataclasses.dataclass(frozen=True)
class _MCLMCBase(Sampler):
    frac_tune: tuple = (0.4, 0.4, 0.2)
    diagonal_preconditioning: bool = True
    min_warmup = 10
    min_dim = 2

    def __post_init__(self):
        super().__post_init__()
        ok = isinstance(self.frac_tune, tuple) and len(self.frac_tune) == 3 and all(f >= 0 for f in self.frac_tune)
        self._require(ok and sum(self.frac_tune) > 0, "frac_tune", "must be a tuple of 3 fractions >= 0, not all 0")

    def phases(self):
        return [("tuning", self.num_warmup), ("sampling", self.num_samples)]


@dataclasses.dataclass(frozen=True)
class MCLMC(_MCLMCBase):
    """Unadjusted microcanonical Langevin Monte Carlo with BlackJAX's L and step-size tuning.

    Parameters
    ----------
    num_chains, num_warmup, num_samples, init_radius
        See :class:`~ppl_posteriors.mcmc.base.Sampler`; ``num_warmup`` (>= 10) are the
        tuning iterations.
    desired_energy_var : float, default 5e-4
        Target variance of the energy error per dimension; smaller means a smaller
        step size and less bias.
    frac_tune : tuple of 3 floats, default (0.4, 0.4, 0.2)
        Relative lengths of the tuner's phases (step size, step size with
        preconditioner, L from the ESS).
    diagonal_preconditioning : bool, default True
        Tune a diagonal preconditioner.

    ``target_accept`` is unused (no accept/reject step). Needs at least 2 parameters.

    Raises
    ------
    ConfigError
        Invalid option values.
    ModelError
        A model with fewer than 2 unconstrained parameters.
    """

    desired_energy_var: float = 5e-4
    display_name = "MCLMC"

    def build(self, logdensity_fn, tuned):
        return blackjax.mclmc(
            logdensity_fn, tuned["L"], tuned["step_size"], inverse_mass_matrix=tuned["inverse_mass_matrix"]
        )

    def stats(self, state, info, tuned):
        return {
            "lp": state.logdensity,
            "energy": info.energy_change,
            "diverging": ~info.nonans,
            "n_steps": jnp.full((), _GRADS_PER_STEP, jnp.int32),
        }

    def adaptation(self, logdensity_fn, ld, extras):
        kernel = blackjax.mcmc.mclmc.build_kernel(
            integrator=isokinetic_mclachlan, desired_energy_var=self.desired_energy_var
        )
        f1, f2, f3 = _fractions(self.frac_tune)

        def tune_one(key, state, tick):
            state, params, n = blackjax.mclmc_find_L_and_step_size(
                mclmc_kernel=_ticking(kernel, tick),
                num_steps=self.num_warmup,
                state=state,
                rng_key=key,
                logdensity_fn=logdensity_fn,
                frac_tune1=f1,
                frac_tune2=f2,
                frac_tune3=f3,
                desired_energy_var=self.desired_energy_var,
                diagonal_preconditioning=self.diagonal_preconditioning,
            )
            return state, _as_tuned(params), n * _GRADS_PER_STEP

        return tuned_before_loop(_initial(ld.dim), _per_chain(tune_one))

    def extra_info(self, stats, tuned):
        return {"L_mean": float(tuned["L"].mean()), "step_size_mean": float(tuned["step_size"].mean())}


def _per_chain(tune_one):
    """A ``tuned_before_loop`` tuner running ``tune_one(key, state, tick)`` on every chain, vmapped."""

    def tuner(key, states, tuned, tick):
        keys = jax.random.split(key, jax.tree.leaves(states.position)[0].shape[0])
        return jax.vmap(lambda k, s: tune_one(k, s, tick))(keys, states)

    return tuner


def _ticking(kernel, tick):
    """``kernel`` that advances the progress bar once per call (BlackJAX's tuners call their
    kernel once per tuning step, inside their own scans; under ``vmap`` over chains the
    callback runs once per step, not once per chain)."""

    def step(**kwargs):
        out = kernel(**kwargs)
        tick()
        return out

    return step


@dataclasses.dataclass(frozen=True)
class AdjustedMCLMC(_MCLMCBase):
    """Metropolis-adjusted microcanonical HMC with random trajectory lengths, tuned by BlackJAX.

    The tuner sets the step size ε by dual averaging to ``target_accept`` with the
    trajectory length fixed at L = ``target_num_integration_steps`` x ε (BlackJAX 1.7.1;
    see the module docstring): L is not tuned on its own.

    Parameters
    ----------
    num_chains, num_warmup, num_samples, init_radius
        See :class:`~ppl_posteriors.mcmc.base.Sampler`; ``num_warmup`` (>= 10) are the
        tuning iterations.
    target_accept : float, default 0.9
        Target acceptance rate of the step-size tuning.
    frac_tune : tuple of 3 floats, default (0.4, 0.4, 0.2)
        Relative lengths of the tuner's phases.
    diagonal_preconditioning : bool, default True
        Tune a diagonal preconditioner.
    target_num_integration_steps : float, default 2.0
        Mean integration steps per trajectory, L/ε, during tuning and sampling (BlackJAX's
        default).

    Raises
    ------
    ConfigError
        Invalid option values.
    ModelError
        A model with fewer than 2 unconstrained parameters.
    """

    target_accept: float = 0.9
    target_num_integration_steps: float = 2.0
    display_name = "AdjustedMCLMC"

    def _kernel(self):
        return _amd.build_kernel(
            integration_steps_fn=_amd.make_random_trajectory_length_fn(True), integrator=isokinetic_mclachlan
        )

    def build(self, logdensity_fn, tuned):
        kernel = self._kernel()

        def init(position, rng_key):
            return _amd.init(position, logdensity_fn, rng_key)

        def step(rng_key, state):
            return kernel(
                rng_key,
                state,
                logdensity_fn,
                tuned["step_size"],
                inverse_mass_matrix=tuned["inverse_mass_matrix"],
                integration_steps_params=(tuned["L"] / tuned["step_size"],),
            )

        return blackjax.base.SamplingAlgorithm(init, step)

    def stats(self, state, info, tuned):
        return {
            "lp": state.logdensity,
            "energy": info.energy,
            "diverging": info.is_divergent,
            "n_steps": (_GRADS_PER_STEP * info.num_integration_steps).astype(jnp.int32),
            "acceptance_rate": info.acceptance_rate,
        }

    def adaptation(self, logdensity_fn, ld, extras):
        kernel = self._kernel()
        f1, f2, f3 = _fractions(self.frac_tune)

        def tune_one(key, state, tick):
            state, params, n = blackjax.adjusted_mclmc_find_L_and_step_size(
                mclmc_kernel=_ticking(kernel, tick),
                logdensity_fn=logdensity_fn,
                num_steps=self.num_warmup,
                state=state,
                rng_key=key,
                target=self.target_accept,
                frac_tune1=f1,
                frac_tune2=f2,
                frac_tune3=f3,
                diagonal_preconditioning=self.diagonal_preconditioning,
                target_num_integration_steps=self.target_num_integration_steps,
            )
            return state, _as_tuned(params), n * _GRADS_PER_STEP

        return tuned_before_loop(_initial(ld.dim), _per_chain(tune_one))

    def extra_info(self, stats, tuned):
        return {"L_mean": float(tuned["L"].mean()), "step_size_mean": float(tuned["step_size"].mean())}


register_method("mclmc", MCLMC, "Microcanonical Langevin Monte Carlo (BlackJAX), unadjusted, L and step-size tuning")
register_method(
    "adjusted_mclmc", AdjustedMCLMC, "Metropolis-adjusted microcanonical HMC (BlackJAX), step size tuned at fixed L/step"
)
