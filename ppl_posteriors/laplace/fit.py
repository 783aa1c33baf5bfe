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


# up to this dimension the checks of a dense precision take every eigenvalue (eigvalsh); above it
# eigvalsh costs several Cholesky factorisations (B1, d = 2410: 6 s of CPU against 0.25 s), so a
# positive definite precision gets Lanczos estimates of its extreme eigenvalues instead
_EIGH_MAX = 512
_LANCZOS_STEPS = 20


def _extreme_eigenvalues(p, chol, chol_ok, key):
    """(smallest, largest) eigenvalue of the symmetric p (d, d) with Cholesky factor ``chol``.

    d <= 512: exact (``eigvalsh``). Larger: when the Cholesky succeeded (p positive definite),
    λ_max(p) and 1/λ_max(p⁻¹) from 20 Lanczos steps on p and on p⁻¹ (two triangular solves
    per step): Ritz values bound the extremes from inside, so the condition number is a lower
    bound, tight when the extremes are separated. When it failed, ``eigvalsh`` (the exact
    smallest eigenvalue for the message), only then (``lax.cond``)."""
    d = p.shape[0]
    if d <= _EIGH_MAX:
        ev = jnp.linalg.eigvalsh(p)
        return ev[0], ev[-1]
    from jax.scipy.linalg import cho_solve

    m = min(d, _LANCZOS_STEPS)

    def estimate(_):
        k1, k2 = jax.random.split(key)
        top = lanczos(lambda v: p @ v, jax.random.normal(k1, (d,), p.dtype), 1, m, rng_key=k1).eigenvalues[0]
        inv = lanczos(lambda v: cho_solve((chol, True), v), jax.random.normal(k2, (d,), p.dtype), 1, m,
                      rng_key=k2).eigenvalues[0]
        return 1.0 / inv, top

    def exact(_):
        ev = jnp.linalg.eigvalsh(p)
        return ev[0], ev[-1]

    return jax.lax.cond(chol_ok, estimate, exact, None)


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
    ops = curvature_ops(ld, mean, index_np, curvature, k_curv, num_fisher_samples=cfg.num_fisher_samples,
                        batch_size=cfg.batch_size)
    # arrays only (a program's output): flags over sorted observed sites / over ld.layout
    extra = {"mc": jnp.asarray([n in ops.mc_sites for n in sorted(ld.split.observed)], bool)}
    tiny = jnp.finfo(mean.dtype).tiny

    if structure == "full":
        p = ops.dense() + jitter * jnp.eye(d, dtype=mean.dtype)
        finite = jnp.all(jnp.isfinite(p))
        p_safe = jnp.where(finite, p, jnp.eye(d, dtype=p.dtype))
        chol = jnp.linalg.cholesky(p_safe)
        chol_ok = jnp.all(jnp.isfinite(chol))
        lo, hi = _extreme_eigenvalues(p_safe, chol, chol_ok, k_lz)
        pd = finite & chol_ok & (lo > 0)
        approx = FullGaussian(mean, index, p, jnp.where(finite, chol, jnp.nan))
        return approx, _checks(finite, pd, hi / jnp.maximum(lo, tiny), lo), extra

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


# -- pp.Laplace with pp.Batches: stochastic MAP, then curvature streamed over one epoch ------

STREAM_CURVATURES = ("ggn", "fisher")
STREAM_STRUCTURES = ("full", "diag")


def check_batches(cfg, rt) -> None:
    """ConfigError/ModelError, naming the fix, for a Laplace config that cannot stream."""
    from .._errors import ModelError
    from ..model.sites import SiteKind
    from ..registry import _REGISTRY

    takers = ", ".join(sorted(n for n, s in _REGISTRY.items() if s.config_cls.supports_batches))
    if cfg.curvature not in STREAM_CURVATURES:
        raise ConfigError(
            f"Laplace(curvature={cfg.curvature!r}) needs the full data and cannot take batches=: use "
            "curvature='ggn' or 'fisher' (sums of per-datum curvatures), pass the full data without "
            f"batches=, or use another method that takes batches: {takers}"
        )
    if cfg.structure not in STREAM_STRUCTURES:
        raise ConfigError(
            f"Laplace(structure={cfg.structure!r}) needs the full data (many passes over it) and cannot take "
            "batches=: use structure='full' or 'diag', pass the full data without batches=, or use another "
            f"method that takes batches: {takers}"
        )
    for name in ("fallback", "predictive"):
        if getattr(cfg, name):
            raise ConfigError(f"Laplace({name}=...) is not available with batches=; leave it empty "
                              "or pass the full data without batches=")
    local = rt.batches.plate_sites
    factors = [s.name for s in rt.log_density.sites if s.kind is SiteKind.FACTOR and s.name in local]
    if factors:
        raise ModelError(
            f"factor site {factors[0]!r} is inside the batch plate {rt.batches.plate!r}: streaming Laplace "
            "takes the likelihood from observed sites only; write it as an observed site, or pass the full data"
        )


