"""``pp.SMC``: adaptive tempered sequential Monte Carlo from BlackJAX, with log evidence.

Particles move from a reference q to the posterior through the tempered densities
π_λ(z) ∝ q(z) (p(y, z) / q(z))^λ, 0 = λ_0 < λ_1 < ... < λ_T = 1. Each step picks
λ_{t+1} by bisection so that the effective sample size of the incremental weights
w_i = (p(y, z_i) / q(z_i))^(λ_{t+1} - λ_t) is ``target_ess`` times the number of
particles, resamples (systematic), and moves every particle by ``num_mcmc_steps``
transitions of an MCMC kernel that leaves π_{λ_t} invariant (Del Moral, Doucet &
Jasra 2006, JRSS-B 68:411; Jasra et al. 2011, Scand. J. Stat. 38:1 for the adaptive
schedule). The product of the mean incremental weights is an unbiased estimate of
Z = ∫ p(y, z) dz = p(y), so log Ẑ = Σ_t log (1/N Σ_i w_i) estimates the log marginal
likelihood (the Jacobian of the unconstrained transform is included, so this is the
evidence of the model on its own space).

The reference q is N(0, ``reference_scale``² I) on the unconstrained space rather
than the prior, because the kernels never run the NumPyro model (no prior
sampler); any q that covers the posterior gives the same target and evidence.

Inner kernels, retuned from the particles at every step: ``"hmc"`` (BlackJAX HMC,
inverse mass matrix = the particles' variances, step size scaled by the mean
acceptance rate towards ``target_accept``) or ``"rmh"`` (random walk with proposal
covariance (2.38² / D) · the particles' covariance, scaled likewise; Haario et al.
2001). ``blackjax.adaptive_tempered_smc`` builds the step; a last resample-and-move
at λ = 1 gives equally weighted draws. Result: ``chain=1``, ``draw=num_particles``;
``idata.attrs["log_marginal_likelihood"]`` and ``["num_tempering_steps"]``.
"""

from __future__ import annotations

import dataclasses
import functools

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.mcmc import random_walk
from blackjax.smc import adaptive_tempered, resampling, tempered

from .._errors import Status
from ..registry import MethodConfig, register_method
from ..results.raw import RawPosterior

__all__ = ["SMC"]

_PROGRESS_STEPS = 100  # the bar counts percent of the way from λ = 0 to 1


def _rmh_step(rng_key, state, logdensity_fn, sigma):
    return random_walk.build_additive_step()(rng_key, state, logdensity_fn, random_walk.normal(sigma))


