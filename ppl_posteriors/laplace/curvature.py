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
one VJP, or one HVP), ``dense()`` (d x d: Lᵀ J by reverse mode when the outputs are fewer than d, then the
symmetric :func:`gram` (Lᵀ J)ᵀ (Lᵀ J); else chunks of unit tangents, either the same Gram of
the columns Lᵀ J e_j or the columns Jᵀ L Lᵀ J e_j (JVP + VJP), whichever has fewer matmul
flops; only the ``"full"`` structure calls it),
``diag()`` (d JVPs in chunks of ``batch_size``, never J whole), ``prior_diag()``.

References: Martens (2020), JMLR 21; Daxberger et al. (2021), "Laplace Redux", NeurIPS;
Dangel, Kunstner & Hennig (2020), "BackPACK", ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .kfac import capture_layers, layer_diag, layer_gram, layers_exact
from .outer import outer_factors, z_map

__all__ = ["CurvatureOps", "curvature_ops", "dense_hessian", "gram"]


def dense_hessian(flat_logdensity_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                  batch_size: int | None = None) -> jax.Array:
    """H = -∇² log p at ``x`` (D,), as a symmetric (D, D) array (units: 1 / position²).

    ``batch_size``: Hessian-vector products (forward over reverse) of that many unit vectors at a
    time (``lax.map``) instead of one vmap over all D (``jax.hessian``), whose (D, D)
    intermediates leave the cache (B1's prior, D = 2410: 25 ms against 170 ms of CPU)."""
    if batch_size is None or batch_size >= x.shape[0]:
        h = -jax.hessian(flat_logdensity_fn)(x)
    else:
        g = jax.grad(flat_logdensity_fn)
        eye = jnp.eye(x.shape[0], dtype=x.dtype)
        h = -jax.lax.map(lambda e: jax.jvp(g, (x,), (e,))[1], eye, batch_size=batch_size)
    return 0.5 * (h + h.T)


# unit tangents per chunk of the forward-mode Jacobian (measured on the B1 MLP, D = 2410: chunks of
# 128 take half the CPU time of one vmapped jacfwd over all D, whose intermediates exceed the cache)
_JVP_CHUNK = 128
# unit tangents per chunk of the prior's dense Hessian (B1: 32 and 64 beat 128; jax.hessian 7x slower)
_PRIOR_CHUNK = 64
# unit tangents per chunk of GGN columns G e_j (a JVP and a VJP each; B1: 64 beat 128 and 256)
_GGNVP_CHUNK = 64


