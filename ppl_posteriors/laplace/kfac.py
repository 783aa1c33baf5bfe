"""K-FAC (Kronecker-factored) curvature for dense layers written as sample sites.

A model marks a dense layer with :func:`dense`::

    W = numpyro.sample("W1", dist.Normal(0, 1).expand([n_in, n_out]).to_event(2))
    b = numpyro.sample("b1", dist.Normal(0, 1).expand([n_out]).to_event(1))
    h = pp.laplace.dense(x, W, "W1", b, "b1")      # = x @ W + b, nothing else

Outside a K-FAC Laplace fit it is exactly ``x @ W + b``. Inside one it records the
layer input a_n (the rows of x) and adds a zero "probe" to the pre-activation s_n,
whose gradient is the back-propagated output factor. With the outer factors L_n of
the curvature (``ggn``, ``fisher`` or ``mc_fisher``, see ``laplace.outer``),
g_{n,r} = ∂(Σ_m L_{m,:,r}ᵀ z_m)/∂s_n and

    C_W = Σ_n (a_n a_nᵀ) ⊗ (Σ_r g_{n,r} g_{n,r}ᵀ) ≈ (A ⊗ B) / N,
    A = Σ_n a_n a_nᵀ (n_in, n_in),  B = Σ_{n,r} g_{n,r} g_{n,r}ᵀ (n_out, n_out),

the K-FAC approximation of the layer's diagonal block (exact for N = 1), in the
row-major order of W (n_in, n_out). A bias is a layer with a_n = 1 (then C_b = B,
exact). Rows of x and s are data: x (..., n_in) with the leading axes the data axes.

References: Martens & Grosse (2015), "Optimizing neural networks with Kronecker-factored
approximate curvature", ICML; Ritter, Botev & Barber (2018), "A scalable Laplace
approximation for neural networks", ICLR.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._errors import ConfigError

__all__ = ["dense", "kfac_factors"]

_STACK: list = []


class _Capture:
    def __init__(self, probes=None):
        self.probes = probes
        self.inputs: dict = {}
        self.shapes: dict = {}


def dense(x, W, site: str, b=None, bias_site: str | None = None):
    """``x @ W (+ b)``, tagged for K-FAC (``pp.Laplace(structure="kron")``).

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
                cap.shapes[name] = s.shape
            else:
                s = s + cap.probes[name]
    return s


def kfac_factors(ld, mean_position, factors: dict):
    """{site: (A (n_in, n_in), B (n_out, n_out), N)} for every layer marked by :func:`dense`.

    ``factors`` are the outer factors {observed site: L (M, C, R)} (``laplace.outer``);
    ``mean_position`` the (unconstrained) mode. Pure; call inside jit.
    """
    from .outer import z_map

    zfn = z_map(ld.split)
    cap = _Capture()
    _STACK.append(cap)
    try:
        zfn(mean_position)
    finally:
        _STACK.pop()
    if not cap.shapes:
        raise ConfigError(
            "structure='kron' found no layer marked with pp.laplace.dense(x, W, 'site') in the model; "
            "mark the dense layers, or use structure='diag' or 'lowrank'"
        )
    probes0 = {k: jnp.zeros(s, mean_position[next(iter(mean_position))].dtype) for k, s in cap.shapes.items()}

    def fwd(probes):
        c = _Capture(probes)
        _STACK.append(c)
        try:
            z = zfn(mean_position)
        finally:
            _STACK.pop()
        return {k: z[k] for k in factors}, c.inputs

    z, vjp_fn, inputs = jax.vjp(fwd, probes0, has_aux=True)
    out = {}
    bsum = {k: 0.0 for k in cap.shapes}
    rows = next(iter(inputs.values())).shape[0]
    for site, L in factors.items():  # one observed site at a time: no cross terms between sites
        m = L.shape[0]
        if m % rows:
            raise ConfigError(f"structure='kron': observed site {site!r} has {m} elements, not a multiple of the {rows} layer rows")
        groups = m // rows  # elements m = n * groups + j of row n: one VJP per (j, r), no two of a row mixed

        def grad_r(lr, j, site=site, groups=groups, m=m):
            mask = (jnp.arange(m) % groups == j).astype(lr.dtype)[:, None]
            cot = {k: (lr * mask if k == site else jnp.zeros_like(v)) for k, v in z.items()}
            return vjp_fn(cot)[0]

        g = jax.vmap(lambda j: jax.vmap(lambda lr: grad_r(lr, j), in_axes=2)(L))(jnp.arange(groups))  # noqa: B023 (called at once)
        for k, gk in g.items():
            gk = gk.reshape(-1, gk.shape[-1])
            bsum[k] = bsum[k] + gk.T @ gk
    for k, a in inputs.items():
        out[k] = (a.T @ a, bsum[k], a.shape[0])
    return out
