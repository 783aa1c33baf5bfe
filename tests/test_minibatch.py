"""Minibatches: numpyro.plate(name, N, subsample_size=B) scales the likelihood by N/B,
stochastic mean-field VI uses it, and full-data methods refuse it."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers

import ppl_posteriors as pp

N, B, K, NOISE, PRIOR_SD = 64, 16, 2, 0.5, 1.0


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, K))
    return X, X @ np.array([1.0, -0.5]) + NOISE * rng.normal(size=N)


def regression(X, y, subsample_size=None):
    b = numpyro.sample("b", dist.Normal(0.0, PRIOR_SD).expand([K]).to_event(1))
    with numpyro.plate("data", X.shape[0], subsample_size=subsample_size) as idx:
        numpyro.sample("y", dist.Normal(X[idx] @ b, NOISE), obs=y[idx])


def test_mean_of_scaled_minibatch_gradients_is_the_full_gradient():
    X, y = _data()
    full = pp.log_density(regression, X, y)
    pos = {"b": jnp.array([0.3, -0.2])}
    g_full = jax.grad(full.split.log_likelihood)(pos)["b"]
    grads = []
    for k in range(N // B):  # every disjoint batch once: plate indices fixed by substitution
        batch = handlers.substitute(regression, data={"data": jnp.arange(k * B, (k + 1) * B)})
        ld = pp.log_density(batch, X, y, subsample_size=B)
        assert ld.subsample_plates == {"data": (N, B)}
        lik = lambda p, ld=ld: ld.logdensity_fn(p) - full.split.log_prior(p)  # noqa: E731
        grads.append(jax.grad(lik)(pos)["b"])
    np.testing.assert_allclose(np.mean(grads, axis=0), g_full, rtol=1e-10, atol=1e-10)
    # a random minibatch is the same estimator: its scale is N/B
    ld = pp.log_density(regression, X, y, subsample_size=B)
    lik = ld.minibatch_logdensity_fn(pos, jax.random.key(0)) - full.split.log_prior(pos)
    assert np.isfinite(float(lik)) and abs(float(lik)) > 0


def test_stochastic_vi_reaches_the_meanfield_optimum():
    """Conjugate regression: the mean-field optimum has the posterior mean and sd_i = Λ_ii^-1/2."""
    X, y = _data()
    prec = X.T @ X / NOISE**2 + np.eye(K) / PRIOR_SD**2
    mean = np.linalg.solve(prec, X.T @ y / NOISE**2)
    sd = 1 / np.sqrt(np.diag(prec))
    cfg = pp.MeanFieldVI(num_steps=4000, num_samples=100, average_fraction=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NumericalWarning)
        idata = pp.infer(regression, X, y, subsample_size=B, method=cfg, rng_key=0, progress=False)
    ap = idata.approximation
    # minibatch noise of the averaged iterates: a few percent of a posterior sd
    np.testing.assert_allclose(ap["mean"].values, mean, atol=0.1 * sd.min())
    np.testing.assert_allclose(ap["scale"].values, sd, rtol=0.1)
    # results use the full data: one log-likelihood value per datum
    assert idata.log_likelihood["y"].shape[-1] == N and idata.observed_data["y"].shape == (N,)


@pytest.mark.parametrize("method", ["nuts", "laplace"])
def test_full_data_methods_refuse_a_subsampled_plate(method):
    X, y = _data()
    with pytest.raises(pp.ModelError, match=r"plate 'data' subsamples 16 of 64 items.*subsample_size"):
        pp.infer(regression, X, y, subsample_size=B, method=method)


def test_latent_site_in_a_subsampled_plate_is_refused():
    def local(y):
        with numpyro.plate("data", 10, subsample_size=5) as idx:
            z = numpyro.sample("z", dist.Normal())
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y[idx])

    with pytest.raises(pp.ModelError, match=r"latent site 'z' lies inside the subsampled plate 'data'"):
        pp.log_density(local, np.zeros(10))
