"""``pp.HMC``: static-trajectory Hamiltonian Monte Carlo from BlackJAX with Stan's warmup.

Each transition draws a momentum p ~ N(0, M), integrates Hamilton's equations for
H(z, p) = -log π(z) + ½ pᵀ M⁻¹ p with ``num_integration_steps`` leapfrog steps of
size ε, and accepts the end point with probability min(1, exp(-ΔH)) (Duane et al.
1987; Neal 2011, "MCMC using Hamiltonian dynamics", Handbook of MCMC ch. 5). The
implementation is ``blackjax.hmc``. Warmup tunes ε and M by Stan's window
adaptation. With ``trajectory_length`` = T instead of a step count, every
transition takes ceil(T / ε) steps (capped at ``max_integration_steps``), so the
integration time stays T while ε adapts (Stan's ``int_time``).

By default the number of steps is jittered: transition i takes ceil(h_i · 2L) steps,
h_i the base-2 Halton sequence in (0, 1), so the mean stays about L while no fixed
trajectory resonates with the posterior's periods (a fixed L that is near a multiple
of a Gaussian's half-period leaves the chain nearly still: on a 1-d normal with
L = 16 we measured bulk ESS 43 of 4000 draws without jitter). Neal (2011) §5.4.2.3;
``blackjax.mcmc.dynamic_hmc``, as in ChEES (Hoffman, Radul & Sountsov 2021).
"""

from __future__ import annotations

import dataclasses

import blackjax
import jax.numpy as jnp
import numpy as np
from blackjax.mcmc import dynamic_hmc

from ..registry import register_method
from .base import WindowAdapted
from .metric import kernel_metric

__all__ = ["HMC"]


@dataclasses.dataclass(frozen=True)
class HMC(WindowAdapted):
    """Hamiltonian Monte Carlo with a fixed number of leapfrog steps or a fixed trajectory length.

    Parameters
    ----------
    num_chains, num_warmup, num_samples, init_radius, init, init_from, mass_matrix, dense_mass
        See :class:`~ppl_posteriors.mcmc.base.Sampler`.
    target_accept : float, default 0.8
        Target acceptance probability of the step-size adaptation.
    num_integration_steps : int, default 16
        Leapfrog steps per transition (used when ``trajectory_length`` is None).
    trajectory_length : float, optional
        Integration time T (units of the whitened position); steps = ceil(T / step_size).
    max_integration_steps : int, default 1024
        Cap on ceil(T / step_size).
    jitter : bool, default True
        Draw each transition's number of steps from ceil(h · 2L), h quasi-uniform in
        (0, 1) (mean ≈ L); False uses exactly L steps every time.

    Raises
    ------
    ConfigError
        Invalid option values.
    """

    target_accept: float = 0.8
    num_integration_steps: int = 16
    trajectory_length: float | None = None
    max_integration_steps: int = 1024
    jitter: bool = True
    display_name = "HMC"
    mass_matrices = ("auto", "diag", "dense", "nutpie", "low_rank")

    def __post_init__(self):
        super().__post_init__()
        self._positive_int("num_integration_steps", "max_integration_steps")
        if self.trajectory_length is not None:
            self._require(self.trajectory_length > 0, "trajectory_length", "must be > 0 (or None)")

    def _steps(self, step_size):
        if self.trajectory_length is None:
            return self.num_integration_steps
        n = jnp.ceil(self.trajectory_length / step_size)
        return jnp.clip(n, 1, self.max_integration_steps).astype(jnp.int32)

    def build(self, logdensity_fn, tuned):
        step_size = tuned["step_size"]
        steps = self._steps(step_size)
        if not self.jitter:
            return blackjax.hmc(logdensity_fn, step_size, kernel_metric(tuned), steps)
        return jittered_hmc(logdensity_fn, step_size, kernel_metric(tuned), 2 * steps)

    def stats(self, state, info, tuned):
        return hmc_stats(state, info)

    def extra_info(self, stats, tuned):
        return {"mean_integration_steps": float(np.mean(stats["n_steps"])), **self.mass_matrix_info(tuned)}


def jittered_hmc(logdensity_fn, step_size, inverse_mass_matrix, max_steps, max_bits: int = 24):
    """``blackjax.dynamic_hmc`` whose transition i takes max(1, ceil(h_i · max_steps)) leapfrog
    steps, h_i the base-2 Halton sequence (BlackJAX's jitter, as in its ChEES adaptation)."""

    def integration_steps_fn(i):
        return jnp.maximum(1, jnp.ceil(dynamic_hmc.halton_sequence(i, max_bits) * max_steps)).astype(jnp.int32)

    kernel = dynamic_hmc.build_kernel(next_random_arg_fn=lambda i: i + 1, integration_steps_fn=integration_steps_fn)

    def init(position, rng_key=None):
        return dynamic_hmc.init(position, logdensity_fn, jnp.asarray(0, dtype=jnp.int32))

    def step(rng_key, state):
        return kernel(rng_key, state, logdensity_fn, step_size, inverse_mass_matrix)

    return blackjax.base.SamplingAlgorithm(init, step)


def hmc_stats(state, info) -> dict:
    """ArviZ sample_stats of an HMC transition (static or dynamic trajectory)."""
    return {
        "lp": state.logdensity,
        "energy": info.energy,
        "diverging": info.is_divergent,
        "n_steps": jnp.asarray(info.num_integration_steps, jnp.int32),
        "acceptance_rate": info.acceptance_rate,
    }


register_method("hmc", HMC, "Hamiltonian Monte Carlo (BlackJAX), static trajectory, Stan's window adaptation")
