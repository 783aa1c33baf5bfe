"""Both result types: InferenceData (ArviZ 0.23, Python 3.11) and xarray.DataTree (ArviZ >= 1,
Python >= 3.12). A netcdf file written under either version is read and re-sampled under the
installed one.

The files in tests/data/ were written by tests/data/make_compat_fixtures.py: the ``*_arviz0.nc``
ones under Python 3.11 (arviz 0.23.4, jax 0.10.2), the ``*_arviz1.nc`` ones under Python 3.12
(arviz 1.3.0, jax 0.12.0.1). Each run reads both, so one of them is always the other version's.
"""

from pathlib import Path

import jax
import numpy as np
import pytest
import xarray as xr

import ppl_posteriors as pp
from ppl_posteriors.examples import eight_schools_noncentered
from ppl_posteriors.results import compat

DATA = Path(__file__).parent / "data"
FILES = [(m, v) for m in ("laplace", "meanfield_vi") for v in ("0", "1")]


@pytest.fixture(scope="module")
def es():
    from ppl_posteriors.datasets import eight_schools

    d = eight_schools()
    return (d["sigma"],), {"y": d["y"]}


def test_the_result_type_follows_the_installed_arviz():
    import arviz as az

    if int(az.__version__.split(".")[0]) >= 1:
        assert compat.RESULT_TYPE is xr.DataTree
    else:
        assert compat.RESULT_TYPE is az.InferenceData
    res = compat.make_result({"posterior": compat.dict_to_dataset({"a": np.zeros((2, 3))}),
                              "observed_data": compat.dict_to_dataset({"y": np.ones(4)}, sample=False)},
                             {"method": "x"})
    assert isinstance(res, compat.RESULT_TYPE)
    assert compat.group_names(res) == ["posterior", "observed_data"]
    assert "posterior" in res and "approximation" not in res
    assert compat.get_group(res, "observed_data")["y"].dims == ("y_dim_0",)
    assert isinstance(compat.get_group(res, "posterior"), xr.Dataset)
    assert res.posterior["a"].dims == ("chain", "draw") and res.attrs["method"] == "x"


@pytest.mark.parametrize("method,major", FILES)
def test_a_file_from_either_version_is_read_and_resampled(es, tmp_path, method, major):
    back = compat.from_netcdf(DATA / f"{method}_arviz{major}.nc")
    assert isinstance(back, compat.RESULT_TYPE)
    assert str(back.attrs["arviz_version"]).split(".")[0] == major  # who wrote it
    assert back.attrs["method"] == method
    assert set(compat.group_names(back)) == {
        "posterior", "sample_stats", "log_likelihood", "observed_data", "approximation",
    }
    post = back.posterior
    assert post["theta"].dims == ("chain", "draw", "school") and post.sizes["draw"] == 40
    assert list(post["school"].values) == list("ABCDEFGH")
    np.testing.assert_allclose(post["theta"], post["mu"] + post["tau"] * post["theta_z"], rtol=1e-12)

    ap = compat.get_group(back, "approximation")
    args, kwargs = es
    n = 20000
    again = pp.sample_approximation(back, jax.random.key(1), n, model=eight_schools_noncentered,
                                    model_args=args, model_kwargs=kwargs)
    assert isinstance(again, compat.RESULT_TYPE)
    assert again.posterior["theta"].shape == (1, n, 8)
    assert again.attrs["method"] == method
    # the stored Gaussian's mean and sd of the unconstrained mu (first coordinate)
    mean = ap["mean"].values
    sd = (np.sqrt(np.diag(np.linalg.inv(ap["precision"].values)))
          if "precision" in ap else ap["scale"].values)
    mu = again.posterior["mu"].values.ravel()
    assert abs(mu.mean() - mean[0]) < 5 * sd[0] / np.sqrt(n)
    assert abs(mu.std() / sd[0] - 1) < 5 * np.sqrt(0.5 / n)

    raw = pp.sample_approximation(back, jax.random.key(1), 100)
    assert compat.group_names(raw) == ["unconstrained_posterior"]
    np.testing.assert_allclose(np.log(again.posterior["tau"].values[:, :100]),
                               raw.unconstrained_posterior["tau"].values, rtol=1e-10)

    # and written again under the installed version: the same numbers come back
    path = compat.to_netcdf(back, tmp_path / "again.nc")
    third = compat.from_netcdf(path)
    for group in compat.group_names(back):
        xr.testing.assert_equal(compat.get_group(third, group), compat.get_group(back, group))
    assert third.attrs["status"] == back.attrs["status"]


def test_psis_khat_of_pareto_weights():
    """Weights drawn from a Pareto with tail index 1/k: k-hat estimates k (Vehtari et al. 2024);
    with 4000 draws the right tail has M = 3 sqrt(4000) = 189 draws and sd(k-hat) ~ (1 + k) / sqrt(M)."""
    rng = np.random.default_rng(0)
    for k in (0.3, 0.9):
        w = rng.pareto(1.0 / k, size=4000) + 1.0
        khat = compat.psis_khat(np.log(w))
        assert abs(khat - k) < 4 * (1 + k) / np.sqrt(189), (k, khat)
    assert compat.psis_khat(rng.normal(scale=0.1, size=4000)) < 0.3  # near-constant weights


def test_loo_numbers(tmp_path):
    """elpd = lppd - p for every version (p_loo is defined that way), lppd computed here."""
    rng = np.random.default_rng(1)
    ll = rng.normal(-1.0, 0.3, size=(2, 200, 10))
    res = compat.make_result({"posterior": compat.dict_to_dataset({"a": rng.normal(size=(2, 200))}),
                              "log_likelihood": compat.dict_to_dataset({"y": ll})}, {})
    out = compat.loo(res)
    flat = ll.reshape(400, 10)
    lppd = float(np.sum(np.log(np.mean(np.exp(flat), axis=0))))
    assert out.elpd == pytest.approx(lppd - out.p, rel=1e-10)
    assert 0 < out.p < 10 and out.se > 0


def test_forest_plot_of_results_with_different_numbers_of_chains_and_draws(tmp_path):
    """Two chains of 300 and one chain of 1000 draws in one plot (ArviZ 1 pads with NaN)."""
    from ppl_posteriors.results.compare import plot_forest

    rng = np.random.default_rng(2)
    a = compat.make_result({"posterior": compat.dict_to_dataset({"x": rng.normal(size=(2, 300, 3))})}, {})
    b = compat.make_result({"posterior": compat.dict_to_dataset({"x": rng.normal(size=(1, 1000, 3))})}, {})
    path = plot_forest({"A": a, "B": b}, ["x"], tmp_path / "f.png", title="t")
    assert Path(path).stat().st_size > 5_000
