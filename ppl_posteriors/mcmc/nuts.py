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
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import ModelError, Status
from ..density.init import draw_initial_positions
from ..registry import MethodConfig, register_method
from ..results.raw import RawPosterior
from .adaptation import window_adaptation
from .loop import run_chains

__all__ = ["NUTS"]


@dataclasses.dataclass(frozen=True)
class NUTS(MethodConfig):
    """No-U-Turn Sampler (BlackJAX) with Stan's window adaptation.

    Parameters
    ----------
    num_chains : int, default 4
        Independent chains, vmapped.
    num_warmup : int, default 1000
        Warmup (adaptation) iterations per chain; discarded.
    num_samples : int, default 1000
        Post-warmup draws per chain.
    target_accept : float, default 0.8
        Target mean acceptance probability of the step-size adaptation, in (0, 1).
        Raise it (0.9, 0.95, 0.99) when there are divergences.
    max_tree_depth : int, default 10
        Maximum number of trajectory doublings (at most 2**depth - 1 leapfrog steps).
    dense_mass : bool, default False
        Adapt a dense inverse mass matrix instead of a diagonal one.
    init_radius : float, default 2.0
        Chains start at uniform(-init_radius, init_radius) on the unconstrained space.

    Raises
    ------
    ConfigError
        Invalid option values.
    """

    num_chains: int = 4
    num_warmup: int = 1000
    num_samples: int = 1000
    target_accept: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    init_radius: float = 2.0

    def __post_init__(self):
        self._positive_int("num_chains", "num_samples", "max_tree_depth")
        self._require(
            isinstance(self.num_warmup, int) and self.num_warmup >= 0, "num_warmup", "must be an integer >= 0"
        )
        self._require(0.0 < self.target_accept < 1.0, "target_accept", "must be in (0, 1)")
        self._require(self.init_radius >= 0, "init_radius", "must be >= 0")

    @property
    def num_parallel(self) -> int:
        return self.num_chains

    def run(self, rng_key, rt) -> RawPosterior:
        rt.log_density.require_full_data("NUTS")
        nuts_kernel = blackjax.nuts.build_kernel()
        adaptation = window_adaptation(self.num_warmup, self.target_accept, self.dense_mass)

        def stats_fn(state, info):
            return {
                "lp": state.logdensity,
                "energy": info.energy,
                "diverging": info.is_divergent.astype(jnp.int32),
                "tree_depth": info.num_trajectory_expansions,
                "n_steps": info.num_integration_steps,
                "acceptance_rate": info.acceptance_rate,
            }

        def program(ld, ctx, key):
            logdensity_fn = ld.logdensity_fn
            k_init, k_run = jax.random.split(key)
            x0, ok = draw_initial_positions(ld.flat_logdensity_fn, k_init, self.num_chains, ld.dim, self.init_radius)
            x0 = ctx.shard_chains(x0)

            def kernel(key, state, step_size, imm):
                return nuts_kernel(key, state, logdensity_fn, step_size, imm, max_num_doublings=self.max_tree_depth)

            res = run_chains(
                k_run,
                ld.unravel(x0),
                init_fn=lambda p: blackjax.nuts.init(p, logdensity_fn),
                kernel=kernel,
                adaptation=adaptation,
                num_samples=self.num_samples,
                stats_fn=stats_fn,
                progress=ctx.progress,
            )
            return res, ok

        phases = [("warmup", self.num_warmup), ("sampling", self.num_samples)]
        res, ok = rt.call("sample", program, rng_key, phases=phases, desc="NUTS")
        if not bool(np.all(ok)):
            raise ModelError(
                "no starting point with a finite log density and gradient was found in "
                f"uniform(-{self.init_radius}, {self.init_radius}) draws on the unconstrained space; "
                "check the priors and the data (e.g. a likelihood that is -inf for every parameter)"
            )

        stats = {k: np.asarray(v) for k, v in res.stats.items()}
        stats["diverging"] = stats["diverging"].astype(bool)
        stats["step_size"] = np.broadcast_to(np.asarray(res.step_size)[:, None], stats["lp"].shape).copy()
        n_div = int(stats["diverging"].sum())
        grad_evals = int(np.asarray(res.warmup_grad_evals).sum() + stats["n_steps"].sum())
        status, messages = Status.SUCCESS, []
        if n_div > 0:
            per_chain = stats["diverging"].sum(axis=1).tolist()
            status = Status.DIVERGENCES
            messages.append(
                f"{n_div} of {stats['diverging'].size} post-warmup transitions diverged "
                f"(per chain: {per_chain}); the sampler cannot explore part of the posterior, so "
                "the draws may be biased. Reparameterise (e.g. non-centre hierarchical "
                "parameters) or raise target_accept"
            )
        if not np.all(np.isfinite(stats["lp"])):
            status = Status.NON_FINITE
            messages.append("some draws have a non-finite log density")
        hit = float(np.mean(stats["tree_depth"] >= self.max_tree_depth))
        info = {
            "messages": messages,
            "grad_evals": grad_evals,
            "num_divergent": n_div,
            "max_tree_depth_fraction": hit,
            "is_mcmc": True,
        }
        return RawPosterior(res.position, stats, None, status, info)


register_method("nuts", NUTS, "No-U-Turn Sampler (BlackJAX) with Stan's window adaptation")
