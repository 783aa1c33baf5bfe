"""Curvature of the negative log density at a point, as operators.

A curvature is the precision's likelihood part C plus the prior part P₀, on a chosen
subset of the flat unconstrained coordinates (``index``, d of the D; the others are
held at the mode m, "subnetwork Laplace"):

* ``"hessian"``: C + P₀ = -∇² logdensity_fn, exactly (forward-over-reverse);
  C = -∇² log-likelihood, P₀ = -∇² log-prior (the log-Jacobian included when
  ``jacobian=True``);
* ``"ggn"``, ``"fisher"``, ``"mc_fisher"``: C = Σ_n J_nᵀ L_n L_nᵀ J_n with the outer
  factors of :mod:`ppl_posteriors.laplace.outer` and J = ∂z/∂θ of the observed
  distributions' parameters, plus the exact P₀.

:class:`CurvatureOps` gives each form a structure needs: ``lik_matvec`` (one JVP and
one VJP, or one HVP), ``dense()`` (d x d: J by ``jacfwd``/``jacrev``, whichever is
smaller, contracted with the outer factors; only the ``"full"`` structure calls it),
``diag()`` (d JVPs in chunks of ``batch_size``, never J whole), ``prior_diag()``.

References: Martens (2020), JMLR 21; Daxberger et al. (2021), "Laplace Redux", NeurIPS;
Dangel, Kunstner & Hennig (2020), "BackPACK", ICLR.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .outer import outer_factors, z_map

__all__ = ["CurvatureOps", "curvature_ops", "dense_hessian"]


def dense_hessian(flat_logdensity_fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """H = -∇² log p at ``x`` (D,), as a symmetric (D, D) array (units: 1 / position²)."""
    h = -jax.hessian(flat_logdensity_fn)(x)
    return 0.5 * (h + h.T)


def _chunked_diag(colfn, d: int, batch_size: int | None, dtype):
    """Σ over unit vectors e_i of colfn(e_i) -> scalar, for i < d, vmapped in chunks."""
    eye_i = jnp.arange(d)

    def one(i):
        return colfn(jax.nn.one_hot(i, d, dtype=dtype))

    if batch_size is None or batch_size >= d:
        return jax.vmap(one)(eye_i)
    return jax.lax.map(one, eye_i, batch_size=batch_size)


class CurvatureOps(NamedTuple):
    """Forms of one curvature on the d chosen coordinates (all functions of flat (d,) vectors).

    embed : (d,) -> (D,) the full position with the other coordinates at the mode.
    lik_matvec : v -> C v.  prior_matvec : v -> P₀ v.
    dense : () -> (d, d) C + P₀.  diag : () -> (d,) diag(C + P₀).  prior_diag : () -> (d,).
    lik_diag_at : (indices (k,)) -> (k,) diag(C) at those coordinates.
    factors : {site: L (M, C, R)} (empty for the Hessian); mc_sites : sites whose
    GGN outer matrix is a Monte-Carlo Fisher.
    """

    embed: Callable
    lik_matvec: Callable
    prior_matvec: Callable
    dense: Callable
    diag: Callable
    prior_diag: Callable
    lik_diag_at: Callable
    factors: dict
    mc_sites: list


def curvature_ops(ld, mean, index, curvature: str, rng_key, *, num_fisher_samples: int = 64,
                  batch_size: int | None = 256) -> CurvatureOps:
    """Build :class:`CurvatureOps` for ``curvature`` at the flat mode ``mean`` (D,) over the
    coordinates ``index`` (d,) (a static-shaped int array). Pure; call inside jit."""
    d = index.shape[0]
    x0 = mean[index]
    dtype = mean.dtype

    def embed(x):
        return mean.at[index].set(x)

    def logdens(x):
        return ld.flat_logdensity_fn(embed(x))

    def logprior(x):
        return ld.split.log_prior(ld.unravel(embed(x)))

    def loglik(x):
        return ld.split.log_likelihood(ld.unravel(embed(x)))

    def hvp(f, v):
        return jax.jvp(jax.grad(f), (x0,), (v,))[1]

    prior_matvec = lambda v: -hvp(logprior, v)  # noqa: E731

    def prior_diag():
        return _chunked_diag(lambda e: jnp.vdot(e, prior_matvec(e)), d, batch_size, dtype)

    if curvature == "hessian":
        lik_matvec = lambda v: -hvp(loglik, v)  # noqa: E731

        def dense():
            return dense_hessian(logdens, x0)

        def diag():
            return _chunked_diag(lambda e: -jnp.vdot(e, hvp(logdens, e)), d, batch_size, dtype)

        def lik_diag_at(idx):
            return jax.vmap(lambda i: jnp.vdot(jax.nn.one_hot(i, d, dtype=dtype),
                                               lik_matvec(jax.nn.one_hot(i, d, dtype=dtype))))(idx)

        return CurvatureOps(embed, lik_matvec, prior_matvec, dense, diag, prior_diag, lik_diag_at, {}, [])

    zfn = z_map(ld.split)
    factors, mc_sites = outer_factors(ld.split, ld.unravel(mean), curvature, rng_key, num_fisher_samples)

    def fwd(x):
        z = zfn(ld.unravel(embed(x)))
        return {k: z[k] for k in factors}

    def apply_outer(t):  # t {site: (M, C)} -> L Lᵀ t
        return {k: jnp.einsum("mcr,mr->mc", factors[k], jnp.einsum("mcr,mc->mr", factors[k], t[k])) for k in t}

    def lik_matvec(v):
        _, jvp_fn = jax.linearize(fwd, x0)
        t = jvp_fn(v)
        return jax.linear_transpose(jvp_fn, x0)(apply_outer(t))[0]

    def lik_col_sq(e):  # ||Lᵀ J e||²
        t = jax.jvp(fwd, (x0,), (e,))[1]
        return sum(jnp.sum(jnp.einsum("mcr,mc->mr", factors[k], t[k]) ** 2) for k in t)

    def lik_dense():
        p = sum(v.shape[0] * v.shape[1] for v in factors.values())
        jac = (jax.jacrev if p <= d else jax.jacfwd)(fwd)(x0)  # {site: (M, C, d)}
        rows = [jnp.einsum("mcr,mcd->mrd", factors[k], jac[k]).reshape(-1, d) for k in factors]
        r = jnp.concatenate(rows, 0) if rows else jnp.zeros((0, d), dtype)
        return r.T @ r

    def dense():
        p0 = dense_hessian(logprior, x0)
        return lik_dense() + p0

    def diag():
        return _chunked_diag(lik_col_sq, d, batch_size, dtype) + prior_diag()

    def lik_diag_at(idx):
        return jax.vmap(lambda i: lik_col_sq(jax.nn.one_hot(i, d, dtype=dtype)))(idx)

    return CurvatureOps(embed, lik_matvec, prior_matvec, dense, diag, prior_diag, lik_diag_at, factors, mc_sites)
