"""Result schema (InferenceData or DataTree), netcdf round trip of approximations,
cross-method LOO. Nothing here depends on the ArviZ version: groups, LOO numbers and files
go through ``results.compat``."""

import arviz as az
import jax
import numpy as np
import pytest

import ppl_posteriors as pp
from ppl_posteriors.examples import eight_schools_noncentered
from ppl_posteriors.results import compat


@pytest.fixture(scope="module")
def es():
    from ppl_posteriors.datasets import eight_schools

    d = eight_schools()
    return (d["sigma"],), {"y": d["y"]}


@pytest.fixture(scope="module")
def es_results(es):
    args, kwargs = es
    out = {}
    with pytest.warns(pp.NumericalWarning):  # Laplace's k-hat on eight schools
        out["laplace"] = pp.infer(eight_schools_noncentered, *args, method="laplace", **kwargs)
    out["nuts"] = pp.infer(
        eight_schools_noncentered, *args, method=pp.NUTS(num_chains=2, num_warmup=300, num_samples=300),
        rng_key=jax.random.key(5), **kwargs,
    )
    out["meanfield_vi"] = pp.infer(eight_schools_noncentered, *args, method="meanfield_vi", **kwargs)
    return out


@pytest.mark.parametrize("method", ["laplace", "nuts", "meanfield_vi"])
def test_schema(es_results, method):
    idata = es_results[method]
    assert isinstance(idata, compat.RESULT_TYPE)
    for group in ("posterior", "sample_stats", "log_likelihood", "observed_data"):
        assert group in compat.group_names(idata)
    post = idata.posterior
    assert set(post.data_vars) == {"mu", "tau", "theta_z", "theta"}
    assert post["theta"].dims[2:] == ("school",) and post["theta_z"].dims[2:] == ("school",)
    assert list(post["school"].values) == list("ABCDEFGH")
    assert post["mu"].dims == ("chain", "draw")
    assert float(post["tau"].min()) > 0
    # deterministic site recomputed for every draw
    np.testing.assert_allclose(post["theta"], post["mu"] + post["tau"] * post["theta_z"], rtol=1e-12)
    assert idata.log_likelihood["y"].dims[2:] == ("school",)
    assert idata.observed_data["y"].dims == ("school",)
    attrs = idata.attrs
    for key in ("method", "config", "status", "wall_time", "compile_time", "run_time",
                "jax_version", "numpyro_version", "blackjax_version", "arviz_version",
                "ppl_posteriors_version", "jacobian"):
        assert key in attrs, key
    assert attrs["method"] == method
    if method != "nuts":
        assert idata.posterior.sizes["chain"] == 1 and "approximation" in compat.group_names(idata)
        assert np.isfinite(attrs["psis_khat"])


def test_pointwise_loglik_matches_the_model(es_results, es):
    args, kwargs = es
    idata = es_results["nuts"]
    theta = idata.posterior["theta"].values[0, 3]
    expected = -0.5 * ((kwargs["y"] - theta) / args[0]) ** 2 - np.log(args[0] * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0, 3], expected, rtol=1e-10)


def test_loo_and_compare_across_methods(es_results):
    loo = compat.loo(es_results["nuts"])
    assert np.isfinite(loo.elpd) and loo.se > 0 and 0 < loo.p < 10
    ll = es_results["nuts"].log_likelihood["y"].values.reshape(-1, 8)
    lppd = np.sum(np.log(np.mean(np.exp(ll), axis=0)))
    assert loo.elpd == pytest.approx(lppd - loo.p, rel=1e-10)  # p_loo = lppd - elpd_loo
    cmp = az.compare({k: v for k, v in es_results.items()})
    assert set(cmp.index) == set(es_results)


