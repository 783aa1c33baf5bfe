"""NumPyro guides in our VI loop (pp.NumPyroGuideVI), warm starts (init_from) and pp.find_map.

Exact answers: a conjugate normal model (posterior N(m, v) known), and the log q of an
AutoNormal draw against the Normal density of its unconstrained value.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from scipy import stats

import ppl_posteriors as pp
from ppl_posteriors.vi import numpyro_guide

pytestmark = pytest.mark.filterwarnings("ignore::ppl_posteriors.NumericalWarning")

Y = np.random.default_rng(0).normal(1.0, 1.0, size=20)
OPT = optax.adam(1e-2)
FROZEN = optax.sgd(0.0)  # one object: configs that hold it are equal


def full(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def exact():
    prec = 1 / 4 + len(Y)
    return Y.sum() / prec, prec**-0.5


def my_guide(y):
    loc = numpyro.param("loc", 0.0)
    scale = numpyro.param("scale", 0.5, constraint=dist.constraints.positive)
    numpyro.sample("mu", dist.Normal(loc, scale))


@pytest.mark.parametrize("guide", [AutoNormal, AutoMultivariateNormal, my_guide])
def test_numpyro_guide_recovers_conjugate_posterior(guide):
    cfg = pp.NumPyroGuideVI(guide=guide, num_steps=3000, num_particles=8, optimizer=OPT, average_fraction=0.5,
                            num_samples=4000)
    r = pp.infer(full, Y, method=cfg, rng_key=0, progress=False)
    m, sd = exact()
    draws = r.posterior["mu"].values.ravel()
    se = sd / np.sqrt(draws.size)
    assert abs(draws.mean() - m) < 0.05 * sd + 4.5 * se
    assert abs(draws.std() / sd - 1) < 0.05 + 4.5 / np.sqrt(2 * draws.size)
    assert r.attrs["guide"].startswith("numpyro:")
    assert r.attrs["psis_khat"] < 0.5
    approx = pp.vi.numpyro_guide.NumPyroGuideApproximation.from_arrays(
        {k: v.values for k, v in r.approximation.data_vars.items()})
    assert len(approx.params()) >= 2
    # q's moments (exact for the autoguides, from draws for a guide function) agree with its draws
    np.testing.assert_allclose(approx.mean[0], draws.mean(), atol=4.5 * float(approx.scale[0]) / np.sqrt(draws.size))
    if guide is AutoNormal:
        np.testing.assert_allclose(approx.mean[0], approx.params()["mu_auto_loc"], rtol=1e-6)


def test_log_q_includes_the_jacobian():
    """AutoNormal on a positive site: q on the unconstrained space is N(loc, scale)."""

    def m(y):
        numpyro.sample("s", dist.HalfNormal(1.0))

    ld = pp.log_density(m, Y)
    g = numpyro_guide.guide(AutoNormal, (), ld, (m, (jnp.asarray(Y),), {}))
    params = g.init(jax.random.key(0), jnp.zeros(1))
    params = {k: v + 0.3 for k, v in params.items()}  # away from the initial values
    z, log_q = g.sample_and_log_prob(jax.random.key(1), params, 50)
    loc = float(params["s_auto_loc"])
    scale = float(jax.nn.softplus(params["s_auto_scale"]))
    np.testing.assert_allclose(np.asarray(log_q), stats.norm.logpdf(np.asarray(z[:, 0]), loc, scale), rtol=1e-4)


def test_errors():
    with pytest.raises(pp.ConfigError, match="needs log q at a given point"):
        pp.NumPyroGuideVI(guide=AutoNormal, estimator="stl")
    with pytest.raises(pp.ConfigError, match="pass the AutoGuide class"):
        pp.NumPyroGuideVI(guide=AutoNormal(full))
    assert pp.NumPyroGuideVI().guide is AutoNormal  # the default

    def partial_guide(y):
        numpyro.param("a", 0.0)

    with pytest.raises(pp.ModelError, match="does not sample the model's latent site"):
        pp.infer(full, Y, method=pp.NumPyroGuideVI(guide=partial_guide, num_steps=5), progress=False)


def test_generalized_vi_takes_a_numpyro_guide():
    def prior(y):
        numpyro.sample("mu", dist.Normal(0.0, 2.0))

    def nll(v, y):
        return -jnp.sum(dist.Normal(v["mu"], 1.0).log_prob(y))

    cfg = pp.GeneralizedVI(loss=nll, guide=AutoNormal, num_steps=3000, num_particles=8, optimizer=OPT,
                           average_fraction=0.5, num_samples=4000)
    r = pp.infer(prior, Y, method=cfg, rng_key=0, progress=False)
    m, sd = exact()
    assert r.attrs["kl"] == "mc"
    assert abs(r.posterior["mu"].values.mean() - m) < 0.08 * sd


# ----------------------------------------------------------------------------- find_map


def test_find_map_conjugate_and_constrained():
    values, status = pp.find_map(full, Y, num_starts=3)
    m, _ = exact()
    assert status is pp.Status.SUCCESS
    np.testing.assert_allclose(values["mu"], m, rtol=1e-4)

    def scale_model(y):
        s = numpyro.sample("s", dist.Exponential(1.0))
        numpyro.sample("y", dist.Normal(0.0, s), obs=y)

    # constrained mode (no Jacobian): maximise -s - n log s - Σy²/(2s²): s³ + n s² - Σy² = 0
    values, status, info = pp.find_map(scale_model, Y, return_info=True)
    n, q = len(Y), float(np.sum(Y**2))
    roots = np.roots([1.0, n, 0.0, -q])
    s_star = float(roots[np.argmin(np.abs(roots.imag) + (roots.real <= 0))].real)
    np.testing.assert_allclose(values["s"], s_star, rtol=1e-4)
    assert info["tier"].shape == (4,) and info["num_at_mode"] >= 1


def test_find_map_picks_the_higher_mode_and_compiles_once():
    def bimodal(w):
        x = numpyro.sample("x", dist.Normal(0.0, 10.0))
        numpyro.factor("modes", jnp.logaddexp(jnp.log(w) - 0.5 * (x - 3) ** 2, jnp.log1p(-w) - 0.5 * (x + 3) ** 2))

    values, status = pp.find_map(bimodal, jnp.asarray(0.3), num_starts=8, init_radius=5.0, rng_key=1)
    assert status is pp.Status.SUCCESS
    assert abs(values["x"] + 3) < 0.1  # the mode at -3 has weight 0.7
    before = pp.cache_info()["misses"]
    values, _ = pp.find_map(bimodal, jnp.asarray(0.8), num_starts=8, init_radius=5.0, rng_key=2)
    assert pp.cache_info()["misses"] == before
    assert abs(values["x"] - 3) < 0.1


# ----------------------------------------------------------------------------- warm starts


@pytest.mark.parametrize("cls, kw", [(pp.MeanFieldVI, {}), (pp.FullRankVI, {}), (pp.LowRankVI, {"rank": 1}),
                                     (pp.FlowVI, {"flow": "maf", "flow_layers": 1, "nn_width": 4})])
def test_init_from_restarts_at_the_stored_guide(cls, kw, tmp_path):
    def two(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0).expand([2]).to_event(1))
        numpyro.sample("y", dist.Normal(mu.sum(), 1.0), obs=y)

    first = pp.infer(two, Y, method=cls(num_steps=200, num_samples=10, **kw), rng_key=0, progress=False)
    path = tmp_path / "first.nc"
    first.to_netcdf(str(path))
    import arviz as az

    stored = az.from_netcdf(str(path))
    # a zero learning rate keeps the parameters: the result's guide is the stored one
    frozen = cls(num_steps=2, num_samples=10, optimizer=FROZEN, average_fraction=0.0, init_from=stored, **kw)
    again = pp.infer(two, Y, method=frozen, rng_key=1, progress=False)
    for name in first.approximation.data_vars:
        if name in ("mean", "scale", "scale_tril", "cov_factor", "diag", "flow_params"):
            np.testing.assert_allclose(again.approximation[name].values, first.approximation[name].values,
                                       rtol=1e-5, atol=1e-6)
    resumed = pp.infer(two, Y, method=cls(num_steps=2, num_samples=10, optimizer=FROZEN,
                                          average_fraction=0.0, init_from=first, **kw), rng_key=1, progress=False)
    assert resumed.attrs["cache_hit"] == 1  # init_from is not part of the compile key


def test_init_from_refuses_another_guide():
    first = pp.infer(full, Y, method=pp.MeanFieldVI(num_steps=20, num_samples=10), progress=False)
    with pytest.raises(pp.ConfigError, match="cannot start the fullrank guide"):
        pp.infer(full, Y, method=pp.FullRankVI(num_steps=5, init_from=first), progress=False)
