"""NUTS against posteriordb reference posteriors (MCSE-scaled tolerances) and analytic posteriors."""

import arviz as az
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from reference import compare_with_reference

import ppl_posteriors as pp


@pytest.mark.parametrize(
    "posterior",
    ["eight_schools-eight_schools_noncentered", "kidiq-kidscore_interaction", "sblrc-blr"],
)
def test_nuts_matches_posteriordb_reference(pdb, posterior):
    data, ref, model = pdb.load(posterior)
    with np.errstate(all="ignore"):
        idata = pp.infer(model, data, method="nuts", rng_key=jax.random.key(2))
    rows, failures = compare_with_reference(idata, ref)
    assert not failures, "\n".join(failures)
    assert idata.attrs["rhat_max"] < 1.01


def test_centred_eight_schools_warns_about_divergences(eight_schools_data):
    from ppl_posteriors.examples import eight_schools_centered

    d = eight_schools_data
    with pytest.warns(pp.NumericalWarning, match="diverged"):
        idata = pp.infer(eight_schools_centered, d["sigma"], y=d["y"], method="nuts", rng_key=jax.random.key(0))
    assert idata.attrs["status"] == "divergences"
    assert idata.attrs["num_divergent"] == int(idata.sample_stats["diverging"].sum()) > 0


def _assert_within_mcse(idata, var, mean, sd, z=5.0):
    m_se = float(az.mcse(idata, var_names=[var], method="mean")[var])
    s_se = float(az.mcse(idata, var_names=[var], method="sd")[var])
    x = idata.posterior[var].values
    assert abs(x.mean() - mean) < z * m_se, (x.mean(), mean, m_se)
    assert abs(x.std(ddof=1) - sd) < z * s_se, (x.std(ddof=1), sd, s_se)


def test_beta_bernoulli_and_gamma_poisson_analytic():
    y = np.array([1, 0, 1, 1, 1, 0, 1, 1, 0, 1], dtype=np.int32)
    k = np.array([3, 5, 2, 4, 6, 1, 3])

    def model(y, k):
        p = numpyro.sample("p", dist.Beta(2.0, 2.0))
        lam = numpyro.sample("lam", dist.Gamma(3.0, 0.5))
        with numpyro.plate("flips", len(y)):
            numpyro.sample("y", dist.Bernoulli(p), obs=y)
        with numpyro.plate("counts", len(k)):
            numpyro.sample("k", dist.Poisson(lam), obs=k)

    idata = pp.infer(model, y, k, method="nuts", rng_key=jax.random.key(3))
    a, b = 2 + y.sum(), 2 + len(y) - y.sum()
    _assert_within_mcse(idata, "p", a / (a + b), np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1))))
    shape, rate = 3.0 + k.sum(), 0.5 + len(k)
    _assert_within_mcse(idata, "lam", shape / rate, np.sqrt(shape) / rate)


def test_sample_stats_and_grad_evals(eight_schools_data):
    from ppl_posteriors.examples import eight_schools_noncentered

    d = eight_schools_data
    cfg = pp.NUTS(num_chains=2, num_warmup=200, num_samples=300, max_tree_depth=6)
    idata = pp.infer(eight_schools_noncentered, d["sigma"], y=d["y"], method=cfg)
    ss = idata.sample_stats
    assert set(ss.data_vars) == {
        "diverging", "lp", "energy", "step_size", "tree_depth", "n_steps", "acceptance_rate"
    }
    for v in ss.data_vars.values():
        assert v.dims == ("chain", "draw") and v.shape == (2, 300)
    assert ss["diverging"].dtype == bool
    assert int(ss["tree_depth"].max()) <= 6 and int(ss["n_steps"].max()) <= 2**6 - 1
    assert np.all((ss["acceptance_rate"] >= 0) & (ss["acceptance_rate"] <= 1))
    # step size is constant within a chain after warmup
    assert np.all(ss["step_size"].values == ss["step_size"].values[:, :1])
    # gradient evaluations: all leapfrog steps, warmup included
    assert idata.attrs["grad_evals"] > int(ss["n_steps"].sum())
    # lp is the log density of the draw (unconstrained, Jacobian included)
    ld = pp.log_density(eight_schools_noncentered, d["sigma"], y=d["y"])
    z = ld.unconstrain({k: idata.posterior[k].values[1, 7] for k in ("mu", "tau", "theta_z")})
    np.testing.assert_allclose(ld.logdensity_fn(z), ss["lp"].values[1, 7], rtol=1e-10)


def test_nuts_config_errors():
    with pytest.raises(pp.ConfigError, match="did you mean 'num_chains'"):
        pp.NUTS(num_chain=4)
    with pytest.raises(pp.ConfigError, match=r"target_accept=1.5.*\(0, 1\)"):
        pp.NUTS(target_accept=1.5)
    with pytest.raises(pp.ConfigError, match="num_warmup"):
        pp.NUTS(num_warmup=-1)
