"""Every MCMC sampler on a Gaussian posterior, with MCSE-scaled tolerances; SMC on conjugate
linear regression (log evidence and posterior).

The target: x ~ MVN(0, Σ0) (correlated, 3-d), y ~ N(x, I) observed, so the posterior is
N(μ, Σ) with Σ = (Σ0⁻¹ + I)⁻¹ and μ = Σ y; the prior is Gaussian, so elliptical slice
sampling applies too. Means and sds of every coordinate must be within 5 Monte Carlo
standard errors (``az.mcse``, which accounts for autocorrelation) of the exact values.
"""

import re
import warnings

import arviz as az
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy.stats import multivariate_normal

import ppl_posteriors as pp

S0 = 4.0 * np.array([[1.0, 0.6, 0.2], [0.6, 2.0, -0.5], [0.2, -0.5, 0.5]])
Y = np.array([1.0, -2.0, 0.5])
COV = np.linalg.inv(np.linalg.inv(S0) + np.eye(3))
MEAN = COV @ Y

ARVIZ_STATS = {"diverging", "lp", "energy", "step_size", "tree_depth", "n_steps", "acceptance_rate"}


def gaussian(y=None):
    x = numpyro.sample("x", dist.MultivariateNormal(np.zeros(3), S0))
    numpyro.sample("y", dist.Normal(x, 1.0).to_event(1), obs=y)


SAMPLERS = {
    "nuts": pp.NUTS(num_chains=2, num_warmup=200, num_samples=300),
    "hmc": pp.HMC(num_chains=2, num_warmup=200, num_samples=300, num_integration_steps=8),
    "hmc_trajectory": pp.HMC(num_chains=2, num_warmup=200, num_samples=300, trajectory_length=2.0),
    "mala": pp.MALA(num_chains=2, num_warmup=300, num_samples=1000),
    "mala_dense": pp.MALA(num_chains=2, num_warmup=300, num_samples=1000, dense_mass=True),
    "barker": pp.Barker(num_chains=2, num_warmup=300, num_samples=1500),
    "barker_dense": pp.Barker(num_chains=2, num_warmup=300, num_samples=1500, dense_mass=True),
    "rmh": pp.RMH(num_chains=2, num_warmup=500, num_samples=2000, dense_mass=True),
    "mclmc": pp.MCLMC(num_chains=2, num_warmup=300, num_samples=600),
    "adjusted_mclmc": pp.AdjustedMCLMC(num_chains=2, num_warmup=300, num_samples=600),
    "elliptical_slice": pp.EllipticalSlice(num_chains=2, num_warmup=100, num_samples=800),
    "chees_hmc": pp.ChEESHMC(num_chains=8, num_warmup=200, num_samples=150),
    "slice": pp.Slice(num_chains=2, num_warmup=200, num_samples=600),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_on_correlated_gaussian(name):
    cfg = SAMPLERS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NumericalWarning)  # short runs: ESS warnings
        idata = pp.infer(gaussian, y=Y, method=cfg, rng_key=0, progress=False)
    assert idata.attrs["method"] == type(cfg).method_name
    ss = idata.sample_stats
    assert set(ss.data_vars) <= ARVIZ_STATS and "lp" in ss
    for v in ss.data_vars.values():
        assert v.dims == ("chain", "draw")
    if "diverging" in ss:
        assert ss["diverging"].dtype == bool and int(ss["diverging"].sum()) == 0
    if "acceptance_rate" in ss:
        assert np.all((ss["acceptance_rate"] >= 0) & (ss["acceptance_rate"] <= 1))
    # lp is the log density of the draw (unconstrained space)
    ld = pp.log_density(gaussian, y=Y)
    z = {"x": idata.posterior["x"].values[0, 7]}
    np.testing.assert_allclose(ld.logdensity_fn(z), ss["lp"].values[0, 7], rtol=1e-4)

    x = idata.posterior["x"]
    m_se = az.mcse(idata, var_names=["x"], method="mean")["x"].values
    s_se = az.mcse(idata, var_names=["x"], method="sd")["x"].values
    flat = x.values.reshape(-1, 3)
    mean, sd = flat.mean(0), flat.std(0, ddof=1)
    assert np.all(np.abs(mean - MEAN) < 5 * m_se), (name, mean, MEAN, m_se)
    assert np.all(np.abs(sd - np.sqrt(np.diag(COV))) < 5 * s_se), (name, sd, np.sqrt(np.diag(COV)), s_se)
    # the MCSE is small enough for the comparison to mean something
    assert np.all(m_se < 0.15 * np.sqrt(np.diag(COV))), (name, m_se)


def _blr_data():
    rng = np.random.default_rng(0)
    n, k = 30, 3
    X = rng.normal(size=(n, k))
    y = X @ np.array([1.0, -0.5, 0.3]) + 0.5 * rng.normal(size=n)
    return X, y


