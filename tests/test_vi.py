"""Mean-field VI against the analytic mean-field optimum; failures are loud."""

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import ppl_posteriors as pp

OPT = optax.adam(2e-2)


def _correlated_gaussian():
    mean = np.array([1.0, -2.0, 0.5])
    sd = np.array([1.0, 2.0, 0.5])
    corr = np.array([[1.0, 0.8, -0.3], [0.8, 1.0, 0.2], [-0.3, 0.2, 1.0]])
    cov = corr * np.outer(sd, sd)

    def m():
        numpyro.sample("x", dist.MultivariateNormal(mean, cov))

    return m, mean, cov


@pytest.mark.parametrize("estimator", ["stl", "pathwise"])
def test_meanfield_optimum_of_correlated_gaussian(estimator):
    """Reverse-KL mean-field optimum of N(m, Σ): q_i = N(m_i, 1 / (Σ⁻¹)_ii) (Bishop 2006, §10.1.2)."""
    m, mean, cov = _correlated_gaussian()
    opt_sd = 1.0 / np.sqrt(np.diag(np.linalg.inv(cov)))
    cfg = pp.MeanFieldVI(num_steps=20000, num_particles=16, estimator=estimator, num_samples=20000)
    idata = pp.infer(m, method=cfg, rng_key=jax.random.key(0))
    ap = idata.approximation
    # averaged adam(1e-2) iterates with 16-particle gradients end within a few % of an sd
    np.testing.assert_allclose((ap["mean"].values - mean) / opt_sd, 0.0, atol=0.06)
    np.testing.assert_allclose(ap["scale"].values, opt_sd, rtol=0.03)
    # the draws come from that guide
    x = idata.posterior["x"].values.reshape(-1, 3)
    np.testing.assert_allclose(x.std(0), ap["scale"].values, rtol=0.03)
    # the mean-field sd is the conditional sd, smaller than the marginal sd
    assert np.all(ap["scale"].values < np.sqrt(np.diag(cov)))
    assert ap["elbo"].shape == (20000,)
    assert idata.attrs["status"] in ("success", "poor_approximation")


def test_stl_has_lower_gradient_variance_at_the_optimum():
    """At q = p (a Gaussian target in the mean-field family) the STL gradient is exactly zero."""
    from ppl_posteriors.vi import MeanFieldParams, meanfield, objectives, surrogate

    loc = jax.numpy.array([0.3, -1.0])
    scale = jax.numpy.array([0.5, 2.0])

    def logp(z):
        return dist.Normal(loc, scale).log_prob(z).sum()

    params = MeanFieldParams(loc, jax.numpy.log(scale))
    guide, elbo = meanfield.guide(), objectives.resolve("elbo")
    keys = jax.random.split(jax.random.key(0), 50)

    def grads(est):
        f = lambda p, k: surrogate(guide, elbo, est, p, k, logp, 1)[0]
        return jax.vmap(lambda k: jax.grad(f)(params, k))(keys)

    g_stl, g_pw = grads("stl"), grads("pathwise")
    np.testing.assert_allclose(g_stl.loc, 0.0, atol=1e-12)
    np.testing.assert_allclose(g_stl.log_scale, 0.0, atol=1e-12)
    assert float(np.var(g_pw.loc)) > 0.1


def test_fullrank_recovers_a_correlated_gaussian_exactly():
    """A full-rank q contains the target, so the optimum of every objective is q = p; with
    STL the gradient noise vanishes there, so the fit is exact up to optimiser tolerance."""
    m, mean, cov = _correlated_gaussian()
    cfg = pp.FullRankVI(num_steps=4000, estimator="stl", optimizer=OPT, num_samples=100)
    idata = pp.infer(m, method=cfg, rng_key=1, progress=False)
    ap = idata.approximation
    L = ap["scale_tril"].values
    np.testing.assert_allclose(ap["mean"].values, mean, atol=0.01)
    np.testing.assert_allclose(L @ L.T, cov, atol=0.02 * cov.max())
    assert idata.attrs["psis_khat"] < 0.2 and idata.attrs["status"] == "success"
    assert idata.attrs["objective"] == "elbo" and idata.attrs["estimator"] == "stl"
    # the ELBO of q = p is log Z = 0 (a normalised target)
    assert abs(idata.attrs["elbo_final"]) < 1e-3
    # the stored guide is reloadable and draws from N(mean, L Lᵀ)
    again = pp.sample_approximation(idata, rng_key=0, num_samples=20000)
    x = again.unconstrained_posterior["x"].values.reshape(-1, 3)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.06 * cov.max())


