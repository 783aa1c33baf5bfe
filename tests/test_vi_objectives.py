"""VI objectives and gradient estimators against exact values and exact gradients.

Target: an unnormalised 1-d Gaussian p(z) = Z · N(z; m_p, s_p²); guide: a mean-field
Gaussian q = N(μ, σ²) away from p. Exact expectations of the K-sample objective
estimates come from Gauss-Hermite quadrature over (ε_1, ..., ε_K); estimators must
agree with the exact gradient to within 4.5 Monte Carlo standard errors (each test
compares two coordinates, so a correct estimator fails with probability < 1e-4).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss

import ppl_posteriors as pp
from ppl_posteriors.vi import meanfield
from ppl_posteriors.vi.estimators import surrogate
from ppl_posteriors.vi.objectives import estimate, power_mean, resolve

M_P, S_P, LOG_Z = 0.5, 0.8, 0.7
PARAMS = meanfield.MeanFieldParams(jnp.array([0.1]), jnp.array([0.0]))  # q = N(0.1, 1)
GUIDE = meanfield.guide()


def logp(z):
    return LOG_Z - 0.5 * ((z[0] - M_P) / S_P) ** 2 - math.log(S_P) - 0.5 * math.log(2 * math.pi)


def _log_w(params, eps):
    """log w at z = μ + σ ε for eps (..., K) (reparametrised, exact in params)."""
    z = params.loc[0] + jnp.exp(params.log_scale[0]) * eps
    logq = meanfield.log_prob(params, z[..., None])
    return jax.vmap(logp)(z.reshape(-1, 1)).reshape(z.shape) - logq


def _quadrature(k, n=32):
    x, w = hermegauss(n)
    w = w / w.sum()
    grids = np.meshgrid(*([x] * k), indexing="ij")
    weights = np.prod(np.meshgrid(*([w] * k), indexing="ij"), axis=0)
    return jnp.asarray(np.stack([g.ravel() for g in grids], -1)), jnp.asarray(weights.ravel())


def exact_expected_objective(params, objective, k):
    """E[objective estimate with one group of K draws], by K-d Gauss-Hermite quadrature."""
    eps, w = _quadrature(k)
    return jnp.sum(w * jax.vmap(lambda e: estimate(objective, _log_w(params, e)[None]))(eps))


def _estimates(objective, estimator, s, k, n=10000, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)

    def one(key):
        return jax.grad(lambda p: surrogate(GUIDE, objective, estimator, p, key, logp, s, k)[0])(PARAMS)

    g = jax.jit(jax.vmap(one))(keys)
    return np.stack([np.asarray(g.loc[:, 0]), np.asarray(g.log_scale[:, 0])], -1)


CASES = [
    ("elbo", "pathwise"), ("elbo", "stl"), ("elbo", "score"),
    ("iwae", "pathwise"), ("iwae", "dreg"), ("iwae", "score"),
    ("renyi", "pathwise"), ("renyi", "dreg"), ("renyi", "score"),
    ("chi2", "pathwise"), ("chi2", "dreg"), ("chi2", "score"),
]


@pytest.mark.parametrize("name,estimator", CASES)
def test_estimator_is_unbiased_for_the_exact_gradient(name, estimator):
    objective = resolve(name, alpha=0.5)
    k = 2 if objective.grouped else 1
    sign = -1.0 if objective.maximise else 1.0
    exact = jax.grad(lambda p: sign * exact_expected_objective(p, objective, k))(PARAMS)
    exact = np.array([exact.loc[0], exact.log_scale[0]])
    g = _estimates(objective, estimator, s=2, k=k)
    mean, se = g.mean(0), g.std(0) / np.sqrt(len(g))
    assert np.all(np.abs(mean - exact) < 4.5 * se + 1e-6), (mean, exact, se)
    assert np.all(se < 0.05)  # enough estimates to mean something


def test_stl_and_dreg_vanish_when_q_is_p():
    """q = p: log w is constant, so STL (K=1) and DReG (any K) are exactly zero."""
    params = meanfield.MeanFieldParams(jnp.array([M_P]), jnp.array([math.log(S_P)]))
    for name, est in [("elbo", "stl"), ("iwae", "dreg"), ("renyi", "dreg"), ("forward_kl", "dreg")]:
        obj = resolve(name, alpha=0.3)
        g = jax.jit(jax.grad(lambda p, obj=obj, est=est: surrogate(GUIDE, obj, est, p, jax.random.key(1), logp, 3, 4)[0]))(params)
        np.testing.assert_allclose(np.concatenate([g.loc, g.log_scale]), 0.0, atol=1e-5)


def test_forward_kl_dreg_has_the_expectation_of_the_score_gradient():
    """RWS-DReG (Tucker et al. 2019) and the SNIS score gradient have the same mean for every K."""
    obj = resolve("forward_kl")
    a = _estimates(obj, "score", s=1, k=4, seed=1)
    b = _estimates(obj, "dreg", s=1, k=4, seed=2)
    se = np.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
    assert np.all(np.abs(a.mean(0) - b.mean(0)) < 4.5 * se), (a.mean(0), b.mean(0), se)
    # and both point towards the forward-KL gradient -E_p[∇ log q] (large-K limit)
    s_q = 1.0
    exact = -np.array([(M_P - 0.1) / s_q**2, (S_P**2 + (M_P - 0.1) ** 2) / s_q**2 - 1.0])
    big = _estimates(obj, "score", s=1, k=2000, n=200, seed=3).mean(0)
    np.testing.assert_allclose(big, exact, atol=0.03)


# -- values ---------------------------------------------------------------------------

def _analytic():
    m_q, s_q = 0.1, 1.0
    elbo = LOG_Z - (np.log(S_P / s_q) + (s_q**2 + (m_q - M_P) ** 2) / (2 * S_P**2) - 0.5)
    fkl = np.log(s_q / S_P) + (S_P**2 + (M_P - m_q) ** 2) / (2 * s_q**2) - 0.5
    return elbo, fkl


def _reference_bound(beta, n=2_000_000, seed=0):
    """(1/β) log E_q[w^β] by brute-force numpy Monte Carlo (float64) and its MC standard error."""
    rng = np.random.default_rng(seed)
    z = 0.1 + rng.standard_normal(n)
    lw = (LOG_Z - 0.5 * ((z - M_P) / S_P) ** 2 - np.log(S_P)) - (-0.5 * (z - 0.1) ** 2)
    a = np.exp(beta * lw)
    return np.log(a.mean()) / beta, a.std() / np.sqrt(n) / a.mean() / abs(beta)


def _values(name, k, n, alpha=0.5, seed=0):
    obj = resolve(name, alpha=alpha)
    keys = jax.random.split(jax.random.key(seed), n)
    f = jax.jit(jax.vmap(lambda key: surrogate(GUIDE, obj, "score" if name == "forward_kl" else "pathwise",
                                               PARAMS, key, logp, 1, k)[1]))
    return np.asarray(f(keys), dtype=np.float64)


def test_elbo_and_forward_kl_values():
    elbo, fkl = _analytic()
    v = _values("elbo", 1, 20000)
    assert abs(v.mean() - elbo) < 4.5 * v.std() / np.sqrt(len(v))
    v = _values("forward_kl", 4000, 50)  # SNIS bias O(1/K) is far below the MC error
    assert abs(v.mean() - fkl) < 4.5 * v.std() / np.sqrt(len(v)) + 2e-3


@pytest.mark.parametrize("name,alpha,beta", [("iwae", 0.5, 1.0), ("renyi", 0.5, 0.5), ("renyi", -0.5, 1.5), ("chi2", 0.5, 2.0)])
def test_bound_values_against_brute_force_monte_carlo(name, alpha, beta):
    # K = 2: the expectation of the estimate, by quadrature, against our estimator's mean
    obj = resolve(name, alpha=alpha)
    assert obj.beta == beta
    v = _values(name, 2, 20000, alpha=alpha)
    exact2 = float(exact_expected_objective(PARAMS, obj, 2))
    assert abs(v.mean() - exact2) < 4.5 * v.std() / np.sqrt(len(v))
    # large K: the estimate approaches (1/β) log E_q[w^β]; brute-force float64 reference
    ref, ref_se = _reference_bound(beta)
    v = _values(name, 20000, 20, alpha=alpha, seed=1)
    bias = 0.05 / 20000 * 50  # O(var/K) finite-K bias, generous
    assert abs(v.mean() - ref) < 4.5 * np.hypot(v.std() / np.sqrt(len(v)), ref_se) + bias
    # ordering of the bounds: ELBO <= VR(α>0) <= log Z <= CUBO
    if obj.maximise:
        assert ref <= LOG_Z + 1e-3 and ref >= _analytic()[0] - 1e-3
    else:
        assert ref >= LOG_Z - 1e-3


def test_power_mean_limits():
    lw = jnp.array([[0.3, -1.2, 2.0]])
    np.testing.assert_allclose(power_mean(lw, 0.0), lw.mean(), rtol=1e-6)
    np.testing.assert_allclose(power_mean(lw, 1e-4), lw.mean(), rtol=1e-3)
    np.testing.assert_allclose(power_mean(lw, 1.0), np.log(np.exp(lw).mean()), rtol=1e-6)


def test_objective_and_estimator_errors():
    with pytest.raises(pp.ConfigError, match="did you mean 'iwae'"):
        pp.FullRankVI(objective="iwa")
    with pytest.raises(pp.ConfigError, match="forward_kl.*'score' or 'dreg'"):
        pp.FullRankVI(objective="fKL", estimator="pathwise")
    with pytest.raises(pp.ConfigError, match="biased for K-sample"):
        pp.MeanFieldVI(objective="iwae", estimator="stl")
    with pytest.raises(pp.ConfigError, match="DReG is sticking the landing"):
        pp.MeanFieldVI(objective="elbo", estimator="dreg")
    with pytest.raises(pp.ConfigError, match="num_particles >= 2"):
        pp.MeanFieldVI(estimator="score")
    with pytest.raises(pp.ConfigError, match="num_importance >= 2"):
        pp.MeanFieldVI(objective="IW", estimator="score", num_importance=1)
    with pytest.raises(pp.ConfigError, match="alpha=1 is the ELBO"):
        pp.MeanFieldVI(objective="alpha", alpha=1.0)
    with pytest.raises(pp.ConfigError, match="did you mean 'dreg'"):
        pp.MeanFieldVI(objective="iwae", estimator="dre")
    # sbi's names are aliases
    assert pp.MeanFieldVI(objective="rKL").resolved_objective().name == "elbo"
    assert pp.MeanFieldVI(objective="alpha", alpha=0.2).resolved_objective().beta == pytest.approx(0.8)
    assert pp.MeanFieldVI(objective="fKL").resolved_estimator() == "score"
