"""Stochastic-gradient MCMC on minibatches: ``pp.SGLD``, ``pp.SGHMC``, ``pp.SGNHT``, ``pp.BAOAB``.

Thin adapters over BlackJAX's SG-MCMC kernels (``blackjax.sgld``, ``blackjax.sghmc``,
``blackjax.sgnht``, BlackJAX 1.7.1) and our BAOAB (:mod:`.baoab`, which BlackJAX lacks).
There is no accept step: the chains follow a discretised Langevin diffusion driven by
a minibatch estimate of the gradient, so the draws carry a step-size bias that
vanishes as the step size goes to 0 (Welling & Teh 2011; Chen, Fox & Guestrin 2014;
Ding et al. 2014; Leimkuhler & Matthews 2013).

The gradient estimate. Each step differentiates an unbiased estimate of the
**full-data** log posterior on the unconstrained space (Jacobian included)::

    log π̂(z) = log p(z) + log|J(z)| + (N / B) Σ_{n in batch} log p(y_n | z)

* with ``numpyro.plate(name, N, subsample_size=B)`` in the model, the B indices are
  drawn afresh at every step (and per chain) inside one compiled ``lax.scan``
  (``LogDensity.minibatch_logdensity_fn``; NumPyro applies the N / B scale);
* with ``pp.infer(..., batches=pp.Batches(loader, num_data=N))`` each step takes the
  next batch of the loader (all chains the same batch), scaled by N / B by the
  runtime, one compiled step per batch shape dispatched from a host loop;
* a model without either uses the full-data gradient (then ``π̂ = π``).

Temperature. ``temperature=T`` targets π(z)^(1/T) (T = 1, the default, is the
Bayesian posterior; T < 1 the "cold posterior" of Wenzel et al. 2020). The data are
never down-weighted by B / N: the N / B scale above is always applied.

Step-size conventions follow each kernel (they are not interchangeable):

* SGLD (BlackJAX): z' = z + ε ĝ + √(2 T ε) ξ. Welling & Teh's ε_WT = 2 ε.
* SGHMC (BlackJAX, Chen et al. 2014 with Ma et al. 2015's scaling): momentum p ~ N(0, I)
  refreshed each transition, then ``num_integration_steps`` of
  z' = z + ε p, p' = (1 - α ε) p + ε ĝ(z) + √(2 α T ε) ξ, one minibatch per transition.
* SGNHT (BlackJAX, Ding et al. 2014): as SGHMC without refresh, friction ξ_t a
  thermostat, ξ' = ξ + ε (|p|² / D - T), started at ``friction``.
* BAOAB (:mod:`.baoab`): step h, friction γ, one gradient per step.

For a Gaussian posterior with precision eigenvalues λ, SGLD with full-data gradients
is stable for ε λ < 2 and its stationary variance is 1 / (λ (1 - ε λ / 2)) per
eigendirection (mean exact); minibatch noise of covariance V in ĝ adds about ε V / 2
to the numerator (Welling & Teh 2011, §5), an effective temperature T + ε v / 2. The
underdamped kernels (SGHMC, SGNHT, BAOAB) see T + h v / (2 γ) for friction γ: a larger
friction or smaller step tames minibatch noise. BAOAB is stable for h² λ < 4 and exact
in θ for Gaussians with full-data gradients. BlackJAX's SGHMC evaluates ĝ before it
moves z (explicit Euler): for a Gaussian its stationary variance is inflated by
L / (L - 1) when the trajectory ε L √λ is short, even as ε -> 0; keep ε L √λ ~ 1 (for
L = 100, ε √λ = 0.01: +0.7% sd).

Schedules: ``schedule="constant"`` uses ε_t = ``step_size``; ``"polynomial"`` uses
ε_t = a (b + t)^(-γ) with a = ``step_size``, b = ``decay_offset``, γ = ``decay_power``
(Welling & Teh 2011, with γ in (0.5, 1]), t counting steps from the first warmup step.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import blackjax
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import ModelError, Status
from ..density.init import draw_initial_positions
from ..registry import MethodConfig, register_method
from ..results.raw import RawPosterior
from . import baoab as _baoab

__all__ = ["BAOAB", "SGHMC", "SGLD", "SGNHT", "SGMCMCSampler", "step_size_schedule"]


def step_size_schedule(t, step_size, schedule="constant", decay_offset=1.0, decay_power=0.55):
    """ε_t: ``step_size`` (constant) or ``step_size · (decay_offset + t)^(-decay_power)``."""
    if schedule == "constant":
        return jnp.asarray(step_size, jnp.result_type(float))
    return step_size * (decay_offset + jnp.asarray(t, jnp.result_type(float))) ** (-decay_power)


@dataclasses.dataclass(frozen=True)
class SGMCMCSampler(MethodConfig):
    """Options every SG-MCMC sampler shares (not registered; see SGLD, SGHMC, SGNHT, BAOAB).

    Parameters
    ----------
    step_size : float
        ε (constant schedule) or a of ε_t = a (b + t)^(-γ); units of the kernel's time
        (see the module docstring). Each sampler's default suits posteriors whose
        precision eigenvalues λ are of order 1-10 on the unconstrained space (ε λ ≈ 0.25
        for SGLD); tune it to the model: too large diverges (``status = "non_finite"``,
        a NumericalError), too small mixes slowly (an R-hat / ESS warning).
    schedule : {"constant", "polynomial"}, default "constant"
    decay_offset : float, default 1.0
        b of the polynomial schedule, > 0.
    decay_power : float, default 0.55
        γ of the polynomial schedule, in (0, 1].
    temperature : float, default 1.0
        T > 0: target π^(1/T).
    num_chains : int, default 4
        Independent chains, vmapped (split over a mesh's ``"chain"`` axis).
    num_warmup : int, default 1000
        Burn-in steps per chain, discarded (nothing is adapted).
    num_samples : int, default 1000
        Draws kept per chain.
    thinning : int, default 1
        Keep the last of every ``thinning`` steps after burn-in (the chain runs
        ``num_warmup + num_samples * thinning`` steps).
    init_radius : float, default 2.0
        Chains start at uniform(-r, r) draws on the unconstrained space (Stan's default),
        redrawn until the log density and gradient are finite.
    throw : bool, default True
        Raise ``NumericalError`` when draws are not finite.

    Raises
    ------
    ConfigError
        Invalid option values.
    """

    step_size: float = 0.05
    schedule: str = "constant"
    decay_offset: float = 1.0
    decay_power: float = 0.55
    temperature: float = 1.0
    num_chains: int = 4
    num_warmup: int = 1000
    num_samples: int = 1000
    thinning: int = 1
    init_radius: float = 2.0
    throw: bool = True

    supports_batches = True
    display_name: ClassVar[str] = "SG-MCMC"

    def __post_init__(self):
        self._positive_int("num_chains", "num_samples", "thinning")
        self._require(isinstance(self.num_warmup, int) and not isinstance(self.num_warmup, bool)
                      and self.num_warmup >= 0, "num_warmup", "must be an integer >= 0")
        self._require(self.step_size > 0, "step_size", "must be > 0")
        self._choice("schedule", ("constant", "polynomial"))
        self._require(self.decay_offset > 0, "decay_offset", "must be > 0")
        self._require(0 < self.decay_power <= 1, "decay_power", "must be in (0, 1]")
        self._require(self.temperature > 0, "temperature", "must be > 0")
        self._require(self.init_radius >= 0, "init_radius", "must be >= 0")

    @property
    def num_parallel(self) -> int:
        return self.num_chains

    # -- the adapter: subclasses implement these ------------------------------------
    grads_per_step: ClassVar[int] = 1

    def kernel(self, estimator):
        """``(init(position, key, data_key) -> state, step(key, state, data_key, eps) -> state,
        position_of(state))`` for ``estimator(position, data_key) -> scalar``."""
        raise NotImplementedError

    def lp_of(self, state, position, estimator, data_key):
        """The minibatch estimate log π̂ at the new position (one forward pass)."""
        return estimator(position, data_key)

    # -- one step of every chain ----------------------------------------------------
    def _estimator(self, ld):
        return ld.minibatch_logdensity_fn

    def _init_states(self, ld, x0, key):
        init, _, _ = self.kernel(self._estimator(ld))
        return jax.vmap(lambda x, k, kd: init(ld.unravel(x), k, kd))(x0, *_keys(key, self.num_chains))

    def _step(self, ld, states, t, key):
        est = self._estimator(ld)
        _, step, position_of = self.kernel(est)
        eps = step_size_schedule(t, self.step_size, self.schedule, self.decay_offset, self.decay_power)

        def one(state, k, kd):
            state = step(k, state, kd, eps)
            pos = position_of(state)
            return state, pos, self.lp_of(state, pos, est, kd)

        states, pos, lp = jax.vmap(one)(states, *_keys(key, self.num_chains))
        return states, (pos, lp, jnp.broadcast_to(eps, lp.shape))

    # -- the run ----------------------------------------------------------------------
    def run(self, rng_key, rt) -> RawPosterior:
        n_keep, thin, n_warm = self.num_samples, self.thinning, self.num_warmup
        total = n_warm + n_keep * thin
        k_init, k_states, k_run = jax.random.split(rng_key, 3)

        def init_program(ld, ctx, key_x, key_s):
            x0, ok = draw_initial_positions(ld.flat_logdensity_fn, key_x, self.num_chains, ld.dim, self.init_radius)
            x0 = ctx.shard_chains(x0)
            return self._init_states(ld, x0, key_s), ok

        if rt.batches is None:
            def program(ld, ctx, key_x, key_s, key_run):
                states, ok = init_program(ld, ctx, key_x, key_s)
                _, stats_shape = jax.eval_shape(lambda s, k: self._step(ld, s, 0, k), states, key_run)
                buffers = jax.tree.map(lambda a: jnp.zeros((n_keep,) + a.shape, a.dtype), stats_shape)

                def body(carry, xs):
                    states, buffers = carry
                    i, key = xs
                    states, out = self._step(ld, states, i, key)
                    slot = jnp.clip((i - n_warm) // thin, 0, n_keep - 1)  # burn-in writes slot 0, overwritten
                    buffers = jax.tree.map(
                        lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v.astype(b.dtype), slot, 0), buffers, out)
                    ctx.progress.tick(i)
                    return (states, buffers), None

                xs = (jnp.arange(total), jax.random.split(key_run, total))
                (_, buffers), _ = jax.lax.scan(body, (states, buffers), xs)
                return buffers, ok

            phases = [("warmup", n_warm), ("sampling", n_keep * thin)]
            (pos, lp, eps), ok = rt.call("sample", program, k_init, k_states, k_run, phases=phases,
                                         desc=self.display_name)
        else:  # pp.Batches: one compiled step per batch shape, dispatched by the runtime's host loop
            states, ok = rt.call("init", init_program, k_init, k_states)

            def step_program(ld, ctx, carry, key):
                states, t = carry
                states, (pos, lp, eps) = self._step(ld, states, t, key)
                # one (chain, D + 2) leaf per step: the runtime stacks the steps' outputs
                out = jnp.concatenate([ld.ravel(pos), lp[:, None], eps[:, None].astype(lp.dtype)], axis=-1)
                return (states, t + 1), out

            _, out = rt.stream("sgmcmc", step_program, (states, jnp.zeros((), jnp.int32)), k_run,
                               num_steps=total, desc=self.display_name)
            out = np.asarray(out)[n_warm + thin - 1 :: thin][:n_keep]
            pos, lp, eps = rt.log_density.unravel(out[..., :-2]), out[..., -2], out[..., -1]
        if not bool(np.all(ok)):
            raise ModelError(
                "no starting point with a finite log density and gradient was found in "
                f"uniform(-{self.init_radius}, {self.init_radius}) draws on the unconstrained space; "
                "check the priors and the data")
        return self._finish(pos, lp, eps, total)

    def _finish(self, pos, lp, eps, total) -> RawPosterior:
        swap = lambda a: np.swapaxes(np.asarray(a), 0, 1)  # (draw, chain, ...) -> (chain, draw, ...)  # noqa: E731
        position = jax.tree.map(swap, pos)
        stats = {"lp": swap(lp), "step_size": swap(eps)}
        status, messages = Status.SUCCESS, []
        finite = all(np.all(np.isfinite(a)) for a in jax.tree.leaves(position)) and np.all(np.isfinite(stats["lp"]))
        if not finite:
            status = Status.NON_FINITE
            messages.append(
                f"{self.display_name}: some draws or their log density are not finite: the step size "
                f"{self.step_size} is too large for this posterior (the discretised dynamics diverged); "
                "lower step_size (or use schedule='polynomial')")
        info = {
            "messages": messages,
            "grad_evals": int(self.num_chains * (total * self.grads_per_step + 1)),
            "is_mcmc": True,
            "temperature": float(self.temperature),
            "lp_is_minibatch_estimate": 1,
        }
        return RawPosterior(position, stats, None, status, info)


def _keys(key, n):
    """Per-chain (transition key, minibatch key): independent minibatches per chain."""
    k, kd = jax.random.split(key)
    return jax.random.split(k, n), jax.random.split(kd, n)


def _grad(estimator):
    return jax.grad(estimator)


@dataclasses.dataclass(frozen=True)
class SGLD(SGMCMCSampler):
    """Stochastic-gradient Langevin dynamics, ``blackjax.sgld`` (Welling & Teh 2011, ICML).

    z' = z + ε ĝ(z) + √(2 T ε) ξ, ξ ~ N(0, I), ĝ the minibatch gradient of log π̂. See
    :class:`SGMCMCSampler` for the options and :mod:`ppl_posteriors.mcmc.sgmcmc` for the
    N / B scale, temperature and bias.
    """

    display_name: ClassVar[str] = "SGLD"

    def kernel(self, estimator):
        alg = blackjax.sgld(_grad(estimator))
        T = self.temperature
        return (lambda x, k, kd: alg.init(x), lambda k, s, kd, eps: alg.step(k, s, kd, eps, T), lambda s: s)


@dataclasses.dataclass(frozen=True)
class SGHMC(SGMCMCSampler):
    """Stochastic-gradient HMC, ``blackjax.sghmc`` (Chen, Fox & Guestrin 2014, ICML).

    Momentum p ~ N(0, I) is redrawn each transition, then ``num_integration_steps``
    steps of z' = z + ε p, p' = (1 - α ε) p + ε ĝ(z) + √(2 α T ε) ξ on one minibatch
    (BlackJAX evaluates ĝ before moving z, an explicit Euler step: keep the trajectory
    ε L √λ of order 1, see the module docstring). Gradient noise is not estimated (β̂ = 0).

    Parameters
    ----------
    num_integration_steps : int, default 10
    friction : float, default 1.0
        α, per unit time.
    """

    num_integration_steps: int = 10
    friction: float = 1.0
    display_name: ClassVar[str] = "SGHMC"

    def __post_init__(self):
        super().__post_init__()
        self._positive_int("num_integration_steps")
        self._require(self.friction > 0, "friction", "must be > 0")

    @property
    def grads_per_step(self):  # type: ignore[override]
        return self.num_integration_steps

    def kernel(self, estimator):
        alg = blackjax.sghmc(_grad(estimator), self.num_integration_steps, alpha=self.friction, beta=0.0)
        T = self.temperature
        return (lambda x, k, kd: alg.init(x), lambda k, s, kd, eps: alg.step(k, s, kd, eps, T), lambda s: s)


@dataclasses.dataclass(frozen=True)
class SGNHT(SGMCMCSampler):
    """Stochastic-gradient Nosé-Hoover thermostat, ``blackjax.sgnht`` (Ding et al. 2014, NeurIPS).

    z' = z + ε p, p' = (1 - ξ ε) p + ε ĝ(z) + √(2 α T ε) η, ξ' = ξ + ε (|p'|² / D - T):
    the thermostat ξ absorbs unknown gradient noise. p starts ~ N(0, I), ξ at α.

    Parameters
    ----------
    step_size : float, default 0.1
    friction : float, default 1.0
        α, the injected-noise friction and the thermostat's start.
    """

    step_size: float = 0.1
    friction: float = 1.0
    display_name: ClassVar[str] = "SGNHT"

    def __post_init__(self):
        super().__post_init__()
        self._require(self.friction > 0, "friction", "must be > 0")

    def kernel(self, estimator):
        alg = blackjax.sgnht(_grad(estimator), alpha=self.friction, beta=0.0)
        T = self.temperature
        return (lambda x, k, kd: alg.init(x, k), lambda k, s, kd, eps: alg.step(k, s, kd, eps, T),
                lambda s: s.position)


@dataclasses.dataclass(frozen=True)
class BAOAB(SGMCMCSampler):
    """Underdamped Langevin dynamics with the BAOAB splitting (Leimkuhler & Matthews 2013),
    one minibatch gradient per step (:mod:`ppl_posteriors.mcmc.baoab`).

    Parameters
    ----------
    step_size : float, default 0.2
        h, in units of the dynamics' time (stable for h² λ < 4).
    friction : float, default 1.0
        γ, per unit time (c = exp(-γ h) in the O step).
    """

    step_size: float = 0.2
    friction: float = 1.0
    display_name: ClassVar[str] = "BAOAB"

    def __post_init__(self):
        super().__post_init__()
        self._require(self.friction > 0, "friction", "must be > 0")

    def kernel(self, estimator):
        alg = _baoab.as_top_level_api(estimator, self.friction)
        T = self.temperature
        return (lambda x, k, kd: alg.init(x, k, kd, T), lambda k, s, kd, eps: alg.step(k, s, kd, eps, T),
                lambda s: s.position)

    def lp_of(self, state, position, estimator, data_key):
        return state.logdensity  # computed with the gradient: no extra pass


register_method("sgld", SGLD, "Stochastic-gradient Langevin dynamics on minibatches (BlackJAX), no accept step")
register_method("sghmc", SGHMC, "Stochastic-gradient HMC on minibatches (BlackJAX), no accept step")
register_method("sgnht", SGNHT, "Stochastic-gradient Nosé-Hoover thermostat on minibatches (BlackJAX)")
register_method("baoab", BAOAB, "Underdamped Langevin, BAOAB splitting, on minibatches (one gradient per step)")