@pytest.mark.parametrize("method", ["laplace", "meanfield_vi"])
def test_netcdf_round_trip_and_resampling(es_results, es, tmp_path, method):
    idata = es_results[method]
    path = tmp_path / f"{method}.nc"
    compat.to_netcdf(idata, path)
    back = az.from_netcdf(str(path))  # what a user would call: the installed ArviZ's type
    assert isinstance(back, compat.RESULT_TYPE)
    assert back.attrs["method"] == method and "approximation" in compat.group_names(back)
    ap = compat.get_group(back, "approximation")
    assert ap.attrs["kind"] in ("gaussian_precision", "gaussian_meanfield")
    assert list(ap["param"].values)[:3] == ["mu", "tau", "theta_z[0]"]
    args, kwargs = es
    # with the model: full posterior incl. deterministic sites, from the stored Gaussian
    again = pp.sample_approximation(
        back, jax.random.key(9), 20000,
        model=eight_schools_noncentered, model_args=args, model_kwargs=kwargs,
    )
    assert again.posterior["theta"].shape == (1, 20000, 8)
    mean = ap["mean"].values
    sd = (np.sqrt(np.diag(np.linalg.inv(ap["precision"].values)))
          if "precision" in ap else ap["scale"].values)
    mu = again.posterior["mu"].values.ravel()
    assert abs(mu.mean() - mean[0]) < 5 * sd[0] / np.sqrt(20000)
    assert abs(mu.std() / sd[0] - 1) < 0.03
    # without the model: unconstrained draws, labelled as such
    raw = pp.sample_approximation(back, jax.random.key(9), 100)
    assert compat.group_names(raw) == ["unconstrained_posterior"]
    np.testing.assert_allclose(raw.unconstrained_posterior["mu"].values, again.posterior["mu"].values[:, :100])
    np.testing.assert_allclose(
        np.log(again.posterior["tau"].values[:, :100]), raw.unconstrained_posterior["tau"].values, rtol=1e-10
    )
    if method == "meanfield_vi":
        assert ap["elbo"].dims == ("step",) and ap.sizes["step"] == 5000


def test_resampling_errors(es_results, es):
    with pytest.raises(pp.ConfigError, match="no 'approximation' group"):
        pp.sample_approximation(es_results["nuts"], 0, 10)

    def other(sigma, y=None):
        import numpyro
        import numpyro.distributions as dist

        numpyro.sample("a", dist.Normal())

    args, kwargs = es
    with pytest.raises(pp.ConfigError, match="do not match"):
        pp.sample_approximation(es_results["laplace"], 0, 10, model=other, model_args=args, model_kwargs=kwargs)
    with pytest.raises(pp.ConfigError, match="observed data .* differ"):
        pp.sample_approximation(es_results["laplace"], 0, 10, model=eight_schools_noncentered,
                                model_args=args, model_kwargs={"y": kwargs["y"] + 1.0})
    with pytest.raises(pp.ConfigError, match="rng_key"):
        pp.sample_approximation(es_results["laplace"], "seed", 10)


def test_coords_of_wrong_length_raise(es):
    args, kwargs = es
    bad = pp.model(coords={"school": ["a", "b"]})(eight_schools_noncentered.__wrapped__)
    with pytest.raises(pp.ConfigError, match="2 labels.*'school'"):
        pp.infer(bad, *args, method=pp.Laplace(throw=False), **kwargs)


def test_laplace_predictives_become_groups():
    """Laplace's predictive=("glm", "probit", "mc"): draws through the model in
    posterior_predictive, the linearised logits and probit probabilities in predictive_glm."""
    from ppl_posteriors import datasets, examples
    from ppl_posteriors.results import compat

    X, y = datasets.breast_cancer()[:2]
    X, y = X[:60, :3], y[:60]
    cfg = pp.Laplace(predictive=("glm", "probit", "mc"), num_samples=100)
    res = pp.infer(examples.logistic_regression, X, y=y, method=cfg, rng_key=0, progress=False)
    glm = compat.get_group(res, "predictive_glm")
    mean, var = glm["y_logits_mean"].values, glm["y_logits_var"].values
    assert glm["y_logits_mean"].dims == ("obs_id",) and np.all(var > 0)
    # MacKay's probit approximation of E[sigmoid(f)], f ~ N(mean, var)
    expected = 1 / (1 + np.exp(-mean / np.sqrt(1 + np.pi * var / 8)))
    np.testing.assert_allclose(glm["y_probs"].values, expected, rtol=1e-6)
    draws = compat.get_group(res, "posterior_predictive")["y"]
    assert draws.dims == ("chain", "draw", "obs_id") and draws.shape == (1, 100, 60)
    assert set(np.unique(draws.values)) <= {0, 1}
    # the draws' class frequencies follow the probit probabilities (binomial sd per datum)
    freq = draws.values.mean(axis=(0, 1))
    assert np.mean(np.abs(freq - expected)) < 0.1
