"""The front door: method registry, configs, keys, every method on an analytic posterior,
and no recompilation as the number of steps grows."""

import arviz as az
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl_posteriors as pp

Y = np.array([0.3, 1.1, -0.4, 0.8, 1.5])
PRIOR_MU, PRIOR_SD, NOISE = 0.5, 2.0, 1.0


def normal_normal(y=None):
    mu = numpyro.sample("mu", dist.Normal(PRIOR_MU, PRIOR_SD))
    with numpyro.plate("data", 5):
        numpyro.sample("y", dist.Normal(mu, NOISE), obs=y)


def posterior_normal_normal():
    prec = 1 / PRIOR_SD**2 + len(Y) / NOISE**2
    return (PRIOR_MU / PRIOR_SD**2 + Y.sum() / NOISE**2) / prec, prec**-0.5


def test_methods_lists_every_name_with_a_line():
    table = pp.methods()
    assert {"nuts", "laplace", "meanfield_vi"} <= set(table)
    assert all(isinstance(v, str) and v and "\n" not in v for v in table.values())
    assert "nuts" in repr(table) and "\n" in repr(table)


def test_unknown_method_and_option():
    with pytest.raises(pp.ConfigError, match="unknown method 'nut'.*did you mean 'nuts'"):
        pp.infer(normal_normal, y=Y, method="nut")
    with pytest.raises(pp.ConfigError, match="registered name"):
        pp.infer(normal_normal, y=Y, method=42)
    with pytest.raises(pp.ConfigError, match="keyword options only"):
        pp.NUTS(4)


@pytest.mark.parametrize("name", sorted(pp.methods()))
def test_every_method_on_normal_normal(name):
    """Protocol: every registered method returns the installed ArviZ's result type
    (InferenceData or DataTree) with the common schema and the right answer on a conjugate
    model (exact for Laplace, MCSE/optimisation-scaled otherwise)."""
    from ppl_posteriors.results import compat

    if name in ("mclmc", "adjusted_mclmc"):  # the velocity lives on the unit sphere: d >= 2
        with pytest.raises(pp.ModelError, match="at least 2 unconstrained parameters.*has 1"):
            pp.infer(normal_normal, y=Y, method=name, rng_key=jax.random.key(11))
        return
    idata = pp.infer(normal_normal, y=Y, method=name, rng_key=jax.random.key(11))
    assert isinstance(idata, compat.RESULT_TYPE)
    for group in ("posterior", "sample_stats", "log_likelihood", "observed_data"):
        assert group in compat.group_names(idata)
    mean, sd = posterior_normal_normal()
    mu = idata.posterior["mu"]
    assert mu.dims == ("chain", "draw")
    assert idata.log_likelihood["y"].dims[2:] == ("data",)
    assert idata.attrs["method"] == name and idata.attrs["status"] == "success"
    ap = compat.get_group(idata, "approximation") if "approximation" in compat.group_names(idata) else None
    if ap is not None and "mean" in ap:  # Gaussian approximations; a flow is judged by its draws below
        fitted_sd = (ap["precision"].values[0, 0] ** -0.5 if "precision" in ap else ap["scale"].values[0])
        tol = 1e-8 if name == "laplace" else 0.02
        np.testing.assert_allclose(ap["mean"].values[0], mean, rtol=tol, atol=tol * sd)
        np.testing.assert_allclose(fitted_sd, sd, rtol=tol)
    m_se = float(az.mcse(idata, method="mean")["mu"])
    s_se = float(az.mcse(idata, method="sd")["mu"])
    assert abs(float(mu.mean()) - mean) < 5 * m_se + 0.02 * sd
    assert abs(float(mu.std()) - sd) < 5 * s_se + 0.02 * sd


def test_rng_key_forms_are_equivalent():
    cfg = pp.Laplace(num_samples=5)
    a = pp.infer(normal_normal, y=Y, method=cfg, rng_key=jax.random.key(3))
    b = pp.infer(normal_normal, y=Y, method=cfg, rng_key=jax.random.PRNGKey(3))
    c = pp.infer(normal_normal, y=Y, method=cfg, rng_key=3)
    np.testing.assert_array_equal(a.posterior["mu"], b.posterior["mu"])
    np.testing.assert_array_equal(a.posterior["mu"], c.posterior["mu"])
    f = pp.infer(normal_normal, y=Y, method=cfg, rng_key=np.int64(3))
    np.testing.assert_array_equal(a.posterior["mu"], f.posterior["mu"])
    d = pp.infer(normal_normal, y=Y, method=cfg)  # None -> key 0
    e = pp.infer(normal_normal, y=Y, method=cfg, rng_key=0)
    np.testing.assert_array_equal(d.posterior["mu"], e.posterior["mu"])
    with pytest.raises(pp.ConfigError, match="rng_key"):
        pp.infer(normal_normal, y=Y, method=cfg, rng_key="seed")


def test_model_keywords_pass_through_and_reserved_ones_do_not():
    def m(x, scale=1.0, y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, scale))
        numpyro.sample("y", dist.Normal(mu + x, 1.0), obs=y)

    idata = pp.infer(m, 1.0, scale=0.1, y=5.0, method=pp.Laplace(num_samples=10), progress=False)
    # posterior mean of mu with prior sd 0.1: (5 - 1) / (1 + 100)
    np.testing.assert_allclose(idata.approximation["mean"].values[0], 4.0 / 101, rtol=1e-8)


def _count_traces(method):
    calls = []

    def m(y=None):
        calls.append(1)
        mu = numpyro.sample("mu", dist.Normal(PRIOR_MU, PRIOR_SD))
        with numpyro.plate("data", 5):
            numpyro.sample("y", dist.Normal(mu, NOISE), obs=y)

    pp.infer(m, y=Y, method=method)
    return len(calls)


def test_no_retracing_as_steps_grow():
    """The model is traced a fixed number of times, however many iterations run."""
    assert _count_traces(pp.NUTS(num_chains=2, num_warmup=20, num_samples=20)) == _count_traces(
        pp.NUTS(num_chains=2, num_warmup=200, num_samples=400)
    )
    assert _count_traces(pp.MeanFieldVI(num_steps=100)) == _count_traces(pp.MeanFieldVI(num_steps=1000))
    assert _count_traces(pp.Laplace(num_samples=10)) == _count_traces(pp.Laplace(num_samples=1000))
    assert _count_traces(pp.NUTS(num_chains=2, num_warmup=20, num_samples=20)) < 40


def test_log_density_plugs_into_blackjax():
    import blackjax

    ld = pp.log_density(normal_normal, y=Y)
    nuts = blackjax.nuts(ld.logdensity_fn, step_size=0.5, inverse_mass_matrix=np.ones(ld.dim))
    state = nuts.init(ld.init_position)
    step = jax.jit(nuts.step)
    draws = []
    for key in jax.random.split(jax.random.key(0), 2000):
        state, _ = step(key, state)
        draws.append(float(state.position["mu"]))
    mean, sd = posterior_normal_normal()
    assert abs(np.mean(draws[200:]) - mean) < 0.1 and abs(np.std(draws[200:]) - sd) < 0.1