def test_lowrank_recovers_a_factor_covariance():
    """Target covariance F Fᵀ + diag(d²) with rank(F) = 1: in the rank-1 family, so q = p."""
    F = np.array([[1.0], [-0.8], [0.5], [0.3]])
    d = np.array([0.5, 0.4, 0.3, 0.6])
    cov = F @ F.T + np.diag(d**2)
    mean = np.array([0.5, -1.0, 2.0, 0.0])

    def m():
        numpyro.sample("x", dist.MultivariateNormal(mean, cov))

    cfg = pp.LowRankVI(rank=1, num_steps=5000, estimator="stl", optimizer=OPT, num_samples=100)
    idata = pp.infer(m, method=cfg, rng_key=2, progress=False)
    ap = idata.approximation
    f, dd = ap["cov_factor"].values, ap["diag"].values
    assert f.shape == (4, 1)
    np.testing.assert_allclose(ap["mean"].values, mean, atol=0.01)
    np.testing.assert_allclose(f @ f.T + np.diag(dd**2), cov, atol=0.02)
    assert idata.attrs["psis_khat"] < 0.2


def test_early_stopping_records_the_steps_taken():
    m, mean, cov = _correlated_gaussian()
    cfg = pp.FullRankVI(num_steps=20000, estimator="stl", optimizer=OPT, max_steps_without_improvement=500,
                        clip_norm=100.0, num_samples=100)
    idata = pp.infer(m, method=cfg, rng_key=3, progress=False)
    n = idata.attrs["num_steps_run"]
    assert 500 < n < 20000 and idata.attrs["stopped_early"] == 1
    assert idata.approximation["elbo"].shape == (n,) and np.all(np.isfinite(idata.approximation["elbo"]))
    assert idata.attrs["status"] == "success"
    np.testing.assert_allclose(idata.approximation["mean"].values, mean, atol=0.05)


def test_objectives_reach_the_same_optimum_when_q_contains_p():
    """Every divergence is zero at q = p, so IWAE, Rényi and forward KL fits all return the target."""
    m, mean, cov = _correlated_gaussian()
    for objective, estimator in [("iwae", "dreg"), ("renyi", "dreg"), ("forward_kl", "dreg")]:
        cfg = pp.FullRankVI(num_steps=3000, objective=objective, estimator=estimator, num_importance=8,
                            optimizer=OPT, init_scale=1.0, num_samples=100)
        idata = pp.infer(m, method=cfg, rng_key=4, progress=False)
        ap = idata.approximation
        L = ap["scale_tril"].values
        np.testing.assert_allclose(ap["mean"].values, mean, atol=0.05, err_msg=objective)
        np.testing.assert_allclose(L @ L.T, cov, atol=0.1 * cov.max(), err_msg=objective)
        assert ap[objective].shape == (3000,)


def test_non_finite_elbo_raises():
    def m():
        numpyro.sample("x", dist.Normal(0.0, 1e-3))

    bad = pp.MeanFieldVI(num_steps=200, optimizer=optax.sgd(1e6))
    with pytest.raises(pp.NumericalError, match="non-finite") as e:
        pp.infer(m, method=bad)
    assert e.value.status is pp.Status.NON_FINITE


def test_not_converged_warns():
    m, _, _ = _correlated_gaussian()
    with pytest.warns(pp.NumericalWarning, match="still rose"):
        idata = pp.infer(m, method=pp.MeanFieldVI(num_steps=100, optimizer=optax.adam(1e-3)))
    assert idata.attrs["status"] == "not_converged"


def test_vi_config_errors():
    with pytest.raises(pp.ConfigError, match="optax.GradientTransformation"):
        pp.MeanFieldVI(optimizer="adam")
    with pytest.raises(pp.ConfigError, match="init_scale"):
        pp.MeanFieldVI(init_scale=-1.0)
    with pytest.raises(pp.ConfigError, match="did you mean 'num_steps'"):
        pp.MeanFieldVI(num_step=3)
    with pytest.raises(pp.ConfigError, match="rank"):
        pp.LowRankVI(rank=0)
    with pytest.raises(pp.ConfigError, match="clip_norm"):
        pp.FullRankVI(clip_norm=-1.0)
    with pytest.raises(pp.ConfigError, match="max_steps_without_improvement"):
        pp.FullRankVI(max_steps_without_improvement=0)
