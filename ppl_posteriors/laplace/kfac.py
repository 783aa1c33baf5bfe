"""K-FAC (Kronecker-factored) curvature for dense layers written as sample sites.

A model marks a dense layer with :func:`dense`::

    W = numpyro.sample("W1", dist.Normal(0, 1).expand([n_in, n_out]).to_event(2))
    b = numpyro.sample("b1", dist.Normal(0, 1).expand([n_out]).to_event(1))
    h = pp.laplace.dense(x, W, "W1", b, "b1")      # = x @ W + b, nothing else

Outside a Laplace fit it is exactly ``x @ W + b``. Inside one it records the
layer input a_n (the rows of x) and adds a zero "probe" to the pre-activation s_n,
whose gradient is the back-propagated output factor. With the outer factors L_n of
the curvature (``ggn``, ``fisher`` or ``mc_fisher``, see ``laplace.outer``),
g_{n,r} = ∂(Σ_m L_{m,:,r}ᵀ z_m)/∂s_n and

    C_W = Σ_n (a_n a_nᵀ) ⊗ (Σ_r g_{n,r} g_{n,r}ᵀ) ≈ (A ⊗ B) / N,
    A = Σ_n a_n a_nᵀ (n_in, n_in),  B = Σ_{n,r} g_{n,r} g_{n,r}ᵀ (n_out, n_out),

the K-FAC approximation of the layer's diagonal block (exact for N = 1), in the
row-major order of W (n_in, n_out). A bias is a layer with a_n = 1 (then C_b = B,
exact). Rows of x and s are data: x (..., n_in) with the leading axes the data axes.

The same capture gives the *exact* curvature of the marked layers (used by
``structure="diag"`` and ``"full"`` with ``ggn``/``fisher``/``mc_fisher``): the
per-datum rows of Lᵀ J on W are a_n ⊗ g_{n,r}, so

    diag(C_W) = (A∘A)ᵀ (Σ_r G_r∘G_r),   C_{W,V} = Σ_n (a_n a'_nᵀ) ⊗ (Σ_r g_{n,r} g'_{n,r}ᵀ),

(A (N, n_in) the inputs, G_r (N, n_out) the g_{n,r}), exact when z depends on W only
through s and row n of s only reaches the data of row n (:func:`layers_exact` verifies
both at the point; the callers fall back to the generic path otherwise).

References: Martens & Grosse (2015), "Optimizing neural networks with Kronecker-factored
approximate curvature", ICML; Ritter, Botev & Barber (2018), "A scalable Laplace
approximation for neural networks", ICLR; Dangel, Kunstner & Hennig (2020), "BackPACK:
packing more into backprop", ICLR (the exact diagonal from a_n and g_{n,r}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import ConfigError

__all__ = ["Layers", "capture_layers", "dense", "kfac_factors", "layer_diag", "layer_gram", "layers_exact"]

_STACK: list = []


class _Capture:
    def __init__(self, probes=None):
        self.probes = probes
        self.inputs: dict = {}
        self.shapes: dict = {}
        self.repeated: set = set()  # sites marked more than once (a shared weight)


def dense(x, W, site: str, b=None, bias_site: str | None = None):
    """``x @ W (+ b)``, tagged for K-FAC (``pp.Laplace(structure="kron")``) and for the exact
    layer formulas of ``structure="diag"`` / ``"full"`` (non-Hessian curvatures).

    Parameters
    ----------
    x : array (..., n_in)
        Layer input; leading axes are data.
    W : array (n_in, n_out)
        The value of the sample site ``site`` (real support, shape (n_in, n_out)).
    site : str
        Name of W's sample site.
    b : array (n_out,), optional
        The value of the sample site ``bias_site``.
    bias_site : str, optional
        Name of b's sample site (required with ``b``).

    Returns
    -------
    array (..., n_out)

    Raises
    ------
    ConfigError
        ``b`` given without ``bias_site``.
    """
    if b is not None and bias_site is None:
        raise ConfigError(f"pp.laplace.dense: give bias_site, the sample site name of the bias of layer {site!r}")
    s = x @ W if b is None else x @ W + b
    if _STACK:
        cap = _STACK[-1]
        names = [(site, x)] + ([(bias_site, jnp.ones(x.shape[:-1] + (1,), x.dtype))] if b is not None else [])
        for name, inp in names:
            cap.inputs[name] = inp.reshape(-1, inp.shape[-1])
            if cap.probes is None:
                if name in cap.shapes:
                    cap.repeated.add(name)
                cap.shapes[name] = s.shape
            else:
                s = s + cap.probes[name]
    return s


def _run(zfn, position, probes=None):
    """zfn(position) with a capture on the stack: (z, the capture)."""
    cap = _Capture(probes)
    _STACK.append(cap)
    try:
        z = zfn(position)
    finally:
        _STACK.pop()
    return z, cap


class Layers(NamedTuple):
    """What the layers marked by :func:`dense` give at the mode, for the outer factors L.

    inputs : {site: a (N, n_in)}
        The layer input a_n of each marked site (a column of ones for a bias), N rows.
    grads : {site: G (Q, N, n_out)}
        g_{n,q} = ∂(Σ_{m in group j} L_{m,:,r}ᵀ z_m)/∂s_n for q = (observed site o, group j,
        column r) in that order (sites sorted as ``factors``, then j, then r), where element m
        of site o belongs to row n = m // groups[o] and group j = m % groups[o].
    groups : {observed site: int}
        Elements per layer row (M_o / N), or 0 when M_o is not a multiple of N (no grads then).
    rows : int
        N, the rows of the first marked layer.
    probe_jvp : callable
        {site: (N, n_out)} -> {observed site: (M_o, C_o)}: ∂z/∂s applied to tangents of the
        pre-activations s (summed over the sites of one layer).
    """

    inputs: dict
    grads: dict
    groups: dict
    rows: int
    probe_jvp: Callable


def capture_layers(ld, mean_position, factors: dict, *, strict: bool = True):
    """Layer inputs and back-propagated output factors of every layer marked by :func:`dense`.

    One forward pass records a_n; zero probes added to each pre-activation s = x @ W (+ b)
    and one VJP per (observed site, group, column of L) give g_{n,q} (see :class:`Layers`).
    These are the per-datum Jacobian rows of a dense layer, Lᵀ J_W = a_n ⊗ g_{n,q}, exact
    when the row n of s reaches only the data of row n (verified by the callers that need
    exactness); K-FAC (:func:`kfac_factors`) and the exact diagonal / dense GGN of
    :mod:`~ppl_posteriors.laplace.curvature` share them.

    Parameters
    ----------
    ld : LogDensity
    mean_position : dict
        The (unconstrained) mode, as ``ld.unravel`` gives it.
    factors : {observed site: L (M, C, R)}
        Outer factors (``laplace.outer.outer_factors``).
    strict : bool
        True (K-FAC): ConfigError when no layer is marked or an observed site's size is not a
        multiple of the layer rows. False: return None when no layer is marked, a site is
        marked twice (a shared weight) or the marked layers have different row counts; a site
        whose size is not a multiple gets groups 0.

    Returns
    -------
    Layers or None
    """
    from .outer import z_map

    zfn = z_map(ld.split)
    _, cap = _run(zfn, mean_position)
    if not cap.shapes:
        if strict:
            raise ConfigError(
                "structure='kron' found no layer marked with pp.laplace.dense(x, W, 'site') in the model; "
                "mark the dense layers, or use structure='diag' or 'lowrank'"
            )
        return None
    rows = next(iter(cap.inputs.values())).shape[0]
    if not strict and (cap.repeated or len({a.shape[0] for a in cap.inputs.values()}) > 1):
        return None
    groups = {}
    for site, L in factors.items():
        if L.shape[0] % rows:
            if strict:
                raise ConfigError(f"structure='kron': observed site {site!r} has {L.shape[0]} elements, "
                                  f"not a multiple of the {rows} layer rows")
            groups[site] = 0
        else:
            groups[site] = L.shape[0] // rows
    probes0 = {k: jnp.zeros(s, mean_position[next(iter(mean_position))].dtype) for k, s in cap.shapes.items()}

    def fwd(probes):
        z, c = _run(zfn, mean_position, probes)
        return {k: z[k] for k in factors}, c.inputs

    z, vjp_fn, inputs = jax.vjp(fwd, probes0, has_aux=True)
    parts = {k: [] for k in cap.shapes}
    for site, L in factors.items():  # one observed site at a time: no cross terms between sites
        m, g = L.shape[0], groups[site]
        if not g:
            continue

        def grad_r(lr, j, site=site, g=g, m=m):  # elements m = n * g + j of row n: one VJP per (j, r)
            mask = (jnp.arange(m) % g == j).astype(lr.dtype)[:, None]
            cot = {k: (lr * mask if k == site else jnp.zeros_like(v)) for k, v in z.items()}
            return vjp_fn(cot)[0]

        gq = jax.vmap(lambda j: jax.vmap(lambda lr: grad_r(lr, j), in_axes=2)(L))(jnp.arange(g))  # noqa: B023 (called at once)
        for k, gk in gq.items():
            parts[k].append(gk.reshape(-1, inputs[k].shape[0], gk.shape[-1]))
    grads = {k: (jnp.concatenate(v, 0) if v
                 else jnp.zeros((0, inputs[k].shape[0], cap.shapes[k][-1]), probes0[k].dtype))
             for k, v in parts.items()}

    def probe_jvp(t):
        tt = {k: (t[k].reshape(s) if k in t else jnp.zeros(s, probes0[k].dtype)) for k, s in cap.shapes.items()}
        return jax.jvp(lambda p: fwd(p)[0], (probes0,), (tt,))[1]

    return Layers(inputs, grads, groups, rows, probe_jvp)


def kfac_factors(ld, mean_position, factors: dict):
    """{site: (A (n_in, n_in), B (n_out, n_out), N)} for every layer marked by :func:`dense`.

    ``factors`` are the outer factors {observed site: L (M, C, R)} (``laplace.outer``);
    ``mean_position`` the (unconstrained) mode. A = Σ_n a_n a_nᵀ, B = Σ_{n,q} g_{n,q} g_{n,q}ᵀ
    from :func:`capture_layers`. Pure; call inside jit.
    """
    lay = capture_layers(ld, mean_position, factors, strict=True)
    out = {}
    for k, a in lay.inputs.items():
        gk = lay.grads[k].reshape(-1, lay.grads[k].shape[-1])
        out[k] = (a.T @ a, gk.T @ gk, a.shape[0])
    return out


# -- exact curvature of the marked layers from the captured a_n and g_{n,q} -----------------------
# (Dangel, Kunstner & Hennig (2020), "BackPACK: packing more into backprop", ICLR: the rows of Lᵀ J
# for a dense layer are outer products a_n ⊗ g_{n,q}, so their squares and Gram need no J)


def layers_exact(lay: Layers, sites, pos_jvp: Callable, rng_key) -> jax.Array:
    """Whether the layer formulas are exact for ``sites`` at this point (a bool scalar).

    They are when (1) the observed parameters z depend on each site's W only through its
    pre-activation s = a W (no weight shared with another use, real support), checked as
    J_W V = (∂z/∂s)(a V) for one random V on all ``sites`` (``pos_jvp``: {site: V (n_in, n_out)}
    -> {observed site: dz (M, C)}; equality for a random V is equality of the linear maps,
    up to a relative round-off of 1000 eps), and (2) element m of an observed site depends
    on row m // groups of s only, checked exactly (structural zeros) with 2 ceil(log2 N)
    random tangents on s supported on the rows whose bit b is 0, or 1.
    """
    dtype = next(iter(lay.inputs.values())).dtype
    n = lay.rows
    shapes = [(k, (lay.inputs[k].shape[1], lay.grads[k].shape[-1])) for k in sites]
    shapes += [(k, (n, lay.grads[k].shape[-1])) for k in sites]
    sizes = [int(np.prod(sh)) for _, sh in shapes]
    flat = jax.random.normal(rng_key, (sum(sizes),), dtype)  # one draw: each PRNG call costs compile time
    cuts = np.cumsum([0] + sizes)
    draws = [flat[cuts[i] : cuts[i + 1]].reshape(sh) for i, (_, sh) in enumerate(shapes)]
    v = dict(zip(sites, draws[: len(sites)], strict=True))
    t = dict(zip(sites, draws[len(sites) :], strict=True))
    dz_pos = pos_jvp(v)
    dz_probe = lay.probe_jvp({k: lay.inputs[k] @ v[k] for k in sites})
    ok = jnp.asarray(True)
    tol = 1000 * jnp.finfo(dtype).eps
    for o in dz_pos:
        scale = jnp.max(jnp.abs(dz_pos[o]), initial=0.0) + jnp.finfo(dtype).tiny
        ok = ok & (jnp.max(jnp.abs(dz_pos[o] - dz_probe[o]), initial=0.0) <= tol * scale)
    nbits = int(np.ceil(np.log2(n))) if n > 1 else 0
    if nbits == 0 and all(g for g in lay.groups.values()):
        return ok
    rowbits = (np.arange(n)[None, :] >> np.arange(max(nbits, 1))[:, None]) & 1  # (nbits, N)
    masks = jnp.asarray(np.concatenate([rowbits, 1 - rowbits], 0), dtype)  # (2 nbits, N): tangent rows
    dz = jax.vmap(lambda mk: lay.probe_jvp({k: t[k] * mk[:, None] for k in sites}))(masks)
    for o, g in lay.groups.items():
        if g:  # element m may move only when its row m // g carries a tangent
            reach = jnp.repeat(masks, g, axis=1)[:, :, None] > 0  # (2 nbits, M, 1)
            ok = ok & jnp.all(reach | (dz[o] == 0))
        else:  # not aligned with the rows: must not depend on the layers at all
            ok = ok & jnp.all(dz[o] == 0)
    return ok


def layer_diag(lay: Layers, site: str) -> jax.Array:
    """diag(C) on a marked site, flat (n_in·n_out,) row-major: (A∘A)ᵀ Σ_q G_q∘G_q, i.e.
    Σ_{n,q} a_n² ⊗ g_{n,q}² (a bias: Σ_{n,q} g_{n,q}²). Exact under :func:`layers_exact`."""
    a, g = lay.inputs[site], lay.grads[site]
    return ((a * a).T @ jnp.sum(g * g, 0)).reshape(-1)


def _tri_index(k: int):
    """(pairs i <= j as two index arrays, (k, k) position of (i, j) in that list, symmetric)."""
    iu = np.triu_indices(k)
    pos = np.empty((k, k), np.int32)
    pos[iu] = np.arange(iu[0].size)
    pos[iu[1], iu[0]] = np.arange(iu[0].size)
    return iu, pos


def _kron_sum(a, b, bn):
    """Σ_n (a_n b_nᵀ) ⊗ B_n ((n_a·o_a, n_b·o_b), row-major) for a (N, n_a), b (N, n_b), B (N, o_a, o_b):
    one matmul contracting over n, (n_a n_b, N)(N, o_a o_b)."""
    n, na, nb = a.shape[0], a.shape[1], b.shape[1]
    oa, ob = bn.shape[1], bn.shape[2]
    k = (a[:, :, None] * b[:, None, :]).reshape(n, -1).T @ bn.reshape(n, -1)
    return k.reshape(na, nb, oa, ob).transpose(0, 2, 1, 3).reshape(na * oa, nb * ob)


def _kron_sum_sym(a, bn):
    """:func:`_kron_sum` (a, a, B) for symmetric B_n: only the pairs i <= j of a and a <= b of B are
    multiplied (a quarter of the flops), the rest gathered. Exactly symmetric."""
    (i0, i1), pi = _tri_index(a.shape[1])
    (b0, b1), pb = _tri_index(bn.shape[1])
    ku = (a[:, i0] * a[:, i1]).T @ bn[:, b0, b1]  # (n_in(n_in+1)/2, n_out(n_out+1)/2)
    k = ku[pi[:, None, :, None], pb[None, :, None, :]]  # (n_in, n_out, n_in, n_out)
    return k.reshape(a.shape[1] * bn.shape[1], -1)


def layer_gram(lay: Layers, sites, rest=None):
    """The marked sites' block of C = Σ_{n,q} r_{n,q} r_{n,q}ᵀ, r_{n,q} = [a^s_n ⊗ g^s_{n,q}]_s.

    Contracting q first (B_n^{st} = Σ_q g^s_{n,q} g^t_{n,q}ᵀ) and then n, the (s, t) block is
    Σ_n (a^s_n a^tᵀ_n) ⊗ B_n^{st}: one matmul of (n_in^s n_in^t, N)(N, n_out^s n_out^t), R times
    fewer flops than the Gram of the rows; diagonal blocks use symmetry (:func:`_kron_sum_sym`).

    Parameters
    ----------
    lay : Layers
    sites : sequence of str
        Marked sites, in the order of the result's rows.
    rest : array (Q, N, E), optional
        The other coordinates' columns of Lᵀ J in the same rows (n, q).

    Returns
    -------
    (F, F) array with F = Σ_s n_in^s n_out^s, and (F, E) the cross block with ``rest`` (or None).
    """
    rows = []
    blk = {}
    for i, s in enumerate(sites):
        for t in sites[i:]:
            bn = jnp.einsum("qna,qnb->nab", lay.grads[s], lay.grads[t])
            if s == t:
                blk[(s, t)] = _kron_sum_sym(lay.inputs[s], bn)
            else:
                blk[(s, t)] = _kron_sum(lay.inputs[s], lay.inputs[t], bn)
    for i, s in enumerate(sites):
        rows.append(jnp.concatenate([blk[(s, t)] if j >= i else blk[(t, s)].T for j, t in enumerate(sites)], 1))
    ff = jnp.concatenate(rows, 0)
    if rest is None:
        return ff, None
    cross = [jnp.einsum("ni,nae->iae", lay.inputs[s], jnp.einsum("qna,qne->nae", lay.grads[s], rest))
             .reshape(-1, rest.shape[-1]) for s in sites]
    return ff, jnp.concatenate(cross, 0)
