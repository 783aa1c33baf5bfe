"""``pp.Laplace``: Gaussian approximation at the MAP with the exact dense Hessian.

Math: with f(z) = logdensity_fn(z) on the unconstrained space,

    z* = argmax f(z),    P = -∇² f(z*),    p(z | y) ≈ N(z; z*, P⁻¹),

and the Laplace estimate of the evidence log Z ≈ f(z*) + D/2 log 2π - ½ log det P
(recorded as ``idata.attrs["log_evidence"]``; with ``jacobian=True`` it is the
evidence of the model in its constrained parametrisation).

The search runs from ``num_starts`` Stan-style uniform(-init_radius, init_radius)
starts, vmapped, and keeps the best (:func:`~ppl_posteriors.laplace.mode.find_map_multistart`).
Drawing the starts, the searches, the choice, the draws of the Gaussian and the
diagnostics at the chosen point are one jitted program.

If the point found is not a stationary point, or P is not positive definite
there, the approximation does not exist: the result carries a failure status and,
with ``throw=True``, raises ``NumericalError``. It never falls back to the MAP
alone or to a clipped matrix.

References: Tierney & Kadane (1986), JASA 81:82-86; MacKay (1992), Neural Comput.
4:448-472; Daxberger et al. (2021), "Laplace Redux", NeurIPS.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import ConfigError, NumericalWarning, Status
from ..density.init import draw_initial_positions
from ..registry import MethodConfig, register_method
from ..results.raw import RawPosterior
from ..results.resample import importance_resample, pool_size
from ..runtime.programs import approximation_weights
from .diagnose import _diagnose
from .fit import fit_approximation, run_batches, site_index
from .gaussian import DenseGaussian, laplace_log_evidence
from .mode import find_map_multistart

__all__ = ["Laplace"]

# rounds of redrawing a start whose log density or gradient is not finite (as NUTS)
_MAX_TRIES = 100
# |z| beyond which a coordinate of a bounded site counts as at the edge of the unconstrained
# space (a positive site at exp(-12) ~ 6e-6 of its unit, or a probability within 6e-6 of 0 or 1)
_EDGE_Z = 12.0


@dataclasses.dataclass(frozen=True)
class Laplace(MethodConfig):
    """Laplace approximation at the MAP: curvature x structure (default: exact dense Hessian).

    Parameters
    ----------
    curvature : {"hessian", "ggn", "fisher", "mc_fisher"}, default "hessian"
        The precision's likelihood part (the prior part is always the exact -∇² log prior,
        log-Jacobian included): the exact Hessian of -logdensity_fn; the generalised
        Gauss-Newton Jᵀ I(z) J with I(z) the observed distributions' Fisher information in
        their parameters z (= the Hessian of -log p(y | z) for natural parameters; see
        ``laplace.outer``); the empirical Fisher Σ_n g_n g_nᵀ (per-datum gradients along the
        observed sites' batch shape); or the expected Fisher by ``num_fisher_samples``
        draws of y from the model.
    structure : {"full", "diag", "lowrank", "kron"}, default "full"
        How the precision is stored (``laplace.structures``): dense (the only one that forms
        a d x d matrix), its exact diagonal, the top-``rank`` Lanczos eigenpairs of the
        likelihood part plus the diagonal of the prior part, or K-FAC blocks for the layers
        marked with :func:`ppl_posteriors.laplace.dense` plus the exact diagonal elsewhere
        (kron needs a GGN/Fisher curvature; ``hessian`` with ``kron`` raises ConfigError).
    sites : sequence of str or None
        Laplace over these latent sites only, the others held at the MAP (subnetwork /
        last-layer Laplace). None: every site.
    rank : int, default 10
        Rank k of ``structure="lowrank"``.
    num_fisher_samples : int, default 64
        Draws of y for ``mc_fisher`` and for a GGN outer matrix with no closed form.
    batch_size : int or None, default 256
        Coordinates per chunk of the matrix-free diagonals (memory ~ batch_size x data).
    fallback : sequence of str, default ()
        Tried in order when the precision is not finite or not positive definite, each
        "curvature", "structure" or "curvature:structure", with "+jitter" to add
        ``jitter`` to the diagonal (e.g. ``("ggn", "ggn:diag+jitter")``). Recorded in
        ``attrs["fallback"]`` and ``attrs["fallback_used"]``; nothing is tried silently.
    jitter : float, default 1e-6
        Added to the precision's diagonal by a "+jitter" fallback.
    predictive : sequence of {"glm", "mc", "probit"}, default ()
        Predictives to compute (``laplace.predictive``), returned in
        ``RawPosterior.info["posterior_predictive"]``.
    num_samples : int, default 1000
        Draws from N(z*, P⁻¹), returned as one chain.
    num_starts : int, default 4
        Starting points of the MAP search, drawn uniformly from
        (-init_radius, init_radius) on every coordinate of the unconstrained space (as
        Stan's ``init_r``; a draw whose log density or gradient is not finite is
        redrawn, up to 100 rounds, as for NUTS). The searches run vmapped in one
        compiled program. The best end point is kept: first the starts that reached
        a stationary point (finite density and gradient, (L-)BFGS within ``max_steps``,
        Newton decrement <= ``mode_tol``) with a positive definite -∇²f, then the
        stationary ones, then the finite ones; within that group the highest log
        density wins (ties: the lowest start index).
    init_radius : float, default 2.0
        Half-width of the uniform starting draws (0 starts every search at the origin).
    jacobian : bool, default True
        Include the log-Jacobian of the transforms to the unconstrained space in
        the density (the mode is then the mode of the unconstrained density);
        ``False`` finds the mode in the constrained space.
    max_steps : int, default 1000
        (L-)BFGS iteration limit per start; a search that reaches it is not converged.
    rtol, atol : float or None
        (L-)BFGS termination tolerances; None means 1e-8 in float64 and 1e-5 in float32.
    mode_tol : float, default 0.01
        A start reached a stationary point when its (saddle-free) Newton decrement
        sqrt(gᵀ|H|⁻¹g), the distance to the stationary point in posterior sd, is
        below this (see ``laplace.mode``).
    map_solver : {"auto", "dense", "matrix_free"}, default "auto"
        The MAP search (``laplace.mode``). "dense": BFGS (a D x D inverse-Hessian estimate), then
        Newton steps with the dense Hessian and its Cholesky factor (:func:`~ppl_posteriors.laplace.mode.find_map`).
        "matrix_free": L-BFGS, then Newton-CG steps on Hessian-vector products and Lanczos checks of
        the end point, memory O(D) (:func:`~ppl_posteriors.laplace.mode.find_map_matrix_free`;
        Nocedal & Wright 2006, ch. 7); there "positive definite" means that CG met no direction of
        non-positive curvature and converged, and that a Lanczos probe of min(D, 32) steps found no
        Ritz value <= 0 (exact for D <= 32, a Krylov-space test above). "auto": "dense" for
        ``structure="full"`` (which forms the D x D precision anyway) or D <= 4096, else
        "matrix_free". Recorded in ``attrs["map_solver"]``.
    throw : bool, default True
        Raise ``NumericalError`` on a failure (see Status below); with False the
        status is only recorded in ``idata.attrs``.
    num_steps : int, default 2000
        With ``batches=`` only: steps of the stochastic MAP (one minibatch each).
    optimizer : optax.GradientTransformation or None
        With ``batches=`` only: the stochastic MAP's optimiser (None: ``optax.adam(1e-2)``).
    average_fraction : float, default 0.5
        With ``batches=`` only: the MAP is the mean of this last fraction of the iterates
        (Polyak-Ruppert tail averaging; 0 returns the last iterate).
    temperature : float, default 1.0
        With ``batches=`` only (the full-data path raises ConfigError for T != 1): the
        precision is P₀ + (1/T) Σ_n C_n (T < 1 sharpens, T > 1 widens).
    importance_resampling : bool, default False
        Return draws resampled from a pool of max(4 num_samples, 4000) draws of the Gaussian
        with their Pareto-smoothed importance weights p/q (PSIS-SIR, systematic resampling:
        ``ppl_posteriors.results.resample``), which moves a skewed posterior's moments from
        the mode's Gaussian towards the posterior's. ``attrs`` get ``importance_resampling``,
        ``resampling_ess`` (1/Σw̃² of the pool), ``resampling_unique``, ``resampling_pool``
        and ``resampling_khat``; a ``NumericalWarning`` says when k-hat > 0.7 (the resampled
        draws are then unreliable). The stored Gaussian (``approximation`` group) is unchanged.

    Minibatches (``pp.infer(..., batches=pp.Batches(loader, num_data=N))``): "ggn" or "fisher"
    x "full" or "diag" only (others, ``fallback`` and ``predictive`` raise ConfigError). θ* from
    ``num_steps`` optimiser steps on log p(θ) + (N/B) Σ_{n∈B} log p(y_n | θ); then one epoch,
    without the N/B scale: P = P₀(θ*) + (1/T) Σ_{n=1}^{N} C_n(θ*), the prior part once.
    MAP_NOT_CONVERGED when the full-data Newton decrement at θ* exceeds ``mode_tol``
    (``laplace.fit.run_batches``; docs/laplace.md, "Streaming curvature").

    The Laplace log marginal likelihood log Z ≈ f(z*) + d/2 log 2π − ½ log det P is in
    ``attrs["log_evidence"]`` for every curvature and structure (with ``sites``, of the
    chosen sites given the others at the MAP; with ``structure="lowrank"`` it leaves out the
    curvature outside the top ``rank`` directions, so it overstates log Z: compare it only
    between fits of the same structure). In float32 a precision whose condition
    number exceeds 1e4 gives a ``NumericalWarning`` with advice. A curvature other than
    the Hessian accepts a stationary point whose Hessian is indefinite (its own positive
    definiteness is checked instead, status 3 below).

    Status
    ------
    Judged at the chosen point, in this order (the first that applies):

    1. ``NON_FINITE``: no start with a finite log density and gradient was found,
       or the search ended where the density or gradient is not finite; the
       message names the sites whose log-density term (``LogDensity.site_terms``)
       or gradient is not finite.
    2. ``MAP_NOT_CONVERGED``: no start reached a stationary point (BFGS hit
       ``max_steps``, or the Newton decrement is above ``mode_tol``; the message names
       the parameter with the largest gradient), or the point found is at the edge of
       the unconstrained space (|z| > 12 on a site with a bounded support) where the
       curvature cannot hold a Gaussian (-∇²f not positive definite, or its draws
       overflow): an unbounded density as a scale → 0 or ∞ (a funnel) or a supremum on
       the boundary of the support, so no interior mode exists; the message names the site.
    3. ``INDEFINITE_CURVATURE``: a stationary point (gradient ~0) whose P is not
       positive definite: a saddle (negative eigenvalue) or a flat direction (zero
       eigenvalue: a parameter that neither prior nor likelihood informs, or a
       non-identified combination); the message names the parameters along the
       offending eigenvector (``LogDensity.param_names`` labels; with the matrix-free
       search, of the smallest-curvature Ritz vector found by CG/Lanczos: no eigenvalues
       are listed, as none are computed).
    4. ``NON_FINITE``: draws of the Gaussian whose posterior density is not finite.

    ``idata.attrs`` gets ``num_starts``, ``map_starts_finite`` (starts with a finite
    density and gradient), ``map_starts_converged`` (starts that reached a
    stationary point), ``map_starts_at_mode`` (starts within max(0.1, 2·mode_tol)
    posterior sd of the chosen point, itself included), ``map_start_index``,
    ``map_logdensity`` (f at the chosen point), ``map_max_abs_grad`` (max |∇f| there),
    ``newton_decrement``, ``map_steps`` (its (L-)BFGS iterations), ``map_solver`` and
    ``log_evidence``; with the matrix-free search also ``map_hessian_pd``, ``map_cg_converged``,
    ``map_negative_curvature`` (of the last Newton-CG solve at the chosen point) and
    ``map_min_curvature`` (smallest Ritz value of -∇²f found there by Lanczos: an upper
    bound on its smallest eigenvalue, see ``laplace.mode``).

    Raises
    ------
    ConfigError
        Invalid option values.
    """

    num_samples: int = 1000
    num_starts: int = 4
    init_radius: float = 2.0
    jacobian: bool = True
    max_steps: int = 1000
    rtol: float | None = None
    atol: float | None = None
    mode_tol: float = 0.01
    throw: bool = True
    curvature: str = "hessian"
    structure: str = "full"
    sites: tuple | None = None
    rank: int = 10
    num_fisher_samples: int = 64
    batch_size: int | None = 256
    fallback: tuple = ()
    jitter: float = 1e-6
    predictive: tuple = ()
    num_steps: int = 2000
    optimizer: object = None
    average_fraction: float = 0.5
    temperature: float = 1.0
    importance_resampling: bool = False
    map_solver: str = "auto"
    _jitter_on: bool = dataclasses.field(default=False, repr=False)

    def __post_init__(self):
        for name in ("sites", "fallback", "predictive"):
            v = getattr(self, name)
            if isinstance(v, str):
                v = (v,)
            if v is not None:
                object.__setattr__(self, name, tuple(v))
        self._positive_int("num_samples", "num_starts", "max_steps", "rank", "num_fisher_samples")
        self._choice("curvature", _CURVATURES)
        self._choice("structure", _STRUCTURES)
        self._choice("map_solver", _MAP_SOLVERS)
        self._require(not (self.curvature == "hessian" and self.structure == "kron"), "structure",
                      "'kron' (K-FAC) needs per-datum outer factors: use curvature='ggn', 'fisher' or 'mc_fisher'")
        self._require(self.jitter >= 0, "jitter", "must be >= 0")
        self._require(self.batch_size is None or self.batch_size >= 1, "batch_size", "must be >= 1 or None")
        for p in self.predictive:
            self._require(p in ("glm", "mc", "probit"), "predictive", f"unknown predictive {p!r}; use 'glm', 'mc' or 'probit'")
        for f in self.fallback:
            _parse_fallback(self, f)
        self._require(self.init_radius >= 0, "init_radius", "must be >= 0")
        self._require(self.mode_tol > 0, "mode_tol", "must be > 0")
        self._positive_int("num_steps")
        self._require(0.0 <= self.average_fraction < 1.0, "average_fraction", "must be in [0, 1)")
        self._require(isinstance(self.temperature, (int, float)) and self.temperature > 0, "temperature",
                      "must be > 0 (1.0 is the Bayesian posterior)")
        if self.optimizer is not None:
            import optax

            self._require(isinstance(self.optimizer, optax.GradientTransformation), "optimizer",
                          "must be an optax.GradientTransformation, e.g. optax.adam(1e-2)")

    supports_batches = True  # ggn/fisher x full/diag stream: pp.infer(..., batches=pp.Batches(...))

    @property
    def num_parallel(self) -> int:
        return self.num_starts

    def _map_solver(self, dim: int) -> str:
        """The MAP search used for a model of ``dim`` unconstrained coordinates ("dense" or
        "matrix_free"; see ``map_solver``)."""
        if self.map_solver != "auto":
            return self.map_solver
        return "dense" if (self.structure == "full" or dim <= _DENSE_MAP_MAX_DIM) else "matrix_free"

    def _program(self, ld, ctx, key):
        """The whole numerical work, pure in (LogDensity, key): starts, searches, choice, draws.
        (No progress bar: the searches end at different steps.) Dense MAP search only."""
        k_init, k_draw = jax.random.split(key)
        ms, x0, ok = self._search(ld, ctx, k_init)
        res = ms.best
        approx = DenseGaussian(res.position, res.precision, res.cholesky)
        return ms, x0, ok, approx, approx.sample_flat(k_draw, pool_size(self.num_samples, self.importance_resampling))

    def _search(self, ld, ctx, k_init):
        """Starts and the multi-start MAP search (``map_solver``): ``(ms, x0, ok)``."""
        x64 = jnp.result_type(float) == jnp.float64
        rtol = self.rtol if self.rtol is not None else (1e-8 if x64 else 1e-5)
        atol = self.atol if self.atol is not None else (1e-8 if x64 else 1e-5)
        x0, ok = draw_initial_positions(
            ld.flat_logdensity_fn, k_init, self.num_starts, ld.dim, self.init_radius, _MAX_TRIES
        )
        x0 = ctx.shard_chains(x0)  # restarts over the mesh's chain axis
        ms = find_map_multistart(
            ld.flat_logdensity_fn, x0, ok, mode_tol=self.mode_tol, same_mode_tol=max(0.1, 2 * self.mode_tol),
            max_steps=self.max_steps, rtol=rtol, atol=atol, solver=self._map_solver(ld.dim),
        )
        return ms, x0, ok

    @property
    def _is_default(self) -> bool:
        return self.curvature == "hessian" and self.structure == "full" and self.sites is None

    def _general_program(self, ld, ctx, key):
        """MAP search as in ``_program``, then the chosen curvature x structure and draws."""
        ms, x0, ok = self._search(ld, ctx, jax.random.split(key)[0])  # the starts of _program
        approx, checks, extra, draws = self._fit_program(ld, ctx, ms.best.position, jax.random.fold_in(key, 1))
        return ms, x0, ok, approx, checks, extra, draws

    def _fit_program(self, ld, ctx, mean, key):
        k_fit, k_draw = jax.random.split(key)
        jitter = self.jitter if self._jitter_on else 0.0
        approx, checks, extra = fit_approximation(self, ld, mean, k_fit, self.curvature, self.structure, jitter)
        return approx, checks, extra, approx.sample_flat(k_draw, pool_size(self.num_samples, self.importance_resampling))

    @staticmethod
    def _at_point(ld, ctx, point):
        """Per-site log-density terms and gradients at ``point`` (D,): names the culprit
        of a non-finite result (a separate program, run only then)."""
        pos = ld.unravel(point)
        return ld.site_terms(pos), jax.grad(ld.logdensity_fn)(pos)

    def run(self, rng_key, rt) -> RawPosterior:
        if rt.batches is not None:  # stochastic MAP + curvature streamed over one epoch
            return run_batches(self, rt, rng_key)
        if self.temperature != 1.0:
            raise ConfigError(f"Laplace(temperature={self.temperature!r}) applies only with batches=; "
                              "leave temperature=1.0 for the full-data Laplace")
        ld = rt.log_density
        ld.require_full_data("Laplace")
        site_index(ld, self.sites)  # unknown sites: ConfigError before any compilation
        # the search, the curvature and the draws in one program; the draws' log densities in
        # the program shared with VI (compiled once per model); small programs compile faster
        checks = extra = None
        solver = self._map_solver(ld.dim)
        if self._is_default and solver == "dense":
            ms, x0, ok, approx, draws = rt.call("laplace", self._program, rng_key)
        else:
            ms, x0, ok, approx, checks, extra, draws = rt.call("laplace", self._general_program, rng_key)
        lp, log_weight = approximation_weights(rt, approx, draws)
        at_point = None
        if int(np.asarray(ms.tier)[int(ms.index)]) == 0:
            # where to name non-finite sites: the end point, or its start if the end is not finite
            end = np.asarray(ms.best.position)
            point = end if np.all(np.isfinite(end)) else np.asarray(x0)[int(ms.index)]
            at_point = (point, *rt.call("laplace_at_point", self._at_point, point))
        res = ms.best
        status, messages = _diagnose(self, ms, ok, at_point, ld, lp[: self.num_samples], checks, self._what)
        used, cfg = "", self
        if status in (Status.INDEFINITE_CURVATURE, Status.NON_FINITE) and self.fallback and at_point is None:
            for entry in self.fallback:
                alt = _parse_fallback(self, entry)
                a2, c2, e2, d2 = rt.call(f"laplace_fit_{entry}", alt._fit_program, res.position,
                                         jax.random.fold_in(rng_key, 2), config=alt)
                lp2, lw2 = approximation_weights(rt, a2, d2)
                s2, m2 = _diagnose(alt, ms, ok, None, ld, lp2[: self.num_samples], c2, alt._what)
                messages = messages + [f"fallback {entry!r}: {s2.value}" + (f": {m2[0]}" if m2 else "")]
                if not s2.is_failure:
                    used, cfg, status = entry, alt, s2
                    approx, checks, extra, draws, lp, log_weight = a2, c2, e2, d2, lp2, lw2
                    break
        khat_log_weights = log_weight
        n = self.num_samples
        resampled = {}
        if self.importance_resampling and not status.is_failure:
            rs = importance_resample(draws, lp, log_weight, n, jax.random.fold_in(rng_key, 4), what="Laplace Gaussian", warn=False)
            draws, lp, log_weight, resampled, messages = rs.draws, rs.lp, rs.log_weight, rs.info, messages + rs.messages
        draws, lp, log_weight = draws[:n], lp[:n], log_weight[:n]
        grad = np.asarray(res.grad)
        if checks is None:
            log_z = float(laplace_log_evidence(res.logdensity, res.cholesky))
            prec = np.asarray(res.precision)
            cond = _cond(prec) if (prec.dtype == np.float32 or prec.shape[0] <= 500) else float('nan')
        else:
            d = int(np.asarray(approx.index).shape[0])
            log_z = float(res.logdensity) + 0.5 * d * math.log(2 * math.pi) - 0.5 * float(approx.logdet())
            cond = float(checks["cond"])
        if np.asarray(res.position).dtype == np.float32 and np.isfinite(cond) and cond > 1e4:
            msg = (
                f"the precision's condition number is {cond:.3g}: in float32 its solves, log-det and draws "
                "lose about log10(cond) of 7 digits. Enable float64 (jax.config.update('jax_enable_x64', "
                "True)), standardise the predictors, or use a stronger prior"
            )
            warnings.warn(msg, NumericalWarning, stacklevel=2)
            messages = messages + [msg]
        info = {
            "messages": messages,
            "curvature": cfg.curvature,
            "structure": cfg.structure,
            "laplace_sites": ",".join(self.sites) if self.sites else "",
            "rank": self.rank if cfg.structure == "lowrank" else 0,
            "jacobian": int(self.jacobian),
            "fallback": " > ".join(self.fallback),
            "fallback_used": used,
            "condition_number": cond,
            "num_starts": self.num_starts,
            "map_starts_finite": int(np.sum(ok)),
            "map_starts_converged": int(np.sum(np.asarray(ms.tier) >= 2)),
            "map_starts_at_mode": int(np.sum(ms.at_mode)),
            "map_start_index": int(ms.index),
            "map_steps": int(res.num_steps),
            "map_logdensity": float(res.logdensity),
            "map_max_abs_grad": float(np.max(np.abs(grad))) if grad.size else 0.0,
            "newton_decrement": float(res.decrement),
            "map_solver": solver,
            "log_evidence": log_z,
            "khat_log_weights": khat_log_weights,
            "importance_resampling": int(bool(resampled.get("importance_resampling", 0))),
            **{k: v for k, v in resampled.items() if k != "importance_resampling"},
            # arrays: kept in the RawPosterior only (attrs take scalars)
            "map_starts": np.asarray(x0),
            "map_start_logdensities": np.asarray(ms.starts.logdensity),
            "map_start_tiers": np.asarray(ms.tier),
        }
        if solver == "matrix_free":  # the end-point checks of the chosen start (laplace.mode)
            info["map_hessian_pd"] = int(bool(res.pd))
            info["map_cg_converged"] = int(bool(res.cg_converged))
            info["map_negative_curvature"] = int(bool(res.negative_curvature))
            info["map_min_curvature"] = float(res.min_curvature)
        if extra is not None:
            obs = sorted(ld.split.observed)
            info["ggn_mc_sites"] = ",".join(n for n, f in zip(obs, np.asarray(extra["mc"]), strict=True) if f)
            if "kron" in extra:
                if not bool(extra["kron_isotropic"]):
                    raise ConfigError(
                        "structure='kron' needs an isotropic prior precision on each K-FAC layer site "
                        "(e.g. Normal(0, s) with one s per site); use structure='diag' or 'lowrank' otherwise"
                    )
                info["kron_sites"] = ",".join(n for (n, _), f in zip(ld.layout, np.asarray(extra["kron"]), strict=True) if f)
        if self.predictive:
            from .predictive import predictives

            info["posterior_predictive"] = predictives(rt, self, approx, draws, jax.random.fold_in(rng_key, 3))
        position = ld.unravel(draws[None])
        stats = {"lp": lp[None], "log_weight": log_weight[None]}
        return RawPosterior(position, stats, approx, status, info)

    @property
    def _what(self) -> str:
        return f"{self.curvature} x {self.structure}"


_CURVATURES = ("hessian", "ggn", "fisher", "mc_fisher")
_STRUCTURES = ("full", "diag", "lowrank", "kron")
_MAP_SOLVERS = ("auto", "dense", "matrix_free")
# map_solver="auto": up to this dimension the dense search (D x D BFGS estimate, Hessian,
# Cholesky: 4096² float64 = 128 MiB each) is used for every structure; it is the more robust
# search in float32 (B1's D = 2410 and notebook 02 stay on it)
_DENSE_MAP_MAX_DIM = 4096


def _parse_fallback(cfg: Laplace, entry: str) -> Laplace:
    """The config of a fallback entry "curvature", "structure" or "curvature:structure" [+jitter]."""
    text, jitter = (entry[: -len("+jitter")], True) if entry.endswith("+jitter") else (entry, False)
    curv, struct = cfg.curvature, cfg.structure
    for part in text.split(":") if text else []:
        if part in _CURVATURES:
            curv = part
        elif part in _STRUCTURES:
            struct = part
        else:
            raise ConfigError(
                f"Laplace(fallback=...): {entry!r} is not 'curvature', 'structure' or 'curvature:structure' "
                f"[+jitter]; curvatures {_CURVATURES}, structures {_STRUCTURES}"
            )
    if curv == "hessian" and struct == "kron":
        raise ConfigError(f"Laplace(fallback=...): {entry!r} pairs 'hessian' with 'kron' (K-FAC needs ggn/fisher)")
    return dataclasses.replace(cfg, curvature=curv, structure=struct, fallback=(), predictive=(),
                               jitter=cfg.jitter if jitter else 0.0, _jitter_on=jitter)


def _cond(p: np.ndarray) -> float:
    if not np.all(np.isfinite(p)):
        return float("nan")
    ev = np.linalg.eigvalsh(p)
    return float(ev[-1] / ev[0]) if ev[0] > 0 else float("inf")


register_method("laplace", Laplace, "Laplace approximation at the MAP: Hessian, GGN or Fisher curvature; full, diag, low-rank or K-FAC")
