"""Latent sites inside ``numpyro.contrib.control_flow.scan``: every step's log-Jacobian counted,
equal to NumPyro's potential energy, and every method runs on a state-space model."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan
from numpyro.infer import MCMC
from numpyro.infer import NUTS as NumpyroNUTS
from numpyro.infer.util import potential_energy

import ppl_posteriors as pp

Y = np.array([0.4, 0.9, 0.2, 1.3, 1.8, 1.1, 0.7, 1.6])


def local_level(y):
    """Local-level model with a real (level) and a positive (innovation sd) latent per step."""
    sigma_obs = numpyro.sample("sigma_obs", dist.HalfNormal(1.0))
    mu0 = numpyro.sample("mu0", dist.Normal(0.0, 1.0))

    def step(level, yt):
        s = numpyro.sample("s", dist.LogNormal(-1.0, 0.5))
        level = numpyro.sample("level", dist.Normal(level, s))
        numpyro.sample("y", dist.Normal(level, sigma_obs), obs=yt)
        return level, level

    scan(step, mu0, y)


def bounded_steps(y):
    """A per-step latent whose support depends on the carry: Uniform(0, bound_t)."""
    b0 = numpyro.sample("b0", dist.LogNormal(0.0, 0.3))

    def step(bound, yt):
        u = numpyro.sample("u", dist.Uniform(0.0, bound))
        numpyro.sample("y", dist.Normal(u, 1.0), obs=yt)
        return bound + u, u

    scan(step, b0, y)


@pytest.mark.parametrize("model", [local_level, bounded_steps])
def test_log_density_equals_numpyro_potential_energy(model):
    ld = pp.log_density(model, Y)
    assert dict(ld.layout)["level" if model is local_level else "u"] == (len(Y),)
    f = jax.jit(ld.logdensity_fn)
    for i in range(5):
        pos = ld.unravel(jax.random.normal(jax.random.key(i), (ld.dim,)))
        ours = float(f(pos))
        theirs = -float(potential_energy(model, (Y,), {}, pos))
        np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-8)
    # the Jacobian of every step counts: dropping it changes the density by the sum over steps
    pos = ld.unravel(jax.random.normal(jax.random.key(9), (ld.dim,)))
    no_jac = pp.log_density(model, Y, jacobian=False)
    if model is local_level:
        expected = float(pos["sigma_obs"] + jnp.sum(pos["s"]))  # log-Jacobian of exp is z
        np.testing.assert_allclose(float(f(pos) - no_jac.logdensity_fn(pos)), expected, rtol=1e-10)


def test_constrain_unconstrain_round_trip():
    ld = pp.log_density(bounded_steps, Y)
    pos = ld.unravel(jax.random.normal(jax.random.key(3), (ld.dim,)))
    values = ld.constrain(pos)
    assert values["u"].shape == (len(Y),)
    back = ld.unconstrain({k: values[k] for k in ("b0", "u")})
    for k in pos:
        np.testing.assert_allclose(back[k], pos[k], rtol=1e-8, atol=1e-10)


def test_nuts_matches_numpyro_nuts():
    """Means of every latent within 5 combined Monte Carlo standard errors of numpyro's NUTS."""
    ours = pp.infer(local_level, Y, method=pp.NUTS(num_chains=2, num_warmup=400, num_samples=600),
                    rng_key=jax.random.key(0))
    mcmc = MCMC(NumpyroNUTS(local_level), num_warmup=400, num_samples=600, num_chains=2,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(1), Y)
    import arviz as az

    theirs = az.from_numpyro(mcmc)
    for var in ("sigma_obs", "mu0", "level", "s"):
        a, b = ours.posterior[var], theirs.posterior[var]
        se = np.sqrt(az.mcse(ours, var_names=[var])[var].values ** 2
                     + az.mcse(theirs, var_names=[var])[var].values ** 2)
        diff = np.abs(a.mean(("chain", "draw")).values - b.mean(("chain", "draw")).values)
        assert np.all(diff < 5 * se + 1e-3), (var, diff, se)


@pytest.mark.parametrize("method", ["laplace", "meanfield_vi"])
def test_laplace_and_vi_run_on_scan_models(method):
    cfg = pp.Laplace() if method == "laplace" else pp.MeanFieldVI(num_steps=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NumericalWarning)  # k-hat > 0.7 is expected here
        idata = pp.infer(bounded_steps, Y, method=cfg, progress=False, rng_key=1)
    assert idata.attrs["status"] in ("success", "poor_approximation")
    assert idata.posterior["u"].shape[2:] == (len(Y),)
    assert np.all(np.isfinite(idata.posterior["u"].values))
    assert idata.log_likelihood["y"].shape[2:] == (len(Y),)


def test_nested_scan_is_a_model_error():
    def nested(y):
        def outer(c, yt):
            def inner(c2, _):
                v = numpyro.sample("v", dist.Normal(c2, 1.0))
                return v, v

            c, _ = scan(inner, c, jnp.arange(2))
            numpyro.sample("y", dist.Normal(c, 1.0), obs=yt)
            return c, c

        scan(outer, 0.0, y)

    with pytest.raises(pp.ModelError, match=r"latent site 'v' inside numpyro.contrib.control_flow.scan"):
        pp.log_density(nested, Y[:3])