def _lik_curvature(ld, mean, index, curvature, structure, key, num_fisher_samples):
    """One batch's (unscaled) log-likelihood, its gradient (D,) and its curvature on ``index``
    ((d, d) or (d,)): the per-datum sum of :func:`curvature_ops`' likelihood part."""
    d = index.shape[0]
    ops = curvature_ops(ld, mean, index, curvature, key, num_fisher_samples=num_fisher_samples, batch_size=None)
    if structure == "full":
        c = jax.vmap(ops.lik_matvec)(jnp.eye(d, dtype=mean.dtype))
        c = 0.5 * (c + c.T)
    else:
        c = ops.lik_diag_at(jnp.arange(d))
    value, grad = jax.value_and_grad(lambda x: ld.split.log_likelihood(ld.unravel(x)))(mean)
    return {"loglik": value, "grad": grad, "curv": c}


def _prior_curvature(ld, mean, index, structure):
    """The log prior (log-Jacobian included), its gradient (D,) and -∇² on ``index``, once."""
    def logprior(x):
        return ld.split.log_prior(ld.unravel(x))

    d = index.shape[0]

    def sub(x):
        return logprior(mean.at[index].set(x))

    x0 = mean[index]
    hvp = lambda v: -jax.jvp(jax.grad(sub), (x0,), (v,))[1]  # noqa: E731
    p0 = jax.vmap(hvp)(jnp.eye(d, dtype=mean.dtype))
    p0 = 0.5 * (p0 + p0.T)
    value, grad = jax.value_and_grad(logprior)(mean)
    return {"logprior": value, "grad": grad, "prec": p0 if structure == "full" else jnp.diagonal(p0)}


def fit_batches_approximation(cfg, rt, rng_key):
    """Streaming Laplace over ``rt.batches``: returns ``(approx, checks, summary)``.

    1. MAP by ``cfg.optimizer`` (default adam) over the batches, each step on the
       minibatch objective log p(θ) + (N/B) Σ_{n∈B} log p(y_n | θ) (``Runtime.stream``),
       the returned point the average of the last ``average_fraction`` of the iterates;
    2. one epoch of unscaled per-batch curvatures summed (``Runtime.epoch_sum``):
       C = Σ_n C_n(θ*), the gradient and the log-likelihood at θ*;
    3. precision P = P₀ + C / T with P₀ = -∇² log p(θ*) (prior and log-Jacobian) added once.

    ``summary``: logdensity, grad (D,), num_steps_run, trace (the minibatch objective).
    """
    import optax

    from ..vi.fit import fit_batches

    ld0 = rt.log_density
    index_np = site_index(ld0, cfg.sites)
    index = jnp.asarray(index_np)
    optimizer = cfg.optimizer if cfg.optimizer is not None else optax.adam(1e-2)
    k_fit, k_curv = jax.random.split(rng_key)

    def make_loss(ld):
        def loss(x, key):
            v = ld.flat_logdensity_fn(x)
            return -v, v

        return loss

    x0 = ld0.ravel(ld0.init_position)
    res = fit_batches(rt, make_loss, x0, optimizer, cfg.num_steps, k_fit,
                      int(cfg.average_fraction * cfg.num_steps))
    mean = res.params
    struct, curv, nfs = cfg.structure, cfg.curvature, cfg.num_fisher_samples
    lik = rt.epoch_sum("laplace_stream_curvature",
                       lambda ld, ctx, m, k: _lik_curvature(ld, m, index, curv, struct, k, nfs),
                       mean, k_curv, config=cfg)
    pri = rt.call("laplace_stream_prior", lambda ld, ctx, m: _prior_curvature(ld, m, index, struct), mean)
    prec = pri["prec"] + lik["curv"] / cfg.temperature
    p = np.asarray(prec)
    finite = bool(np.all(np.isfinite(p)))
    tiny = np.finfo(p.dtype).tiny
    if struct == "full":
        ev = np.linalg.eigvalsh(p) if finite else np.array([np.nan])
        pd = finite and ev[0] > 0
        chol = np.linalg.cholesky(p) if pd else np.full_like(p, np.nan)
        approx = FullGaussian(mean, index, prec, jnp.asarray(chol))
        min_eig, cond = ev[0], ev[-1] / max(ev[0], tiny)
    else:
        pd = finite and bool(np.all(p > 0))
        approx = DiagGaussian(mean, index, prec)
        min_eig, cond = np.min(p), np.max(p) / max(np.min(p), tiny)
    checks = {"finite": finite, "pd": bool(pd), "cond": float(cond), "min_eig": float(min_eig)}
    summary = {"logdensity": float(lik["loglik"] + pri["logprior"]), "grad": np.asarray(lik["grad"] + pri["grad"]),
               "num_steps_run": int(res.num_steps_run), "trace": np.asarray(res.trace)}
    return approx, checks, summary


