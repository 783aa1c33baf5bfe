"""Model tracing: typed sites, ArviZ dims, and every structural error."""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints

import ppl_posteriors as pp
from ppl_posteriors.model import SiteKind, trace_model


def test_sites_kinds_shapes_plates_dims(eight_schools_data):
    from ppl_posteriors.examples import eight_schools_noncentered

    d = eight_schools_data
    tr = trace_model(eight_schools_noncentered, (d["sigma"],), {"y": d["y"]})
    sites = {s.name: s for s in tr.sites}
    assert [s.name for s in tr.sites] == ["mu", "tau", "theta_z", "theta", "y"]
    assert sites["mu"].kind is SiteKind.LATENT and sites["mu"].shape == ()
    assert sites["tau"].support is constraints.positive
    assert sites["theta_z"].plates == ("school",) and sites["theta_z"].dims == ("school",)
    assert sites["theta"].kind is SiteKind.DETERMINISTIC and sites["theta"].dims == ("school",)
    assert sites["y"].kind is SiteKind.OBSERVED and sites["y"].shape == (8,)
    np.testing.assert_array_equal(tr.observed["y"], d["y"])
    assert set(tr.init_position) == {"mu", "tau", "theta_z"}


def test_nested_plates_event_dims_factor_and_override():
    @pp.model(dims={"L": ["row", "col"]})
    def m(y):
        with numpyro.plate("group", 3, dim=-2):
            with numpyro.plate("item", 4, dim=-1):
                a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        s = numpyro.sample("s", dist.Dirichlet(jnp.ones(5)))
        L = numpyro.sample("L", dist.LKJCholesky(3, 2.0))
        numpyro.factor("extra", -jnp.sum(a**2))
        numpyro.sample("y", dist.Normal(a.sum() + s[0] + L[0, 0], 1.0), obs=y)

    tr = trace_model(m, (1.0,), {})
    sites = {s.name: s for s in tr.sites}
    assert sites["a"].shape == (3, 4) and sites["a"].dims == ("group", "item")
    assert sites["a"].plates == ("group", "item")
    assert sites["s"].event_dim == 1 and sites["s"].unconstrained_shape == (4,)
    assert sites["s"].dims == ("s_dim_0",)
    assert sites["L"].dims == ("row", "col") and sites["L"].unconstrained_shape == (3,)
    assert sites["extra"].kind is SiteKind.FACTOR


def test_discrete_latent_site_raises():
    def m():
        numpyro.sample("k", dist.Poisson(3.0))

    with pytest.raises(pp.ModelError, match=r"'k'.*discrete.*enumeration"):
        trace_model(m, (), {})


@pytest.mark.parametrize(
    "wrap", [lambda d: d.mask(False), lambda d: d.expand([3]).to_event(1), lambda d: d.expand([2]).mask(True)]
)
def test_wrapped_discrete_latent_names_the_base_distribution(wrap):
    def m():
        numpyro.sample("k", wrap(dist.Poisson(3.0)))

    with pytest.raises(pp.ModelError, match=r"'k' has the discrete distribution Poisson \(wrapped in"):
        trace_model(m, (), {})


def test_nan_in_observed_data_raises():
    def m(y):
        mu = numpyro.sample("mu", dist.Normal())
        numpyro.sample("obs", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(pp.ModelError, match=r"'obs'.*2 NaN or inf"):
        trace_model(m, (np.array([1.0, np.nan, np.inf]),), {})


def test_model_that_raises_is_wrapped():
    def m(x):
        numpyro.sample("mu", dist.Normal())
        raise RuntimeError("boom")

    with pytest.raises(pp.ModelError, match="raised RuntimeError.*boom") as e:
        trace_model(m, (1.0,), {})
    assert isinstance(e.value.__cause__, RuntimeError)


def test_wrong_arguments_are_a_model_error():
    def m(x, y=None):
        numpyro.sample("mu", dist.Normal())

    with pytest.raises(pp.ModelError, match="signature"):
        trace_model(m, (), {"z": 1})


def test_unsupported_constraint_raises():
    class Weird(dist.Normal):
        support = constraints.dependent

    def m():
        numpyro.sample("w", Weird(0.0, 1.0))

    with pytest.raises(pp.ModelError, match=r"'w'.*no transform"):
        trace_model(m, (), {})


def test_param_site_raises_and_subsampling_is_recorded():
    def with_param():
        numpyro.param("p", 1.0)
        numpyro.sample("mu", dist.Normal())

    with pytest.raises(pp.ModelError, match=r"'p'.*numpyro.param"):
        trace_model(with_param, (), {})

    def subsampled(y):
        mu = numpyro.sample("mu", dist.Normal())
        with numpyro.plate("data", 100, subsample_size=10):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[:10])

    # a subsampled plate is traced and recorded; methods that need the full data refuse it
    assert trace_model(subsampled, (np.zeros(100),), {}).plates == {"data": (100, 10)}


def test_no_latent_site_raises():
    def m(y):
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(pp.ModelError, match="no latent"):
        trace_model(m, (1.0,), {})


def test_dims_override_of_wrong_length_is_config_error():
    @pp.model(dims={"mu": ["a", "b"]})
    def m():
        numpyro.sample("mu", dist.Normal(jnp.zeros(3), 1.0).to_event(1))

    with pytest.raises(pp.ConfigError, match=r"'mu'.*2 dimension"):
        trace_model(m, (), {})
    with pytest.raises(pp.ConfigError, match="sequence of dimension names"):
        pp.model(dims={"mu": "a"})


def test_decorated_model_is_still_a_numpyro_model(eight_schools_data):
    from numpyro.infer import MCMC, NUTS

    from ppl_posteriors.examples import eight_schools_noncentered

    d = eight_schools_data
    mcmc = MCMC(NUTS(eight_schools_noncentered), num_warmup=20, num_samples=20, progress_bar=False)
    import jax

    mcmc.run(jax.random.PRNGKey(0), d["sigma"], y=d["y"])
    assert mcmc.get_samples()["theta"].shape == (20, 8)
    assert eight_schools_noncentered.__pp_meta__.coords["school"] == list("ABCDEFGH")
    assert eight_schools_noncentered.__name__ == "eight_schools_noncentered"
