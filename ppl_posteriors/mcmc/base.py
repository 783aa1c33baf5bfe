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
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import ModelError, Status
from ..registry import MethodConfig
from ..results.raw import RawPosterior
from ..runtime.mesh import default_chain_mesh
from .adaptation import Adaptation
from .init import check_init, program_config, starting_points, warm_start
from .loop import CHAIN_LAYOUTS, chain_layout, run_chains
from .mass_matrix import MASS_MATRICES, adaptation_for, resolve_mass_matrix
from .restart import report_restarts

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
    restart_stuck : bool, default True
        At checkpoints in warmup (7.5 %, 15 %, 25 % of it), restart chains stuck far below
        another chain in both log density and estimated log mass (a frozen chain has none),
        from the state of the best chains (position, step size, mass matrix, adaptation state);
        recorded in ``attrs`` (``num_restarted_chains``, ``restarted_chains``) and in a
        status message. See :mod:`ppl_posteriors.mcmc.restart`. A no-op with one chain or
        without in-loop warmup (MCLMC, adjusted MCLMC, ChEES tune before the loop).
    chain_layout : {"auto", "lockstep", "per_device"}, default "auto"
        On a mesh with a ``"chain"`` axis: ``"per_device"`` runs each device's chains in
        their own loop (``jax.shard_map``: no chain waits for another device's longest
        trajectory); ``"lockstep"`` vmaps all chains in one loop that XLA splits over the
        devices. ``"auto"`` is ``"per_device"`` where the mesh has no ``"data"`` axis.
        Without ``mesh=``, ``"auto"`` puts the chains on the process's CPU host devices
        when it has several (``PPL_POSTERIORS_HOST_DEVICES``; at most one per usable core,
        a divisor of ``num_chains``: :func:`~ppl_posteriors.runtime.mesh.default_chain_mesh`),
        each device its own loop; ``"lockstep"`` keeps them vmapped on one device. The
        layout used is ``attrs["chain_layout"]``, the devices ``attrs["num_devices"]``. See
        :mod:`ppl_posteriors.mcmc.loop`.
    init : {"uniform", "pathfinder"}, default "uniform"
        ``"pathfinder"``: start the chains at multi-path Pathfinder draws and the mass
        matrix at each path's L-BFGS inverse Hessian (:mod:`ppl_posteriors.mcmc.init`).
    init_from : result, optional
        A Laplace or VI result of the same model (``pp.infer(..., method=pp.Laplace())``):
        the chains start at draws from its approximation and the mass matrix at its
        covariance. Its arrays are program arguments: another result does not recompile.

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
    restart_stuck: bool = True
    chain_layout: str = "auto"
    init: str = "uniform"
    init_from: Any = None

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
        self._require(isinstance(self.restart_stuck, bool), "restart_stuck", "must be True or False")
        self._choice("chain_layout", CHAIN_LAYOUTS)
        check_init(self)

    def to_dict(self):
        out = super().to_dict()
        if self.init_from is not None:
            out["init_from"] = "a previous result"
        return out

    @property
    def num_parallel(self) -> int:
        return self.num_chains

    def default_mesh(self, arrays):
        """Without ``mesh=``: the CPU host devices, when the process has them and
        ``chain_layout="auto"`` (:func:`~ppl_posteriors.runtime.mesh.default_chain_mesh`)."""
        return default_chain_mesh(self.num_chains, arrays) if self.chain_layout == "auto" else None

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
        warm = warm_start(self, rt, rng_key)  # init_from's arrays (None without)

        def program(ld, ctx, key, extras, warm):
            logdensity_fn = self.target(ld, extras)
            k_init, k_run = jax.random.split(key)
            x0, ok, imm0 = starting_points(self, ld, k_init, warm)
            x0 = ctx.shard_chains(x0)
            adaptation = self.adaptation(logdensity_fn, ld, extras)
            if imm0 is not None and adaptation.with_initial_metric is not None:
                adaptation = adaptation.with_initial_metric(ctx.shard_chains(imm0))
            res = run_chains(
                k_run,
                ld.unravel(x0),
                sampler=self,
                logdensity_fn=logdensity_fn,
                adaptation=adaptation,
                num_samples=self.num_samples,
                progress=ctx.progress,
                progress_offset=self.num_warmup - adaptation.num_steps,
                restart_stuck=self.restart_stuck,
                mesh=ctx.mesh,
                layout=self.chain_layout,
            )
            return res, ok

        res, ok = rt.call("sample", program, rng_key, extras, warm, phases=self.phases(), desc=self.display_name,
                          config=program_config(self))
        if not bool(np.all(ok)):
            raise ModelError(
                "no starting point with a finite log density and gradient was found in "
                f"uniform(-{self.init_radius}, {self.init_radius}) draws on the unconstrained space; "
                "check the priors and the data (e.g. a likelihood that is -inf for every parameter)"
            )
        raw = self._finish(res)
        raw.info["chain_layout"] = chain_layout(self.chain_layout, rt.mesh, self.num_chains)  # the one used
        return raw

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
        restart_info, restart_messages = report_restarts(res)
        info = {
            **restart_info,
            "messages": messages + restart_messages,
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
    """A sampler whose step size and mass matrix adapt during warmup.

    Parameters
    ----------
    mass_matrix : {"auto", "diag", "dense", "nutpie", "low_rank"}, default "diag" ("auto" for NUTS)
        The inverse mass matrix (proposal covariance) and its warmup. ``"auto"``:
        "low_rank" for 20 <= D <= 1000 unconstrained parameters, else "diag"
        (``mass_matrix.AUTO_LOW_RANK_DIMS``; measured on B2); the one used is in
        ``attrs["mass_matrix"]``.
        ``"diag"`` / ``"dense"``: Stan's windowed Welford estimate of the draws'
        variances / covariance; ``"nutpie"``: nutpie's diagonal sqrt(Var(x)/Var(∇log p))
        from draws and gradients, updated every draw; ``"low_rank"``: nutpie's
        diagonal times a low-rank correction (NUTS and HMC only). See
        :mod:`ppl_posteriors.mcmc.mass_matrix`.
    dense_mass : bool, default False
        Kept alias: ``dense_mass=True`` is ``mass_matrix="dense"`` (both spellings give
        equal configs).
    """

    mass_matrix: str = "diag"
    dense_mass: bool = False

    #: the ``mass_matrix`` values this sampler takes (gradient-free ones: diag and dense)
    mass_matrices: ClassVar[tuple[str, ...]] = ("auto", "diag", "dense", "nutpie")

    def __post_init__(self):
        super().__post_init__()
        if self.dense_mass:
            self._require(self.mass_matrix in ("auto", "diag", "dense"), "dense_mass",
                          f"contradicts mass_matrix={self.mass_matrix!r}; use mass_matrix alone")
            object.__setattr__(self, "mass_matrix", "dense")
        self._choice("mass_matrix", MASS_MATRICES)
        allowed = self.mass_matrices if self.uses_gradients else ("auto", "diag", "dense")
        self._require(self.mass_matrix in allowed, "mass_matrix",
                      f"must be one of {allowed} for {type(self).__name__}")
        object.__setattr__(self, "dense_mass", self.mass_matrix == "dense")

    def adaptation(self, logdensity_fn, ld, extras) -> Adaptation:
        kind = resolve_mass_matrix(self.mass_matrix, ld.dim)
        return adaptation_for(kind, self.num_warmup, self.target_accept, logdensity_fn)

    def mass_matrix_info(self, tuned: dict) -> dict:
        """``{"mass_matrix": the kind used}`` ("auto" resolved by the model's dimension)."""
        imm = tuned["imm_sigma"] if "imm_sigma" in tuned else tuned["inverse_mass_matrix"]
        return {"mass_matrix": resolve_mass_matrix(self.mass_matrix, int(np.shape(imm)[-1]))}


def mass_matrix_sqrt(inverse_mass_matrix):
    """S with S Sᵀ = M⁻¹: elementwise sqrt of a diagonal (D,), Cholesky factor of a dense (D, D)."""
    if jnp.ndim(inverse_mass_matrix) == 1:
        return jnp.sqrt(inverse_mass_matrix)
    return jnp.linalg.cholesky(inverse_mass_matrix)