def run_batches(cfg, rt, rng_key):
    """``Laplace.run`` with ``pp.Batches``: :func:`fit_batches_approximation`, draws, the
    PSIS weights over one epoch, the Status and the info (see ``Laplace``)."""
    from .._errors import Status
    from ..results.raw import RawPosterior
    from ..results.resample import importance_resample, pool_size
    from ..runtime.programs import approximation_weights

    check_batches(cfg, rt)
    ld = rt.log_density
    k_fit, k_draw = jax.random.split(rng_key)
    approx, checks, summ = fit_batches_approximation(cfg, rt, k_fit)
    n = cfg.num_samples
    draws = rt.call("laplace_stream_draws", lambda ld_, ctx, a, k: a.sample_flat(k, pool_size(n, cfg.importance_resampling)),
                    approx, k_draw)
    lp, log_weight = approximation_weights(rt, approx, draws)
    index = np.asarray(approx.index)
    g = summ["grad"][index]
    messages = []
    dec = float("nan")  # Newton decrement sqrt(gᵀ P⁻¹ g) of the full-data density at the MAP
    if checks["pd"]:
        p = np.asarray(approx.precision if cfg.structure == "full" else approx.prec)
        dec = float(np.sqrt(max(float(g @ (np.linalg.solve(p, g) if cfg.structure == "full" else g / p)), 0.0)))
    if not checks["finite"]:
        status = Status.NON_FINITE
        messages.append(f"the streamed {cfg.curvature} x {cfg.structure} precision is not finite; lower the "
                        "learning rate of the stochastic MAP or check the data")
    elif not checks["pd"]:
        status = Status.INDEFINITE_CURVATURE
        messages.append(f"the streamed precision is not positive definite (smallest eigenvalue "
                        f"{checks['min_eig']:.3g}); use a proper prior on every site or structure='diag'")
    else:
        status = Status.SUCCESS
        if not np.isfinite(dec) or dec > cfg.mode_tol:
            status = Status.MAP_NOT_CONVERGED
            messages.append(f"the stochastic MAP is {dec:.3g} posterior sd from a stationary point of the full-data "
                            f"density (Newton decrement, mode_tol={cfg.mode_tol}); increase num_steps or "
                            "average_fraction, or lower the learning rate")
    if status is Status.SUCCESS and not np.all(np.isfinite(np.asarray(lp[:n]))):
        status = Status.NON_FINITE
        messages.append("draws of the Gaussian have a non-finite posterior density")
    d = index.shape[0]
    log_z = summ["logdensity"] + 0.5 * d * math.log(2 * math.pi) - 0.5 * float(approx.logdet())
    info = {
        "messages": messages,
        "curvature": cfg.curvature,
        "structure": cfg.structure,
        "laplace_sites": ",".join(cfg.sites) if cfg.sites else "",
        "rank": 0,
        "jacobian": int(cfg.jacobian),
        "fallback": "",
        "fallback_used": "",
        "condition_number": checks["cond"],
        "temperature": float(cfg.temperature),
        "map_optimizer": "adam(1e-2)" if cfg.optimizer is None else repr(cfg.optimizer),
        "map_steps": summ["num_steps_run"],
        "map_logdensity": summ["logdensity"],
        "map_max_abs_grad": float(np.max(np.abs(summ["grad"]))) if summ["grad"].size else 0.0,
        "newton_decrement": dec,
        "log_evidence": log_z,
        "khat_log_weights": log_weight,
        "map_objective_trace": summ["trace"],
    }
    info["importance_resampling"] = 0
    if cfg.importance_resampling and not status.is_failure:
        rs = importance_resample(draws, lp, log_weight, n, jax.random.fold_in(rng_key, 4), what="Laplace Gaussian", warn=False)
        draws, lp, log_weight = rs.draws, rs.lp, rs.log_weight
        info.update(rs.info)
        messages.extend(rs.messages)
    position = ld.unravel(draws[None, :n])
    stats = {"lp": lp[None, :n], "log_weight": log_weight[None, :n]}
    return RawPosterior(position, stats, approx, status, info)
