"""Prior calibration by the Laplace evidence (type-II maximum likelihood, MacKay 1992).

:func:`optimize_prior` maximises the Laplace log marginal likelihood

    log Z(σ) ≈ f_σ(z*_σ) + D/2 log 2π − ½ log det P_σ(z*_σ)

over the scales σ of the Normal priors of chosen sites (one scale per site, or one
shared by all). The site's prior Normal(μ, σ₀) is read from the model's log density
itself (its Hessian in the site is −1/σ₀², its gradient gives μ), so the model needs
no change; the term is replaced by Normal(μ, σ). Iteration (MacKay's evidence
framework): the MAP z* for the current σ, then σ maximising log Z with z* and the
likelihood curvature held (BFGS on log σ), until σ stops moving. At the fixed point the
gradient of log Z(σ) is zero up to the dependence of the curvature on z* (none for a
Gaussian likelihood linear in z, where the result is the exact type-II ML estimate).

References: MacKay (1992), "Bayesian interpolation", Neural Comput. 4:415-447;
Immer et al. (2021), "Scalable marginal likelihood estimation for model selection in
deep learning", ICML.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from .._errors import ConfigError, NumericalError, Status
from ..density.log_density import LogDensity
from .curvature import dense_hessian
from .fit import site_offsets
from .mode import find_map

__all__ = ["PriorFit", "optimize_prior"]


class PriorFit(NamedTuple):
    """scales : {site: float} the optimised prior sds; log_evidence : Laplace log Z at them;
    num_iterations : outer iterations; converged : whether σ moved less than ``tol``;
    mode : (D,) flat MAP under the optimised prior."""

    scales: dict
    log_evidence: float
    num_iterations: int
    converged: bool
    mode: np.ndarray


def optimize_prior(model, *args, sites, tie: bool = False, init_scale=None, max_iter: int = 100,
                   tol: float = 1e-8, jacobian: bool = True, init_position=None, **kwargs) -> PriorFit:
    """Type-II ML of the Normal prior scales of ``sites`` by the Laplace evidence (dense Hessian).

    Parameters
    ----------
    model, *args, **kwargs
        The NumPyro model and its arguments, as for :func:`ppl_posteriors.infer`.
    sites : sequence of str
        Latent sites with an elementwise Normal(μ, σ₀) prior (real support).
    tie : bool
        One scale shared by every site in ``sites`` (else one per site).
    init_scale : float, optional
        Starting σ (default: each site's own σ₀, their geometric mean when tied).
    max_iter, tol : int, float
        Outer iterations; stop when max |Δ log σ| < tol.
    init_position : array (D,), optional
        Start of the first MAP search on the unconstrained space (default 0, the prior
        centre). A neural network needs a random start: all-zero weights are a saddle.

    Returns
    -------
    PriorFit

    Raises
    ------
    ConfigError
        An unknown site, or one whose prior is not an elementwise Normal, or an
        ``init_position`` of the wrong shape.
    NumericalError
        The evidence is not finite: the mode search ended where the precision is not
        positive definite (a saddle, e.g. all-zero network weights; pass ``init_position``).
    """
    from ..api import log_density

    ld: LogDensity = log_density(model, *args, jacobian=jacobian, **kwargs)
    sites = (sites,) if isinstance(sites, str) else tuple(sites)
    offs = site_offsets(ld)
    for s in sites:
        if s not in offs:
            raise ConfigError(f"optimize_prior: {s!r} is not a latent site; latent sites are {sorted(offs)}")
    x0 = jnp.zeros(ld.dim)
    group = np.zeros(ld.dim, int) - 1  # which scale each coordinate uses (-1: none)
    mu, s0 = np.zeros(ld.dim), np.ones(ld.dim)
    for j, s in enumerate(sites):
        a, b, _ = offs[s]

        def term(x, s=s):
            return ld.site_terms(ld.unravel(x))[s]

        h = np.asarray(jax.hessian(term)(x0))[a:b, a:b]
        g = np.asarray(jax.grad(term)(x0))[a:b]
        off = h - np.diag(np.diag(h))
        if np.any(np.diag(h) >= 0) or np.max(np.abs(off), initial=0.0) > 1e-10 * np.max(np.abs(h)):
            raise ConfigError(f"optimize_prior: the prior of {s!r} is not an elementwise Normal (its log density is not a diagonal quadratic)")
        s0[a:b] = np.sqrt(-1.0 / np.diag(h))
        mu[a:b] = x0[a:b] + s0[a:b] ** 2 * g
        t0 = float(term(x0))
        expect = float(np.sum(-0.5 * ((np.asarray(x0[a:b]) - mu[a:b]) / s0[a:b]) ** 2 - np.log(s0[a:b]) - 0.5 * math.log(2 * math.pi)))
        if abs(t0 - expect) > 1e-6 * (1 + abs(t0)):
            raise ConfigError(f"optimize_prior: the prior of {s!r} is not a Normal(μ, σ) density")
        group[a:b] = 0 if tie else j
    k = 1 if tie else len(sites)
    sel = jnp.asarray(group >= 0)
    gidx = jnp.asarray(np.maximum(group, 0))
    mu_j, s0_j = jnp.asarray(mu), jnp.asarray(s0)
    if init_scale is None:
        init = np.array([np.exp(np.mean(np.log(s0[group == i]))) for i in range(k)])
    else:
        init = np.full(k, float(init_scale))

    def prior_terms(x, log_sigma):
        sig = jnp.exp(log_sigma)[gidx]
        new = -0.5 * ((x - mu_j) / sig) ** 2 - jnp.log(sig)
        old = -0.5 * ((x - mu_j) / s0_j) ** 2 - jnp.log(s0_j)
        return jnp.sum(jnp.where(sel, new - old, 0.0))

    def f(x, log_sigma):
        return ld.flat_logdensity_fn(x) + prior_terms(x, log_sigma)

    @jax.jit
    def outer(x, log_sigma):
        res = find_map(lambda z: f(z, log_sigma), x)
        xs = res.position
        p_rest = dense_hessian(lambda z: f(z, log_sigma), xs) - jnp.diag(jnp.where(sel, jnp.exp(-2 * log_sigma[gidx]), 0.0))

        def neg_evidence(ls, _):
            p = p_rest + jnp.diag(jnp.where(sel, jnp.exp(-2 * ls[gidx]), 0.0))
            chol = jnp.linalg.cholesky(p)
            return -(f(xs, ls) + 0.5 * ld.dim * math.log(2 * math.pi) - jnp.sum(jnp.log(jnp.diag(chol))))

        sol = optx.minimise(neg_evidence, optx.BFGS(rtol=1e-12, atol=1e-12), log_sigma, max_steps=500, throw=False)
        return xs, sol.value, -neg_evidence(sol.value, None)

    x = x0
    if init_position is not None:
        x = jnp.asarray(init_position, dtype=x0.dtype)
        if x.shape != x0.shape:
            raise ConfigError(f"optimize_prior: init_position has shape {x.shape}; the model has {ld.dim} "
                              "unconstrained parameters, so pass a ({ld.dim},) array")
    ls = jnp.log(jnp.asarray(init))
    converged, it, log_z = False, 0, float("nan")
    for it in range(1, max_iter + 1):  # noqa: B007 (it is read after the loop)
        x, ls_new, log_z = outer(x, ls)
        step = float(jnp.max(jnp.abs(ls_new - ls)))
        if not (np.isfinite(float(log_z)) and np.all(np.isfinite(np.asarray(ls_new)))):
            raise NumericalError(
                f"optimize_prior: the Laplace evidence is not finite at outer iteration {it}: the precision at "
                "the mode found is not positive definite (a saddle point or a non-converged mode search; "
                "all-zero weights of a neural network are a saddle). Pass init_position= (e.g. small random "
                "weights) or check the model", Status.INDEFINITE_CURVATURE)
        ls = ls_new
        if step < tol:
            converged = True
            break
    scales = np.exp(np.asarray(ls))
    out = {s: float(scales[0 if tie else j]) for j, s in enumerate(sites)}
    return PriorFit(out, float(log_z), it, converged, np.asarray(x))
