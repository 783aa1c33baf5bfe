"""The dense GGN's two forward-mode paths, the symmetric Gram and the large-d checks (x64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl_posteriors as pp
import ppl_posteriors.laplace.curvature as curv
from ppl_posteriors.laplace.fit import _extreme_eigenvalues, fit_approximation


def _mlp(X, y=None):
    W1 = numpyro.sample("W1", dist.Normal(0.0, 1.0).expand([3, 5]).to_event(2))
    b1 = numpyro.sample("b1", dist.Normal(0.0, 1.0).expand([5]).to_event(1))
    W2 = numpyro.sample("W2", dist.Normal(0.0, 1.0).expand([5, 4]).to_event(2))
    logits = jnp.tanh(X @ W1 + b1) @ W2
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Categorical(logits=logits), obs=y)


def _explicit_ggn(ld, X, x):
    """Σ_n J_nᵀ (diag p_n - p_n p_nᵀ) J_n + I with J_n = ∂logits_n/∂θ by jax.jacrev, per datum."""
    def logits(x, xi):
        p = ld.unravel(x)
        return (jnp.tanh(xi @ p["W1"] + p["b1"]) @ p["W2"])

    J = jax.vmap(jax.jacrev(logits), (None, 0))(x, X)  # (N, C, D)
    p = jax.nn.softmax(jax.vmap(logits, (None, 0))(x, X), -1)
    H = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]
    return jnp.einsum("ncd,nce,nef->df", J, H, J) + jnp.eye(x.shape[0])


@pytest.mark.parametrize("path", ["ggnvp", "gram"])
def test_dense_ggn_paths_equal_explicit(monkeypatch, path):
    """Both ways of forming the dense GGN (columns Jᵀ L Lᵀ J e_j, or the Gram of Lᵀ J e_j) equal the
    explicit per-datum Jᵀ H J (1e-10, x64); the cost model is forced each way."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = rng.integers(0, 4, size=40)
    ld = pp.log_density(_mlp, X, y=y)
    x = jnp.asarray(rng.normal(size=ld.dim) * 0.5)
    monkeypatch.setattr(curv, "_dot_flops", (lambda j: 0) if path == "ggnvp" else (lambda j: 10**15))
    cfg = pp.Laplace(curvature="ggn", structure="full")
    approx, checks, _ = jax.jit(lambda x: fit_approximation(cfg, ld, x, jax.random.key(0), "ggn", "full"))(x)
    ref = _explicit_ggn(ld, jnp.asarray(X), x)
    np.testing.assert_allclose(approx.precision, ref, rtol=1e-10, atol=1e-10 * float(jnp.max(jnp.abs(ref))))
    np.testing.assert_array_equal(approx.precision, approx.precision.T)
    assert bool(checks["pd"])


def test_dot_flops_counts_matmuls():
    a, b = jnp.ones((7, 3)), jnp.ones((3, 5))
    jx = jax.make_jaxpr(lambda a, b: jax.jit(lambda a, b: a @ b)(a, b) + 1.0)(a, b).jaxpr  # nested in a pjit
    assert curv._dot_flops(jx) == 2 * 7 * 5 * 3
    jx = jax.make_jaxpr(lambda a: jax.lax.scan(lambda c, _: (c, a @ b), 0.0, None, length=4)[1])(a).jaxpr
    assert curv._dot_flops(jx) == 4 * 2 * 7 * 5 * 3


def test_gram_is_exact_and_symmetric():
    a = jax.random.normal(jax.random.key(1), (601, 37))  # d >= 512: 4 x 4 blocks, uneven split
    g = curv.gram(a)
    np.testing.assert_allclose(g, a @ a.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(g, g.T)


def test_large_d_checks_estimate_extreme_eigenvalues():
    """d > 512: Lanczos estimates of the extreme eigenvalues of a positive definite precision
    (well separated: accurate to 1e-8), and the exact smallest one when the Cholesky fails."""
    d = 600
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(2), (d, d)))
    ev = jnp.concatenate([jnp.array([0.01]), jnp.linspace(1.0, 2.0, d - 2), jnp.array([50.0])])
    p = (q * ev) @ q.T
    p = 0.5 * (p + p.T)
    chol = jnp.linalg.cholesky(p)
    lo, hi = jax.jit(_extreme_eigenvalues)(p, chol, jnp.asarray(True), jax.random.key(3))
    np.testing.assert_allclose([lo, hi], [0.01, 50.0], rtol=1e-8)
    bad = p - 0.02 * jnp.eye(d)  # smallest eigenvalue -0.01: the Cholesky fails
    chol_bad = jnp.linalg.cholesky(bad)
    assert not bool(jnp.all(jnp.isfinite(chol_bad)))
    lo, hi = jax.jit(_extreme_eigenvalues)(bad, chol_bad, jnp.asarray(False), jax.random.key(3))
    np.testing.assert_allclose([lo, hi], [-0.01, 49.98], rtol=1e-8)
