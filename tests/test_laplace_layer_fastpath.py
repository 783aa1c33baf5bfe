"""Exact layer formulas for layers marked by pp.laplace.dense (diag and full, ggn / fisher / mc_fisher),
against explicit per-datum Jᵀ H J / Σ_n g_n g_nᵀ and the generic path on the same model with plain `@` (x64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl_posteriors as pp
import ppl_posteriors.laplace.curvature as curv
from ppl_posteriors.laplace.fit import fit_approximation, site_index

pytestmark = pytest.mark.filterwarnings("ignore::ppl_posteriors.NumericalWarning")

RNG = np.random.default_rng(0)
N, K = 30, 4
X = RNG.normal(size=(N, 3))
Y = RNG.integers(0, K, size=N)


def _mlp(marked: bool, kind: str = "ok"):
    """MLP 3-5-4 (tanh), Categorical(logits); layers via pp.laplace.dense or plain `@`.
    kind "tied": W1 also enters the logits outside its layer; "mix": rows of h are centred
    (row n of the layer reaches every datum): both make the layer formulas inexact."""

    def model(X, y=None):
        W1 = numpyro.sample("W1", dist.Normal(0.0, 1.0).expand([3, 5]).to_event(2))
        b1 = numpyro.sample("b1", dist.Normal(0.0, 1.0).expand([5]).to_event(1))
        W2 = numpyro.sample("W2", dist.Normal(0.0, 1.0).expand([5, K]).to_event(2))
        b2 = numpyro.sample("b2", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
        lin = pp.laplace.dense if marked else (lambda x, W, s, b, bs: x @ W + b)
        h = jnp.tanh(lin(X, W1, "W1", b1, "b1"))
        if kind == "mix":
            h = h - h.mean(0)
        logits = lin(h, W2, "W2", b2, "b2")
        if kind == "tied":
            logits = logits + 0.3 * jnp.sum(W1[0])
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    return model


def _logits(ld, x, kind="ok"):
    p = ld.unravel(x)
    h = jnp.tanh(X @ p["W1"] + p["b1"])
    if kind == "mix":
        h = h - h.mean(0)
    out = h @ p["W2"] + p["b2"]
    return out + 0.3 * jnp.sum(p["W1"][0]) if kind == "tied" else out


def _prior_hessian(ld, x):
    return -jax.hessian(lambda z: ld.split.log_prior(ld.unravel(z)))(x)


def _explicit_mlp(ld, x, curvature, kind="ok"):
    """Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n (ggn) or Σ_n ∇log p(y_n|θ) ∇log p(y_n|θ)ᵀ (fisher),
    per datum by jax.jacfwd / jacrev, + the prior Hessian."""
    if curvature == "ggn":
        J = jax.jacfwd(lambda z: _logits(ld, z, kind))(x)  # (N, K, D)
        p = jax.nn.softmax(_logits(ld, x, kind), -1)
        H = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]
        c = jnp.einsum("nkd,nkl,nle->de", J, H, J)
    else:
        g = jax.jacrev(lambda z: jnp.take_along_axis(jax.nn.log_softmax(_logits(ld, z, kind)), Y[:, None], 1)[:, 0])(x)
        c = g.T @ g
    return c + _prior_hessian(ld, x)


def _fit(ld, x, curvature, structure, sites=None):
    """fit_approximation jitted (as pp.Laplace runs it): the precision (dense or diagonal), and the
    values layers_exact took inside the program (recorded by a callback)."""
    seen = []
    orig = curv.layers_exact

    def spy(*a, **k):
        ok = orig(*a, **k)
        jax.debug.callback(lambda v: seen.append(bool(v)), ok)
        return ok

    cfg = pp.Laplace(curvature=curvature, structure=structure, sites=sites)
    curv.layers_exact = spy
    try:
        approx, checks, _ = jax.jit(lambda z: fit_approximation(cfg, ld, z, jax.random.key(3), curvature, structure))(x)
        jax.block_until_ready(approx)
    finally:
        curv.layers_exact = orig
    assert bool(checks["finite"])
    return (approx.precision if structure == "full" else approx.prec), seen


def _tol(ref):
    return {"rtol": 1e-8, "atol": 1e-8 * float(jnp.max(jnp.abs(ref)))}


@pytest.mark.parametrize("curvature", ["ggn", "fisher"])
def test_marked_mlp_equals_explicit(curvature):
    """Both layers marked: diag and full from a_n and g_{n,r} (the fast path is taken) equal the
    explicit per-datum reference, 1e-8."""
    ld = pp.log_density(_mlp(True), X, y=Y)
    x = jnp.asarray(RNG.normal(size=ld.dim) * 0.5)
    full, seen_f = _fit(ld, x, curvature, "full")
    dg, seen_d = _fit(ld, x, curvature, "diag")
    assert seen_f == [True] and seen_d == [True]
    np.testing.assert_array_equal(full, full.T)
    ref = _explicit_mlp(ld, x, curvature)
    np.testing.assert_allclose(full, ref, **_tol(ref))
    np.testing.assert_allclose(dg, jnp.diag(ref), **_tol(ref))


@pytest.mark.parametrize("curvature", ["ggn", "fisher", "mc_fisher"])
def test_marked_mlp_equals_generic_path(curvature):
    """The same model with plain `@` (no marked layer: the generic JVP path only) gives the same
    diag and full precision, 1e-8 (mc_fisher: the same sampled outer factors, same key)."""
    ld = pp.log_density(_mlp(True), X, y=Y)
    ld_plain = pp.log_density(_mlp(False), X, y=Y)
    x = jnp.asarray(RNG.normal(size=ld.dim) * 0.5)
    structures = ("diag", "full") if curvature == "mc_fisher" else ("diag",)
    for structure in structures:
        got, seen = _fit(ld, x, curvature, structure)
        want, seen_plain = _fit(ld_plain, x, curvature, structure)
        assert seen == [True] and seen_plain == []
        np.testing.assert_allclose(got, want, **_tol(want))


def test_subnetwork_sites_with_marked_layers():
    """sites=["W2", "b2"] (last-layer Laplace): the submatrix of the explicit GGN; a marked layer
    outside ``sites`` is held at the mode."""
    ld = pp.log_density(_mlp(True), X, y=Y)
    x = jnp.asarray(RNG.normal(size=ld.dim) * 0.5)
    ref = _explicit_mlp(ld, x, "ggn")
    sub = site_index(ld, ["W2", "b2"])
    full, seen = _fit(ld, x, "ggn", "full", sites=["W2", "b2"])
    assert seen == [True]
    np.testing.assert_allclose(full, ref[np.ix_(sub, sub)], **_tol(ref))
    dg, _ = _fit(ld, x, "ggn", "diag", sites=["b2", "W1"])
    np.testing.assert_allclose(dg, jnp.diag(ref)[site_index(ld, ["b2", "W1"])], **_tol(ref))


def _mixed(X, y=None):
    """Layer 1 marked, layer 2 plain `@` with 2 outputs per datum (elements (n, k): 2 per layer row),
    a learned Normal scale s: GGN with the Fisher diag(1/σ², 2/σ²) in (loc, scale)."""
    W1 = numpyro.sample("W1", dist.Normal(0.0, 1.0).expand([3, 5]).to_event(2))
    b1 = numpyro.sample("b1", dist.Normal(0.0, 1.0).expand([5]).to_event(1))
    W2 = numpyro.sample("W2", dist.Normal(0.0, 1.0).expand([5, 2]).to_event(2))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    loc = jnp.tanh(pp.laplace.dense(X, W1, "W1", b1, "b1")) @ W2
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Normal(loc, s).to_event(1), obs=y)


@pytest.mark.parametrize("curvature", ["ggn", "fisher"])
def test_mixed_marked_and_plain_sites(curvature):
    """A marked layer next to plain sites (W2 and the scale): layer blocks, cross blocks and the rest
    equal the explicit Jᵀ F J (ggn) or Σ_m g_m g_mᵀ over the N·2 elements (fisher), 1e-8."""
    y = RNG.normal(size=(N, 2))
    ld = pp.log_density(_mixed, X, y=y)
    x = jnp.asarray(RNG.normal(size=ld.dim) * 0.5)

    def loc_scale(z):
        p = ld.unravel(z)
        loc = jnp.tanh(X @ p["W1"] + p["b1"]) @ p["W2"]
        return loc, jnp.exp(p["s"])  # s is unconstrained: log of the HalfNormal site

    loc, sig = loc_scale(x)
    if curvature == "ggn":
        Jl = jax.jacfwd(lambda z: loc_scale(z)[0])(x)  # (N, 2, D)
        Js = jax.jacfwd(lambda z: loc_scale(z)[1])(x)  # (D,)
        c = jnp.einsum("nkd,nke->de", Jl, Jl) / sig**2 + 2 * N * 2 * jnp.outer(Js, Js) / sig**2
    else:
        g = jax.jacrev(lambda z: dist.Normal(*loc_scale(z)).log_prob(y))(x).reshape(-1, ld.dim)
        c = g.T @ g
    ref = c + _prior_hessian(ld, x)
    full, seen = _fit(ld, x, curvature, "full")
    dg, seen_d = _fit(ld, x, curvature, "diag")
    assert seen == [True] and seen_d == [True]
    np.testing.assert_allclose(full, ref, **_tol(ref))
    np.testing.assert_allclose(dg, jnp.diag(ref), **_tol(ref))


@pytest.mark.parametrize("kind", ["tied", "mix"])
def test_inexact_layers_take_the_generic_path(kind):
    """W1 also used outside its layer, or rows of the layer mixed across data: layers_exact is
    False at the point and the result is still the exact GGN (the generic path)."""
    ld = pp.log_density(_mlp(True, kind), X, y=Y)
    x = jnp.asarray(RNG.normal(size=ld.dim) * 0.5)
    ref = _explicit_mlp(ld, x, "ggn", kind)
    dg, seen = _fit(ld, x, "ggn", "diag")
    assert seen == [False]
    np.testing.assert_allclose(dg, jnp.diag(ref), **_tol(ref))
    full, seen = _fit(ld, x, "ggn", "full")
    assert seen == [False]
    np.testing.assert_allclose(full, ref, **_tol(ref))


def test_shared_weight_takes_the_generic_path():
    """One site marked twice (a weight shared by two layers): no layer formula, the generic path."""

    def model(X, y=None):
        W = numpyro.sample("W", dist.Normal(0.0, 1.0).expand([3, 3]).to_event(2))
        V = numpyro.sample("V", dist.Normal(0.0, 1.0).expand([3, K]).to_event(2))
        h = jnp.tanh(pp.laplace.dense(jnp.tanh(pp.laplace.dense(X, W, "W")), W, "W"))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=pp.laplace.dense(h, V, "V")), obs=y)

    ld = pp.log_density(model, X, y=Y)
    x = jnp.asarray(RNG.normal(size=ld.dim) * 0.5)

    def logits(z):
        p = ld.unravel(z)
        return jnp.tanh(jnp.tanh(X @ p["W"]) @ p["W"]) @ p["V"]

    J = jax.jacfwd(logits)(x)
    p = jax.nn.softmax(logits(x), -1)
    H = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]
    ref = jnp.einsum("nkd,nkl,nle->de", J, H, J) + _prior_hessian(ld, x)
    dg, seen = _fit(ld, x, "ggn", "diag")
    assert seen == []
    np.testing.assert_allclose(dg, jnp.diag(ref), **_tol(ref))
