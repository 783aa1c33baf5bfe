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

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints

from .._errors import Status
from ..density.init import draw_initial_positions
from ..registry import MethodConfig, register_method
from ..results.raw import KHAT_DRAWS, RawPosterior
from ..runtime.programs import approximation_weights
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
    """Laplace approximation at the MAP with the exact dense Hessian.

    Parameters
    ----------
    num_samples : int, default 1000
        Draws from N(z*, P⁻¹), returned as one chain.
    num_starts : int, default 4
        Starting points of the MAP search, drawn uniformly from
        (-init_radius, init_radius) on every coordinate of the unconstrained space (as
        Stan's ``init_r``; a draw whose log density or gradient is not finite is
        redrawn, up to 100 rounds, as for NUTS). The searches run vmapped in one
        compiled program. The best end point is kept: first the starts that reached
        a stationary point (finite density and gradient, BFGS within ``max_steps``,
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
        BFGS iteration limit per start; a search that reaches it is not converged.
    rtol, atol : float or None
        BFGS termination tolerances; None means 1e-8 in float64 and 1e-5 in float32.
    mode_tol : float, default 0.01
        A start reached a stationary point when its (saddle-free) Newton decrement
        sqrt(gᵀ|H|⁻¹g), the distance to the stationary point in posterior sd, is
        below this (see ``laplace.mode``).
    throw : bool, default True
        Raise ``NumericalError`` on a failure (see Status below); with False the
        status is only recorded in ``idata.attrs``.

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
       offending eigenvector (``LogDensity.param_names`` labels).
    4. ``NON_FINITE``: draws of the Gaussian whose posterior density is not finite.

    ``idata.attrs`` gets ``num_starts``, ``map_starts_finite`` (starts with a finite
    density and gradient), ``map_starts_converged`` (starts that reached a
    stationary point), ``map_starts_at_mode`` (starts within max(0.1, 2·mode_tol)
    posterior sd of the chosen point, itself included), ``map_start_index``,
    ``map_logdensity`` (f at the chosen point), ``map_max_abs_grad`` (max |∇f| there),
    ``newton_decrement``, ``map_steps`` (its BFGS iterations) and ``log_evidence``.

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

    def __post_init__(self):
        self._positive_int("num_samples", "num_starts", "max_steps")
        self._require(self.init_radius >= 0, "init_radius", "must be >= 0")
        self._require(self.mode_tol > 0, "mode_tol", "must be > 0")

    @property
    def num_parallel(self) -> int:
        return self.num_starts

    def _program(self, ld, ctx, key):
        """The whole numerical work, pure in (LogDensity, key): starts, searches, choice, draws.
        (No progress bar: the searches end at different steps.)"""
        x64 = jnp.result_type(float) == jnp.float64
        rtol = self.rtol if self.rtol is not None else (1e-8 if x64 else 1e-5)
        atol = self.atol if self.atol is not None else (1e-8 if x64 else 1e-5)
        k_init, k_draw = jax.random.split(key)
        x0, ok = draw_initial_positions(
            ld.flat_logdensity_fn, k_init, self.num_starts, ld.dim, self.init_radius, _MAX_TRIES
        )
        x0 = ctx.shard_chains(x0)  # restarts over the mesh's chain axis
        ms = find_map_multistart(
            ld.flat_logdensity_fn, x0, ok, mode_tol=self.mode_tol, same_mode_tol=max(0.1, 2 * self.mode_tol),
            max_steps=self.max_steps, rtol=rtol, atol=atol,
        )
        res = ms.best
        approx = DenseGaussian(res.position, res.precision, res.cholesky)
        return ms, x0, ok, approx, approx.sample_flat(k_draw, max(self.num_samples, KHAT_DRAWS))

    @staticmethod
    def _at_point(ld, ctx, point):
        """Per-site log-density terms and gradients at ``point`` (D,): names the culprit
        of a non-finite result (a separate program, run only then)."""
        pos = ld.unravel(point)
        return ld.site_terms(pos), jax.grad(ld.logdensity_fn)(pos)

    def run(self, rng_key, rt) -> RawPosterior:
        ld = rt.log_density
        ld.require_full_data("Laplace")
        # the search and the draws in one program; the draws' log densities in the program
        # shared with VI (compiled once per model); small programs compile faster
        ms, x0, ok, approx, draws = rt.call("laplace", self._program, rng_key)
        lp, log_weight = approximation_weights(rt, approx, draws)
        at_point = None
        if int(np.asarray(ms.tier)[int(ms.index)]) == 0:
            # where to name non-finite sites: the end point, or its start if the end is not finite
            end = np.asarray(ms.best.position)
            point = end if np.all(np.isfinite(end)) else np.asarray(x0)[int(ms.index)]
            at_point = (point, *rt.call("laplace_at_point", self._at_point, point))
        res = ms.best
        khat_log_weights = log_weight
        n = self.num_samples
        draws, lp, log_weight = draws[:n], lp[:n], log_weight[:n]
        status, messages = _diagnose(self, ms, ok, at_point, ld, lp)
        grad = np.asarray(res.grad)
        info = {
            "messages": messages,
            "num_starts": self.num_starts,
            "map_starts_finite": int(np.sum(ok)),
            "map_starts_converged": int(np.sum(np.asarray(ms.tier) >= 2)),
            "map_starts_at_mode": int(np.sum(ms.at_mode)),
            "map_start_index": int(ms.index),
            "map_steps": int(res.num_steps),
            "map_logdensity": float(res.logdensity),
            "map_max_abs_grad": float(np.max(np.abs(grad))) if grad.size else 0.0,
            "newton_decrement": float(res.decrement),
            "log_evidence": float(laplace_log_evidence(res.logdensity, res.cholesky)),
            "khat_log_weights": khat_log_weights,
            # arrays: kept in the RawPosterior only (attrs take scalars)
            "map_starts": np.asarray(x0),
            "map_start_logdensities": np.asarray(ms.starts.logdensity),
            "map_start_tiers": np.asarray(ms.tier),
        }
        position = ld.unravel(draws[None])
        stats = {"lp": lp[None], "log_weight": log_weight[None]}
        return RawPosterior(position, stats, approx, status, info)


# ---------------------------------------------------------------------------------------
# diagnosis (host side, numpy)


def _nonfinite_sites(tree) -> list[str]:
    return [k for k, v in tree.items() if not np.all(np.isfinite(np.asarray(v)))]


def _quote(names) -> str:
    return ", ".join(repr(n) for n in names)


def _is_real(support) -> bool:
    while isinstance(support, constraints._IndependentConstraint):
        support = support.base_constraint
    return isinstance(support, (constraints._Real, constraints._RealVector, constraints._RealMatrix))


def _flat_sites(ld) -> list[str]:
    """The site of each entry of the flat vector."""
    out = []
    for name, shape in ld.layout:
        out += [name] * int(np.prod(shape, dtype=int))
    return out


def _towards(support, z: float) -> str:
    """Where a bounded site goes as its unconstrained coordinate z -> ±∞, in words."""
    lo, hi = getattr(support, "lower_bound", None), getattr(support, "upper_bound", None)
    if z < 0 and lo is not None and np.ndim(lo) == 0:
        return f"→ {float(lo):g}"
    if z > 0 and hi is not None and np.ndim(hi) == 0:
        return f"→ {float(hi):g}"
    if z > 0 and lo is not None and hi is None:
        return "→ ∞"
    return "→ the boundary of its support"


def _edge(ld, x) -> list[tuple[int, str]]:
    """Entries of bounded sites at |z| > _EDGE_Z: (flat index, description) pairs."""
    names, sites = ld.param_names(), _flat_sites(ld)
    supports = {name: ld.site(name).support for name, _ in ld.layout}
    out = []
    for i, (name, site) in enumerate(zip(names, sites, strict=True)):
        support = supports[site]
        if support is None or _is_real(support):
            continue
        z = float(x[i])
        if abs(z) > _EDGE_Z:
            out.append((i, f"{name!r} at z = {z:.3g}, {site} {_towards(support, z)}"))
    return out


def _edge_advice(edges) -> str:
    where = "; ".join(d for _, d in edges[:3])
    return (
        f"the search ran to the edge of the unconstrained space ({where}). The density is "
        "unbounded there (e.g. a funnel: a hierarchical scale → 0) or its supremum lies on the "
        "boundary of the support (e.g. jacobian=False with a scale whose mode is 0), so there is "
        "no interior mode and no Laplace approximation. Non-centre the hierarchy, use "
        "jacobian=True or a prior that keeps the site off the boundary, or use NUTS or VI"
    )


def _along(names, v, k: int = 3) -> str:
    """The parameters that dominate the unit vector v."""
    a = np.abs(v)
    order = [j for j in np.argsort(-a)[:k] if a[j] >= 0.25 * a.max()]
    return _quote(names[j] for j in order)


def _diagnose(cfg: Laplace, ms, ok, at_point, ld, lp) -> tuple[Status, list[str]]:
    """Status and messages at the chosen point; the order is documented in :class:`Laplace`."""
    res = ms.best
    tier = int(np.asarray(ms.tier)[int(ms.index)])
    names = ld.param_names()
    x, g = np.asarray(res.position), np.asarray(res.grad)
    lp_best, dec = float(res.logdensity), float(res.decrement)
    nstarts = cfg.num_starts

    # 1. non-finite density or gradient
    if tier == 0:
        point, terms, grads = at_point
        bad_terms, bad_grads = _nonfinite_sites(terms), _nonfinite_sites(grads)
        detail = []
        if bad_terms:
            values = ", ".join(f"{n!r} = {float(terms[n]):.3g}" for n in bad_terms)
            detail.append(f"the log-density term of {values} is not finite")
        if bad_grads:
            detail.append(f"the gradient with respect to {_quote(bad_grads)} is not finite")
        if not detail:
            bad = [n for n, v in zip(names, np.asarray(point), strict=True) if not np.isfinite(v)]
            detail.append(f"the position itself is not finite ({_quote(bad[:5])})")
        if not bool(np.any(ok)):
            where = (
                f"no starting point with a finite log density and gradient was found in {_MAX_TRIES} "
                f"rounds of uniform(-{cfg.init_radius}, {cfg.init_radius}) draws on the unconstrained "
                "space; at the last draw"
            )
        else:
            where = f"every one of the {nstarts} MAP searches ended at a non-finite log density or gradient; there"
        return Status.NON_FINITE, [
            f"{where} {' and '.join(detail)}. Check that site for values outside its support, "
            "overflowing or NaN-producing operations (e.g. log of 0, the gradient of "
            "jnp.linalg.norm or jnp.sqrt at 0) and the data"
        ]

    edges = _edge(ld, x)
    lp_ok = bool(np.all(np.isfinite(np.asarray(lp))))
    if tier == 2:
        evals, evecs = np.linalg.eigh(np.asarray(res.precision))
        scale = max(float(np.max(np.abs(evals))), np.finfo(evals.dtype).tiny)
        zero = np.sqrt(np.finfo(evals.dtype).eps) * scale

    # 2. no stationary point: the search stopped early, or ran off to the edge (where the
    # curvature cannot hold a Gaussian: not positive definite, or its draws overflow)
    if tier == 1 or (edges and (tier == 2 or not lp_ok)):
        if tier == 1:
            j = int(np.argmax(np.abs(g)))
            msg = (
                f"no start reached a stationary point: the best of {nstarts} (log density "
                f"{lp_best:.6g}) stopped {dec:.3g} posterior sd (Newton decrement, > mode_tol = "
                f"{cfg.mode_tol:g}) from one, largest |gradient| {abs(g[j]):.3g} on {names[j]!r}"
            )
            if bool(res.max_steps_reached):
                msg += f", when BFGS reached max_steps = {cfg.max_steps}"
        else:
            why = "not positive definite" if tier == 2 else "too weak to hold a Gaussian (its draws overflow)"
            msg = (
                f"no interior mode was found: at the best point (log density {lp_best:.6g}, Newton "
                f"decrement {dec:.2g}) the gradient is ~0 but the curvature is {why}"
            )
        if edges:
            msg += "; " + _edge_advice(edges)
        elif bool(res.max_steps_reached):
            msg += "; increase max_steps, or check whether the density is unbounded"
        else:
            msg += (
                "; check whether the density is unbounded (e.g. a funnel whose mode is at a "
                "boundary), or loosen mode_tol if the target is noisy"
            )
        return Status.MAP_NOT_CONVERGED, [msg]

    # 3. a stationary point whose curvature is not positive definite
    if tier == 2:
        head = (
            f"the negative Hessian at the stationary point found (log density {lp_best:.6g}, "
            f"gradient ~0: Newton decrement {dec:.2g}) is not positive definite"
        )
        if evals[0] < -zero:
            msg = (
                f"{head}: it is a saddle (or a minimum), -∇²f has {int(np.sum(evals < -zero))} negative eigenvalue(s) "
                f"(smallest {evals[0]:.3g}, along {_along(names, evecs[:, 0])}), so the density rises "
                f"away from it. None of the {nstarts} starts reached a mode; try more starts "
                "(num_starts), check the model for multimodality, or use NUTS or VI"
            )
        else:
            k = int(np.argmin(np.abs(evals)))
            msg = (
                f"{head}: the density is flat along {_along(names, evecs[:, k])} (eigenvalue "
                f"{evals[k]:.3g}, {abs(evals[k]) / scale:.2g} of the largest): neither the prior nor "
                "the likelihood informs it (e.g. an improper prior on a site that nothing depends on) "
                "or the model is not identified in that direction. Give it a proper prior, or remove "
                "the redundant parameter"
            )
        return Status.INDEFINITE_CURVATURE, [msg]

    # 4. draws of the Gaussian overflow
    if not lp_ok:
        bad = int(np.sum(~np.isfinite(np.asarray(lp))))
        return Status.NON_FINITE, [
            f"{bad} of {np.size(lp)} draws of the Gaussian have a non-finite posterior density "
            "(they overflow the transforms to the constrained space); the mode is at an "
            "extreme of the unconstrained space, so the approximation is meaningless there"
        ]
    return Status.SUCCESS, []


register_method("laplace", Laplace, "Laplace approximation at the MAP with the exact dense Hessian")