@dataclasses.dataclass(frozen=True)
class SMC(MethodConfig):
    """Adaptive tempered SMC with an inner HMC or random-walk kernel; estimates log p(y).

    Parameters
    ----------
    num_particles : int, default 2000
    kernel : {"hmc", "rmh"}, default "hmc"
        Inner MCMC kernel.
    num_mcmc_steps : int, default 10
        Inner transitions per tempering step.
    num_integration_steps : int, default 8
        Leapfrog steps per HMC transition.
    target_ess : float, default 0.5
        Fraction of particles kept effective by each tempering increment, in (0, 1).
    target_accept : float, optional
        Acceptance rate the inner step size is steered to (default 0.65 for HMC, 0.234 for RMH).
    reference_scale : float, default 2.0
        Standard deviation of the Gaussian reference q on the unconstrained space.
    max_tempering_steps : int, default 1000
        Stop (status ``not_converged``) if λ has not reached 1 by then.

    Raises
    ------
    ConfigError
        Invalid option values.
    ModelError
        A model whose plates subsample (SMC needs the full data).
    """

    num_particles: int = 2000
    kernel: str = "hmc"
    num_mcmc_steps: int = 10
    num_integration_steps: int = 8
    target_ess: float = 0.5
    target_accept: float | None = None
    reference_scale: float = 2.0
    max_tempering_steps: int = 1000

    def __post_init__(self):
        self._positive_int("num_particles", "num_mcmc_steps", "num_integration_steps", "max_tempering_steps")
        self._choice("kernel", ("hmc", "rmh"))
        self._require(0.0 < self.target_ess < 1.0, "target_ess", "must be in (0, 1)")
        if self.target_accept is not None:
            self._require(0.0 < self.target_accept < 1.0, "target_accept", "must be in (0, 1) or None")
        self._require(self.reference_scale > 0, "reference_scale", "must be > 0")

    def _target_accept(self):
        if self.target_accept is not None:
            return self.target_accept
        return 0.65 if self.kernel == "hmc" else 0.234

    def _inner(self, dim):
        """(step_fn, init_fn, parameters(scale, flat particles) -> dict, initial scale, grads per step)."""
        if self.kernel == "hmc":
            step = functools.partial(blackjax.hmc.build_kernel(), num_integration_steps=self.num_integration_steps)

            def params(scale, x):
                return {"step_size": scale[None], "inverse_mass_matrix": jnp.var(x, axis=0)[None]}

            return step, blackjax.hmc.init, params, 1.0 / dim**0.25, self.num_integration_steps

        def params(scale, x):
            cov = jnp.atleast_2d(jnp.cov(x, rowvar=False)) + 1e-10 * jnp.eye(dim, dtype=x.dtype)
            return {"sigma": (scale * jnp.linalg.cholesky(cov))[None]}

        return _rmh_step, random_walk.init, params, 2.38 / dim**0.5, 0

    def run(self, rng_key, rt) -> RawPosterior:
        rt.log_density.require_full_data("SMC")
        n, s, target_accept = self.num_particles, self.reference_scale, self._target_accept()

        def program(ld, ctx, key):
            d = ld.dim
            step_fn, init_fn, params_of, scale0, grads = self._inner(d)

            def log_ref(z):
                return jnp.sum(jax.scipy.stats.norm.logpdf(ld.ravel(z), 0.0, s))

            def loglik(z):
                return ld.posterior_logdensity_fn(z) - log_ref(z)

            smc_step = adaptive_tempered.build_kernel(
                log_ref, loglik, step_fn, init_fn, resampling.systematic, self.target_ess
            )
            k0, k_loop, k_final, k_perm = jax.random.split(key, 4)
            x0 = s * jax.random.normal(k0, (n, d))
            state = adaptive_tempered.init(ld.unravel(x0))

            def cond(carry):
                state, *_, i = carry
                return (state.tempering_param < 1.0) & (i < self.max_tempering_steps)

            def body(carry):
                state, scale, log_z, acc, i = carry
                params = params_of(scale, ld.ravel(state.particles))
                state, info = smc_step(jax.random.fold_in(k_loop, i), state, self.num_mcmc_steps, params)
                acc = jnp.mean(info.update_info.acceptance_rate)
                scale = scale * jnp.exp(acc - target_accept)
                if ctx.progress is not None:
                    ctx.progress.tick(jnp.floor(_PROGRESS_STEPS * state.tempering_param).astype(jnp.int32) - 1)
                return state, scale, log_z + info.log_likelihood_increment, acc, i + 1

            zero = jnp.zeros((), x0.dtype)
            carry = (state, jnp.asarray(scale0, x0.dtype), zero, zero, jnp.zeros((), jnp.int32))
            state, scale, log_z, acc, steps = jax.lax.while_loop(cond, body, carry)
            # a last resample-and-move at the reached temperature: equally weighted draws
            final = tempered.build_kernel(log_ref, loglik, step_fn, init_fn, resampling.systematic)
            params = params_of(scale, ld.ravel(state.particles))
            last, _ = final(k_final, state, self.num_mcmc_steps, state.tempering_param, params)
            particles = jax.tree.map(lambda x: jax.random.permutation(k_perm, x), last.particles)
            lp = jax.vmap(ld.posterior_logdensity_fn)(particles)
            return particles, lp, log_z, state.tempering_param, steps, acc, grads

        phases = [("tempering", _PROGRESS_STEPS)]
        particles, lp, log_z, lam, steps, acc, grads = rt.call("smc", program, rng_key, phases=phases, desc="SMC")
        steps, lam = int(steps), float(lam)
        status, messages = Status.SUCCESS, []
        if lam < 1.0:
            status = Status.NOT_CONVERGED
            messages.append(
                f"tempering reached only lambda = {lam:.3g} in max_tempering_steps={self.max_tempering_steps} "
                "steps; the draws are not from the posterior and log_marginal_likelihood is wrong. Raise "
                "max_tempering_steps or num_particles, or lower target_ess"
            )
        if not np.isfinite(float(log_z)):
            status = Status.NON_FINITE
            messages.append("the log marginal likelihood estimate is not finite")
        moves = self.num_particles * self.num_mcmc_steps * (steps + 1)
        info = {
            "messages": messages,
            "log_marginal_likelihood": float(log_z),
            "num_tempering_steps": steps,
            "final_tempering_param": lam,
            "inner_acceptance_rate": float(acc),
            "grad_evals": int(moves * int(grads)),
            "density_evals": int(moves) if self.kernel == "rmh" else 0,
            "is_mcmc": False,
        }
        position = jax.tree.map(lambda x: np.asarray(x)[None], particles)
        return RawPosterior(position, {"lp": np.asarray(lp)[None]}, None, status, info)


register_method("smc", SMC, "Adaptive tempered SMC (BlackJAX) with HMC or random-walk moves; log evidence")