def blr(X, y=None):
    b = numpyro.sample("b", dist.Normal(0.0, 2.0).expand([X.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Normal(X @ b, 0.5), obs=y)


@pytest.mark.parametrize("kernel", ["hmc", "rmh"])
def test_smc_log_evidence_of_conjugate_linear_regression(kernel):
    """log p(y) = log N(y; 0, σ² I + τ² X Xᵀ) exactly; 5 independent runs of SMC (one compiled
    program) must agree with it within 4 standard errors of their mean, allowing the
    downward bias E[log Ẑ] ≈ log Z - Var/2 of the (unbiased in Z) estimator."""
    X, y = _blr_data()
    exact = multivariate_normal(np.zeros(len(y)), 0.25 * np.eye(len(y)) + 4.0 * X @ X.T).logpdf(y)
    cfg = pp.SMC(num_particles=1000, kernel=kernel)
    runs = [pp.infer(blr, X, y=y, method=cfg, rng_key=k, progress=False) for k in range(5)]
    log_z = np.array([r.attrs["log_marginal_likelihood"] for r in runs])
    sd = log_z.std(ddof=1)
    assert 0 < sd < 0.5, log_z
    assert abs(log_z.mean() - exact) < 4 * sd / np.sqrt(len(log_z)) + 0.5 * sd**2, (log_z, exact)
    assert all(r.attrs["final_tempering_param"] == 1.0 and r.attrs["status"] == "success" for r in runs)
    assert runs[1].attrs["cache_hit"] == 1
    # the particles are draws from the exact posterior N(m, C) (MCSE-scaled)
    prec = X.T @ X / 0.25 + np.eye(X.shape[1]) / 4.0
    cov = np.linalg.inv(prec)
    mean = cov @ X.T @ y / 0.25
    b = runs[0].posterior["b"].values.reshape(-1, X.shape[1])
    m_se = az.mcse(runs[0], var_names=["b"], method="mean")["b"].values
    s_se = az.mcse(runs[0], var_names=["b"], method="sd")["b"].values
    assert np.all(np.abs(b.mean(0) - mean) < 5 * m_se), (b.mean(0), mean, m_se)
    assert np.all(np.abs(b.std(0, ddof=1) - np.sqrt(np.diag(cov))) < 5 * s_se)


def test_elliptical_slice_refuses_a_non_gaussian_prior():
    def hier(y=None):
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        x = numpyro.sample("x", dist.Normal(mu, s).expand([3]).to_event(1))
        numpyro.sample("y", dist.Normal(x, 1.0).to_event(1), obs=y)

    with pytest.raises(pp.ModelError, match=r"Gaussian prior.*'s', 'x'"):
        pp.infer(hier, y=Y, method="elliptical_slice", progress=False)


def test_mclmc_needs_two_parameters_and_sampler_options_are_checked():
    def one(y=None):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(x, 1.0), obs=y)

    with pytest.raises(pp.ModelError, match="at least 2"):
        pp.infer(one, y=0.3, method=pp.MCLMC(num_warmup=20, num_samples=20), progress=False)
    with pytest.raises(pp.ConfigError, match="did you mean 'trajectory_length'"):
        pp.HMC(trajectory_lenght=2.0)
    with pytest.raises(pp.ConfigError, match="kernel"):
        pp.SMC(kernel="nuts")
    with pytest.raises(pp.ConfigError, match="num_warmup"):
        pp.MCLMC(num_warmup=5)
    assert pp.MALA().target_accept == 0.574 and pp.RMH().target_accept is None  # None: the optimum for the dimension


def test_elliptical_slice_second_call_neither_traces_nor_compiles():
    """tests/test_runtime.py's model has a HalfNormal scale, which elliptical slice refuses;
    the same check on a model with a Gaussian prior."""
    calls = []

    def m(x, y=None):
        calls.append(1)
        b = numpyro.sample("b", dist.Normal(0.0, 2.0).expand([x.shape[1]]).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(x @ b, 0.5), obs=y)

    X, y = _blr_data()
    cfg = pp.EllipticalSlice(num_chains=2, num_warmup=20, num_samples=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NumericalWarning)  # 50 draws: ESS warnings
        first = pp.infer(m, X, y=y, method=cfg, rng_key=0, progress=False)
        n = len(calls)
        again = pp.infer(m, X, y=y + 1.0, method=pp.EllipticalSlice(**cfg.__dict__), rng_key=1, progress=False)
    assert len(calls) == n and first.attrs["cache_hit"] == 0
    assert again.attrs["cache_hit"] == 1 and again.attrs["compile_time"] == 0.0
    assert not np.allclose(first.posterior["b"].values, again.posterior["b"].values)


@pytest.mark.parametrize("cfg", [pp.MCLMC(num_chains=2, num_warmup=200, num_samples=200),
                                 pp.ChEESHMC(num_chains=4, num_warmup=200, num_samples=200)],
                         ids=["mclmc", "chees_hmc"])
def test_tuning_before_the_loop_advances_the_progress_bar(cfg, monkeypatch, capfd):
    # BlackJAX's tuners run their own scans; a callback per tuning step moves the bar
    # through the tuning phase before the sampling (plain lines at 25 % steps)
    monkeypatch.setenv("PPL_POSTERIORS_PROGRESS", "plain")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NumericalWarning)
        pp.infer(gaussian, y=Y, method=cfg, rng_key=0)
    err = capfd.readouterr().err
    name, tuning = re.escape(cfg.display_name), cfg.phases()[0][0]
    assert re.search(rf"{name}: 1\d\d/400 \(2\d%, {tuning}\)", err), err  # a line per 8 steps: 104/400
    assert f"{cfg.display_name}: 200/400 (50%, {tuning})" in err, err
    assert f"{cfg.display_name}: 400/400 (100%, sampling)" in err, err