def _dot_flops(jaxpr) -> int:
    """Flops of the dot_generals in ``jaxpr`` (sub-jaxprs included, scans times their length):
    a cost model to choose between two ways of forming a dense GGN."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2 * math.prod(out) * math.prod(lhs[i] for i in lc)
        times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += times * _dot_flops(inner)
    return total


# below this dimension a Gram matrix is one matmul; above, the upper triangle of _GRAM_BLOCKS² blocks
_GRAM_MIN = 512
_GRAM_BLOCKS = 4


def gram(a: jax.Array) -> jax.Array:
    """A Aᵀ for A (d, K), exploiting symmetry: with d >= 512 the rows are cut into 4 blocks and only
    the 10 blocks on and above the diagonal are multiplied (5/8 of the flops of one matmul; XLA has
    no symmetric rank-k update), the others mirrored. Exactly symmetric."""
    d = a.shape[0]
    if d < _GRAM_MIN:
        g = a @ a.T
        return 0.5 * (g + g.T)
    s = -(-d // _GRAM_BLOCKS)
    parts = [a[i * s : min((i + 1) * s, d)] for i in range(_GRAM_BLOCKS)]
    blk = {(i, j): parts[i] @ parts[j].T for i in range(_GRAM_BLOCKS) for j in range(i, _GRAM_BLOCKS)}
    rows = []
    for i in range(_GRAM_BLOCKS):
        row = [blk[(i, j)] if j >= i else blk[(j, i)].T for j in range(_GRAM_BLOCKS)]
        row[i] = 0.5 * (row[i] + row[i].T)
        rows.append(jnp.concatenate(row, 1))
    return jnp.concatenate(rows, 0)


def _chunked_diag(colfn, d: int, batch_size: int | None, dtype, at=None):
    """colfn(e_i) -> scalar over unit vectors e_i (i < d, or i in ``at``), vmapped in chunks."""
    eye_i = jnp.arange(d) if at is None else jnp.asarray(at)

    def one(i):
        return colfn(jax.nn.one_hot(i, d, dtype=dtype))

    if batch_size is None or batch_size >= eye_i.shape[0]:
        return jax.vmap(one)(eye_i)
    return jax.lax.map(one, eye_i, batch_size=batch_size)


def _layer_plan(ld, index, lay):
    """(sites, {site: positions in 0..d-1}, rest positions) for the marked layers whose whole
    site is among the chosen coordinates with the layer's shape; None when there are none or
    ``index`` is not concrete."""
    try:
        idx = np.asarray(index)
    except jax.errors.TracerArrayConversionError:
        return None
    pos_of = {int(g): i for i, g in enumerate(idx)}
    start, pos, sites = 0, {}, []
    for name, shape in ld.layout:
        size = math.prod(shape)
        if name in lay.inputs and start in pos_of and size == lay.inputs[name].shape[1] * lay.grads[name].shape[-1]:
            sites.append(name)
            pos[name] = np.array([pos_of[g] for g in range(start, start + size)])
        start += size
    if not sites:
        return None
    rest = np.setdiff1d(np.arange(idx.shape[0]), np.concatenate([pos[k] for k in sites]))
    return sites, pos, rest


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
    coordinates ``index`` (d,) (a static-shaped int array). Pure; call inside jit.

    With a concrete ``index`` (numpy, or a jax array made outside jit) and layers marked by
    ``pp.laplace.dense`` among the chosen sites, ``diag()`` and ``dense()`` of a non-Hessian
    curvature take those sites' coordinates from the exact layer formulas
    (:mod:`~ppl_posteriors.laplace.kfac`: Σ_{n,r} a_n² ⊗ g_{n,r}² and Σ_n (a_n a'_nᵀ) ⊗ B_n,
    Dangel, Kunstner & Hennig 2020), the others by unit JVPs in the same rows; when
    :func:`~ppl_posteriors.laplace.kfac.layers_exact` finds them inexact at the point (a
    weight used outside the layer, data rows mixed), a ``lax.cond`` takes the generic path."""
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
        if not factors:
            return jnp.zeros((d, d), dtype)
        if p <= d:  # fewer outputs than coordinates: J by reverse mode, rows Lᵀ J (P·R, d)
            jac = jax.jacrev(fwd)(x0)  # {site: (M, C, d)}
            rows = [jnp.einsum("mcr,mcd->mrd", factors[k], jac[k]).reshape(-1, d) for k in factors]
            return gram(jnp.concatenate(rows, 0).T)
        # forward mode: one linearisation, then chunks of unit tangents e_j. Either (a) the columns
        # Lᵀ J e_j (J itself is never stored) and their symmetric Gram, or (b) the columns
        # G e_j = Jᵀ L Lᵀ J e_j (a JVP and a VJP each): (b) wins when the model's Jacobian has
        # structure that autodiff exploits (a dense layer's x ⊗ δ: B1's MLP, 2.5x fewer flops),
        # (a) when it has none (a GLM's dense X); the choice compares their matmul flops
        _, jvp_fn = jax.linearize(fwd, x0)
        rows = sum(v.shape[0] * v.shape[2] for v in factors.values())
        per_jvp = _dot_flops(jax.make_jaxpr(jvp_fn)(x0).jaxpr) + p
        gram_flops = d * per_jvp + (1.25 if d >= _GRAM_MIN else 2.0) * rows * d * d
        if 2 * d * per_jvp < gram_flops:
            vjp_fn = jax.linear_transpose(jvp_fn, x0)

            def ggn_col(e):
                return vjp_fn(apply_outer(jvp_fn(e)))[0]

            g = jax.lax.map(ggn_col, jnp.eye(d, dtype=dtype), batch_size=min(d, _GGNVP_CHUNK))
            return 0.5 * (g + g.T)

        def cols(e):  # (d,) -> (Σ_k M_k R_k,): the column Lᵀ J e
            t = jvp_fn(e)
            return jnp.concatenate([jnp.einsum("mcr,mc->mr", factors[k], t[k]).reshape(-1) for k in factors])

        lt_j = jax.lax.map(cols, jnp.eye(d, dtype=dtype), batch_size=min(d, _JVP_CHUNK))  # (d, P·R)
        return gram(lt_j)

    def layer_dense(lay, plan):
        """C with the marked layers' blocks from a_n and g_{n,q} (kfac.layer_gram) and the other
        coordinates' columns Lᵀ J e_j by JVPs, in the same rows (n, q); permuted to ``index``."""
        sites, pos, rest = plan
        n = lay.rows
        if rest.size:
            _, jvp_fn = jax.linearize(fwd, x0)

            def cols(e):  # the column Lᵀ J e: rows (q, n) of the aligned sites, then the others
                t = jvp_fn(e)
                al, other = [], []
                for k, g in lay.groups.items():
                    u = jnp.einsum("mcr,mc->mr", factors[k], t[k])
                    if g:
                        al.append(u.reshape(n, g, -1).transpose(1, 2, 0).reshape(-1))
                    else:
                        other.append(u.reshape(-1))
                return jnp.concatenate(al + other)

            unit = jax.nn.one_hot(jnp.asarray(rest), d, dtype=dtype)
            c = jax.lax.map(cols, unit, batch_size=min(rest.size, _JVP_CHUNK))  # (E, Q·N + X)
            q = lay.grads[sites[0]].shape[0]
            cq = c[:, : q * n].reshape(-1, q, n).transpose(1, 2, 0)  # (Q, N, E)
            ff, fr = layer_gram(lay, sites, cq)
            rr = gram(c)
            m = jnp.concatenate([jnp.concatenate([ff, fr], 1), jnp.concatenate([fr.T, rr], 1)], 0)
        else:
            m, _ = layer_gram(lay, sites)
        order = np.concatenate([pos[k] for k in sites] + [rest])
        if np.array_equal(order, np.arange(d)):
            return m
        inv = np.argsort(order)
        return m[inv][:, inv]

    def dense():
        p0 = dense_hessian(logprior, x0, batch_size=_PRIOR_CHUNK)
        fast = layers()
        if fast is None:
            return lik_dense() + p0
        lay, plan, ok = fast
        return jax.lax.cond(ok, lambda _: layer_dense(lay, plan), lambda _: lik_dense(), None) + p0

    def generic_diag(_=None):
        return _chunked_diag(lik_col_sq, d, batch_size, dtype)

    def layers():
        """The marked dense layers (kfac.capture_layers), their plan and whether the layer
        formulas are exact here; None without marked layers among the chosen sites."""
        lay = capture_layers(ld, ld.unravel(mean), factors, strict=False) if factors else None
        plan = _layer_plan(ld, index, lay) if lay is not None else None
        if plan is None:
            return None
        sites, pos, _ = plan

        def pos_jvp(v):  # {site: V} -> J V on the observed parameters
            t = jnp.zeros(d, dtype)
            for k in sites:
                t = t.at[pos[k]].set(v[k].reshape(-1))
            return jax.jvp(fwd, (x0,), (t,))[1]

        return lay, plan, layers_exact(lay, sites, pos_jvp, jax.random.fold_in(rng_key, 2**20))

    def diag():
        fast = layers()
        if fast is None:
            return generic_diag() + prior_diag()
        lay, (sites, pos, rest), ok = fast

        def layer_path(_):  # BackPACK's exact diagonal on the marked layers, unit JVPs elsewhere
            out = jnp.zeros(d, dtype)
            for k in sites:
                out = out.at[pos[k]].set(layer_diag(lay, k))
            if rest.size:
                out = out.at[rest].set(_chunked_diag(lik_col_sq, d, batch_size, dtype, at=rest))
            return out

        return jax.lax.cond(ok, layer_path, generic_diag, None) + prior_diag()

    def lik_diag_at(idx):
        return jax.vmap(lambda i: lik_col_sq(jax.nn.one_hot(i, d, dtype=dtype)))(idx)

    return CurvatureOps(embed, lik_matvec, prior_matvec, dense, diag, prior_diag, lik_diag_at, factors, mc_sites)
