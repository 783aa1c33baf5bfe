"""One Laplace fit at a given mode: curvature x structure -> approximation and its checks.

:func:`fit_approximation` is pure (call it inside jit); it never raises on numerical
trouble, it returns ``checks`` that the config turns into a :class:`Status`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import ConfigError
from ..linalg import LowRankPlusDiag, lanczos
from .curvature import curvature_ops
from .kfac import kfac_factors
from .structures import DiagGaussian, FullGaussian, KronBlock, KronGaussian, LowRankGaussian

__all__ = ["fit_approximation", "site_index", "site_offsets"]


def site_offsets(ld) -> dict[str, tuple[int, int, tuple]]:
    """{site: (start, stop, unconstrained shape)} in the flat vector."""
    out, i = {}, 0
    for name, shape in ld.layout:
        n = math.prod(shape)
        out[name] = (i, i + n, tuple(shape))
        i += n
    return out


def site_index(ld, sites) -> np.ndarray:
    """Flat indices (d,) of ``sites`` (all coordinates when None); ConfigError for unknown names."""
    if sites is None:
        return np.arange(ld.dim)
    offs = site_offsets(ld)
    unknown = [s for s in sites if s not in offs]
    if unknown:
        raise ConfigError(
            f"Laplace(sites=...): {unknown} are not latent sites of the model; latent sites are {sorted(offs)}"
        )
    return np.concatenate([np.arange(offs[s][0], offs[s][1]) for s in sorted(set(sites), key=lambda s: offs[s][0])])


def _checks(finite, pd, cond, min_eig):
    return {"finite": jnp.asarray(finite), "pd": jnp.asarray(pd), "cond": jnp.asarray(cond, float),
            "min_eig": jnp.asarray(min_eig, float)}


def fit_approximation(cfg, ld, mean, rng_key, curvature: str, structure: str, jitter: float = 0.0):
    """The approximation of ``structure`` built from ``curvature`` at the flat mode ``mean`` (D,).

    Returns ``(approx, checks, extra)``: checks {finite, pd, cond, min_eig} (scalars);
    extra: {"mc": (n_observed,) bool, sorted observed sites whose GGN outer matrix is a
    Monte-Carlo Fisher; with kron also "kron": (n_latent,) bool over ``ld.layout``, the
    K-FAC layers, and "kron_isotropic": whether their prior precision is isotropic}.
    """
    index_np = site_index(ld, cfg.sites)
    index = jnp.asarray(index_np)
    d = index_np.shape[0]
    k_curv, k_lz = jax.random.split(rng_key)
    ops = curvature_ops(ld, mean, index, curvature, k_curv, num_fisher_samples=cfg.num_fisher_samples,
                        batch_size=cfg.batch_size)
    # arrays only (a program's output): flags over sorted observed sites / over ld.layout
    extra = {"mc": jnp.asarray([n in ops.mc_sites for n in sorted(ld.split.observed)], bool)}
    tiny = jnp.finfo(mean.dtype).tiny

    if structure == "full":
        p = ops.dense() + jitter * jnp.eye(d, dtype=mean.dtype)
        finite = jnp.all(jnp.isfinite(p))
        p_safe = jnp.where(finite, p, jnp.eye(d, dtype=p.dtype))
        chol = jnp.linalg.cholesky(p_safe)
        ev = jnp.linalg.eigvalsh(p_safe)
        pd = finite & jnp.all(jnp.isfinite(chol)) & (ev[0] > 0)
        approx = FullGaussian(mean, index, p, jnp.where(finite, chol, jnp.nan))
        return approx, _checks(finite, pd, ev[-1] / jnp.maximum(ev[0], tiny), ev[0]), extra

    if structure == "diag":
        a = ops.diag() + jitter
        finite = jnp.all(jnp.isfinite(a))
        pd = finite & jnp.all(a > 0)
        approx = DiagGaussian(mean, index, a)
        return approx, _checks(finite, pd, jnp.max(a) / jnp.maximum(jnp.min(a), tiny), jnp.min(a)), extra

    if structure == "lowrank":
        rank = min(cfg.rank, d)
        v0 = jax.random.normal(k_lz, (d,), mean.dtype)
        lz = lanczos(ops.lik_matvec, v0, rank, num_iterations=min(d, max(2 * rank + 20, rank)), rng_key=k_lz)
        theta = lz.eigenvalues
        d0 = ops.prior_diag() + jitter
        tol = d * jnp.finfo(mean.dtype).eps * jnp.maximum(jnp.max(jnp.abs(theta)), 1.0)
        finite = jnp.all(jnp.isfinite(theta)) & jnp.all(jnp.isfinite(d0)) & jnp.all(jnp.isfinite(lz.eigenvectors))
        pd = finite & jnp.all(theta >= -tol) & jnp.all(d0 > 0)
        op = LowRankPlusDiag(lz.eigenvectors.T, jnp.clip(theta, 0.0), d0)
        cond = (jnp.max(theta) + jnp.max(d0)) / jnp.maximum(jnp.min(d0), tiny)
        return LowRankGaussian(mean, index, op), _checks(finite, pd, cond, jnp.minimum(jnp.min(theta), jnp.min(d0))), extra

    if structure == "kron":
        facs = kfac_factors(ld, ld.unravel(mean), ops.factors)
        offs = site_offsets(ld)
        pos_of = {int(g): i for i, g in enumerate(index_np)}
        p0 = ops.prior_diag()
        blocks, used, iso = [], [], []
        for site, (a, b, n) in facs.items():
            start, stop, shape = offs[site]
            if start not in pos_of:  # a layer outside ``sites``: held at the mode
                continue
            n_out = b.shape[0]
            if shape not in ((a.shape[0], n_out), (n_out,)):
                raise ConfigError(
                    f"structure='kron': site {site!r} has unconstrained shape {shape}, but pp.laplace.dense uses it "
                    f"as a ({a.shape[0]}, {n_out}) weight; give the site real support and that shape"
                )
            loc = np.array([pos_of[g] for g in range(start, stop)])
            blk = p0[loc]
            delta = jnp.mean(blk) + jitter
            iso.append(jnp.max(jnp.abs(blk - jnp.mean(blk))) <= 1e-6 * jnp.abs(jnp.mean(blk)))
            la, qa = jnp.linalg.eigh(a / n)
            lb, qb = jnp.linalg.eigh(b)
            blocks.append(KronBlock(jnp.asarray(index_np[loc]), qa, jnp.clip(la, 0.0), qb, jnp.clip(lb, 0.0), delta))
            used.extend(loc.tolist())
        rest_loc = np.setdiff1d(np.arange(d), np.asarray(used, dtype=int))
        rest = ops.lik_diag_at(jnp.asarray(rest_loc, dtype=int)) + p0[rest_loc] + jitter
        approx = KronGaussian(mean, index, tuple(blocks), jnp.asarray(index_np[rest_loc], dtype=int), rest)
        eigs = [b.eig().reshape(-1) for b in blocks] + [rest]
        allev = jnp.concatenate(eigs)
        finite = jnp.all(jnp.isfinite(allev))
        pd = finite & jnp.all(allev > 0)
        extra["kron_isotropic"] = jnp.all(jnp.stack(iso)) if iso else jnp.asarray(True)
        extra["kron"] = jnp.asarray([n in facs and offs[n][0] in pos_of for n, _ in ld.layout], bool)
        return approx, _checks(finite, pd, jnp.max(allev) / jnp.maximum(jnp.min(allev), tiny), jnp.min(allev)), extra

    raise ConfigError(f"unknown structure {structure!r}")
