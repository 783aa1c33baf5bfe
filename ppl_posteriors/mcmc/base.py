"""The sampler-adapter base: shared options, the one ``run``, the results.

A sampler adapter is a frozen config subclassing :class:`Sampler` that gives

* ``build(logdensity_fn, tuned) -> blackjax.SamplingAlgorithm`` -- the BlackJAX
  kernel with the tuned parameters of one chain (a dict of arrays);
* ``stats(state, info, tuned) -> {ArviZ name: scalar}`` -- its transition info under
  ArviZ ``sample_stats`` names (:data:`STATS_NAMES`);
* ``adaptation(logdensity_fn, ld, extras) -> Adaptation`` -- how ``tuned`` is found
  (default: Stan's window adaptation, :class:`WindowAdapted`).

Everything else -- initial points, the chain loop, progress bars, sharding of chains
over the mesh's ``"chain"`` axis, divergence and non-finite checks, gradient
counts -- is here and in :mod:`.loop`, written once for every sampler.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import ModelError, Status
from ..density.init import draw_initial_positions
from ..registry import MethodConfig
from ..results.raw import RawPosterior
from .adaptation import Adaptation, window_adaptation
from .loop import run_chains

__all__ = ["STATS_NAMES", "Sampler", "WindowAdapted", "mass_matrix_sqrt"]

# ArviZ's sample_stats names used by the adapters (a subset per sampler):
STATS_NAMES = {
    "lp": "log density of the draw (unconstrained space, Jacobian included)",
    "diverging": "the transition diverged (energy error above BlackJAX's threshold, or NaN)",
    "energy": "Hamiltonian at the draw (HMC family)",
    "step_size": "integrator step size or proposal scale",
    "tree_depth": "NUTS trajectory doublings",
    "n_steps": "log-density (or gradient) evaluations of the transition",
    "acceptance_rate": "Metropolis acceptance probability of the transition",
}


@dataclasses.dataclass(frozen=True)
class Sampler(MethodConfig):
    """Options every MCMC sampler shares (subclasses add their own).

    Parameters
    ----------
    num_chains : int, default 4
        Independent chains, vmapped (and split over a mesh's ``"chain"`` axis).
    num_warmup : int, default 1000
        Warmup (adaptation or tuning) iterations per chain; discarded.
    num_samples : int, default 1000
        Post-warmup draws per chain.
    target_accept : float
        Target mean acceptance probability of the step-size adaptation, in (0, 1);
        each sampler has its own default.
    init_radius : float, default 2.0
        Chains start at uniform(-init_radius, init_radius) draws on the unconstrained
        space (Stan's default), redrawn until log density and gradient are finite.

    Raises
    ------
    ConfigError
        Invalid option values.
    """

    num_chains: int = 4
    num_warmup: int = 1000
    num_samples: int = 1000
    target_accept: float = 0.8
    init_radius: float = 2.0

    display_name: ClassVar[str] = "MCMC"
    uses_gradients: ClassVar[bool] = True  # n_steps counts gradient evaluations
    reports_step_size: ClassVar[bool] = True  # tuned["step_size"] is a step size / proposal scale
    min_warmup: ClassVar[int] = 0
    min_dim: ClassVar[int] = 1

    def __post_init__(self):
        self._positive_int("num_chains", "num_samples")
        self._require(
            isinstance(self.num_warmup, int) and not isinstance(self.num_warmup, bool)
            and self.num_warmup >= self.min_warmup,
            "num_warmup",
            f"must be an integer >= {self.min_warmup}",
        )
        self._require(0.0 < self.target_accept < 1.0, "target_accept", "must be in (0, 1)")
        self._require(self.init_radius >= 0, "init_radius", "must be >= 0")

    @property
    def num_parallel(self) -> int:
        return self.num_chains

    # -- the adapter: subclasses implement these ------------------------------------
    def build(self, logdensity_fn, tuned):
        """The BlackJAX ``SamplingAlgorithm`` of one chain with parameters ``tuned``."""
        raise NotImplementedError

    def stats(self, state, info, tuned) -> dict:
        """``{ArviZ sample_stats name: scalar}`` of one transition; must hold ``lp`` and ``n_steps``."""
        raise NotImplementedError

    def adaptation(self, logdensity_fn, ld, extras) -> Adaptation:
        """How the parameters are tuned (see :mod:`.adaptation`); ``ld`` is the bound LogDensity."""
        raise NotImplementedError

    def target(self, ld, extras):
        """The log density handed to ``build`` (default: the model's, on the unconstrained space)."""
        return ld.logdensity_fn

    def setup(self, rt):
        """Arrays computed before sampling and passed to the program (default none)."""
        return ()

    def extra_info(self, stats: dict, tuned: dict) -> dict:
        """Method-specific scalars for ``idata.attrs``."""
        return {}

    def phases(self) -> list[tuple[str, int]]:
        return [("warmup", self.num_warmup), ("sampling", self.num_samples)]

    # -- the one run ----------------------------------------------------------------
    def run(self, rng_key, rt) -> RawPosterior:
        meta = rt.log_density
        meta.require_full_data(self.display_name)
        if meta.dim < self.min_dim:
            raise ModelError(
                f"{self.display_name} needs at least {self.min_dim} unconstrained parameters; "
                f"this model has {meta.dim}. Use pp.NUTS for it."
            )
        extras = self.setup(rt)

        def program(ld, ctx, key, extras):
            logdensity_fn = self.target(ld, extras)
            k_init, k_run = jax.random.split(key)
            x0, ok = draw_initial_positions(ld.flat_logdensity_fn, k_init, self.num_chains, ld.dim, self.init_radius)
            x0 = ctx.shard_chains(x0)
            adaptation = self.adaptation(logdensity_fn, ld, extras)
            res = run_chains(
                k_run,
                ld.unravel(x0),
                sampler=self,
                logdensity_fn=logdensity_fn,
                adaptation=adaptation,
                num_samples=self.num_samples,
                progress=ctx.progress,
                progress_offset=self.num_warmup - adaptation.num_steps,
            )
            return res, ok

        res, ok = rt.call("sample", program, rng_key, extras, phases=self.phases(), desc=self.display_name)
        if not bool(np.all(ok)):
            raise ModelError(
                "no starting point with a finite log density and gradient was found in "
                f"uniform(-{self.init_radius}, {self.init_radius}) draws on the unconstrained space; "
                "check the priors and the data (e.g. a likelihood that is -inf for every parameter)"
            )
        return self._finish(res)

    def _finish(self, res) -> RawPosterior:
        stats = {k: np.asarray(v) for k, v in res.stats.items()}
        tuned = {k: np.asarray(v) for k, v in res.tuned.items()}
        shape = stats["lp"].shape
        if "diverging" in stats:
            stats["diverging"] = stats["diverging"].astype(bool)
        if self.reports_step_size and "step_size" not in stats and "step_size" in tuned and tuned["step_size"].ndim == 1:
            stats["step_size"] = np.broadcast_to(tuned["step_size"][:, None], shape).copy()
        evals = int(np.asarray(res.warmup_grad_evals).sum() + stats["n_steps"].sum())
        status, messages = Status.SUCCESS, []
        n_div = int(stats["diverging"].sum()) if "diverging" in stats else 0
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
        info = {
            "messages": messages,
            "grad_evals": evals if self.uses_gradients else 0,
            "num_divergent": n_div,
            "is_mcmc": True,
            **self.extra_info(stats, tuned),
        }
        if not self.uses_gradients:
            info["density_evals"] = evals
        return RawPosterior(res.position, stats, None, status, info)


@dataclasses.dataclass(frozen=True)
class WindowAdapted(Sampler):
    """A sampler tuned by Stan's window adaptation (step size and mass matrix).

    Parameters
    ----------
    dense_mass : bool, default False
        Adapt a dense inverse mass matrix (proposal covariance) instead of a diagonal one.
    """

    dense_mass: bool = False

    def adaptation(self, logdensity_fn, ld, extras) -> Adaptation:
        return window_adaptation(self.num_warmup, self.target_accept, self.dense_mass)


def mass_matrix_sqrt(inverse_mass_matrix):
    """S with S Sᵀ = M⁻¹: elementwise sqrt of a diagonal (D,), Cholesky factor of a dense (D, D)."""
    if jnp.ndim(inverse_mass_matrix) == 1:
        return jnp.sqrt(inverse_mass_matrix)
    return jnp.linalg.cholesky(inverse_mass_matrix)
