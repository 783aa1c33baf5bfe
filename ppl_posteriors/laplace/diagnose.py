"""Host-side diagnosis of a Laplace fit: the Status and its message (numpy only)."""

from __future__ import annotations

import numpy as np
from numpyro.distributions import constraints

from .._errors import Status

_MAX_TRIES = 100
_EDGE_Z = 12.0


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


def _matrix_free_indefinite(res, names, lp_best: float, dec: float, nstarts: int) -> str:
    """The message of a stationary point that the matrix-free checks did not find positive definite."""
    tmin, tmax = float(res.min_curvature), float(res.max_curvature)
    dtype = np.asarray(res.position).dtype
    scale = max(abs(tmin), abs(tmax), float(np.finfo(dtype).tiny))
    zero = float(np.sqrt(np.finfo(dtype).eps)) * scale
    where = _along(names, np.asarray(res.direction))
    point = (
        f"the negative Hessian at the stationary point found (log density {lp_best:.6g}, gradient ~0: "
        f"saddle-free Newton decrement {dec:.2g}, a Lanczos estimate)"
    )
    head = (f"{point} is not positive definite along a direction found by CG/Lanczos (matrix-free MAP "
            "search: no eigenvalues are computed)")
    if tmin < -zero:
        return (
            f"{head}: it is a saddle (or a minimum), the curvature is {tmin:.3g} along {where}, so the "
            f"density rises away from it. None of the {nstarts} starts reached a mode; try more starts "
            "(num_starts), check the model for multimodality, or use NUTS or VI"
        )
    if tmin <= zero or bool(res.negative_curvature):
        return (
            f"{head}: the density is flat along {where} (curvature {tmin:.3g}, {abs(tmin) / scale:.2g} of "
            "the largest found): neither the prior nor the likelihood informs it or the model is not "
            "identified in that direction. Give it a proper prior, or remove the redundant parameter"
        )
    return (
        f"{point} could not be shown positive definite: conjugate gradients did not reach their tolerance "
        f"in {int(res.cg_steps)} steps "
        f"(curvatures found from {tmin:.3g} to {tmax:.3g}), so positive definiteness is not established. "
        "The precision may be very ill-conditioned: use map_solver='dense' if D x D fits in memory, "
        "standardise the parameters, or use a stronger prior"
    )


def _diagnose(cfg, ms, ok, at_point, ld, lp, checks=None, what="") -> tuple[Status, list[str]]:
    """Status and messages at the chosen point; the order is documented in :class:`Laplace`.

    ``checks`` (finite, pd, min_eig) of a curvature other than the dense Hessian: then a
    stationary point whose Hessian is not positive definite is accepted (tier 2 counts as
    3) and the curvature's own checks decide (``what`` names it in the message)."""
    res = ms.best
    tier = int(np.asarray(ms.tier)[int(ms.index)])
    if checks is not None and tier == 2 and getattr(cfg, "curvature", "hessian") != "hessian":
        tier = 3
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
    # the matrix-free search (laplace.mode.find_map_matrix_free) has no dense precision: its
    # end-point checks give the extreme Ritz values of -∇²f and the smallest one's vector
    matrix_free = hasattr(res, "min_curvature")
    search = "L-BFGS" if matrix_free else "BFGS"
    if tier == 2 and not matrix_free:
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
                msg += f", when {search} reached max_steps = {cfg.max_steps}"
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
    if tier == 2 and matrix_free:
        return Status.INDEFINITE_CURVATURE, [_matrix_free_indefinite(res, names, lp_best, dec, nstarts)]
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

    # 3b. the chosen curvature x structure is not finite or not positive definite
    if checks is not None and not bool(checks["finite"]):
        return Status.NON_FINITE, [
            f"the {what} precision at the mode (log density {lp_best:.6g}) is not finite; check the "
            "model for overflow at the mode, or use float64 (jax.config.update('jax_enable_x64', True))"
        ]
    if checks is not None and not bool(checks["pd"]):
        return Status.INDEFINITE_CURVATURE, [
            f"the {what} precision at the mode (log density {lp_best:.6g}) is not positive definite "
            f"(smallest eigenvalue {float(checks['min_eig']):.3g}): a parameter that neither the prior nor "
            "the likelihood informs, or a Hessian that is indefinite away from an exact mode. Use a "
            "positive semi-definite curvature (curvature='ggn'), a proper prior on every site, or an "
            "explicit fallback=('ggn', 'diag+jitter')"
        ]

    # 4. draws of the Gaussian overflow
    if not lp_ok:
        bad = int(np.sum(~np.isfinite(np.asarray(lp))))
        return Status.NON_FINITE, [
            f"{bad} of {np.size(lp)} draws of the Gaussian have a non-finite posterior density "
            "(they overflow the transforms to the constrained space); the mode is at an "
            "extreme of the unconstrained space, so the approximation is meaningless there"
        ]
    return Status.SUCCESS, []


