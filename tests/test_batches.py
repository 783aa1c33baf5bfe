"""Data as an iterable of batches (pp.Batches): the N / B scale, its exactness over an epoch,
and the errors that name the fix."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl_posteriors as pp
from ppl_posteriors.results import compat
from ppl_posteriors.runtime import Runtime
from ppl_posteriors.runtime.batches import BatchStream
from ppl_posteriors.runtime.programs import approximation_weights, constrained_draws

N, K, NOISE = 60, 2, 0.5


def regression(x, y=None):
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("data", x.shape[0]):
        mu = numpyro.deterministic("mu", x @ b)
        numpyro.sample("y", dist.Normal(mu, s), obs=y)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, K))
    return x, x @ np.array([1.0, -0.5]) + NOISE * rng.normal(size=N)


def _batches(x, y, size):
    return [{"x": x[i : i + size], "y": y[i : i + size]} for i in range(0, len(x), size)]


POS = {"b": jnp.array([0.3, -0.2]), "s": jnp.array(-0.4)}


def test_mean_over_an_epoch_of_scaled_gradients_is_the_full_gradient():
    x, y = _data()
    full = pp.log_density(regression, x, y=y)
    g_lik = jax.grad(full.split.log_likelihood)(POS)
    g_all = jax.grad(full.logdensity_fn)(POS)
    lds = list(pp.Batches(_batches(x, y, 15), num_data=N).log_densities(regression))
    assert len(lds) == 4
    for fn, g_full in ((lambda ld: ld.split.log_likelihood, g_lik), (lambda ld: ld.logdensity_fn, g_all)):
        grads = [jax.grad(fn(ld))(POS) for ld in lds]
        for site in POS:
            mean = np.mean([g[site] for g in grads], axis=0)
            np.testing.assert_allclose(mean, g_full[site], rtol=1e-10, atol=1e-10)
    # each batch alone is scaled by N / B: its likelihood is 4 x the batch's own sum
    own = pp.log_density(regression, x[:15], y=y[:15])
    np.testing.assert_allclose(lds[0].split.log_likelihood(POS), 4 * own.split.log_likelihood(POS), rtol=1e-12)


def test_unequal_batches_are_each_scaled_by_their_own_size():
    x, y = _data()
    full = pp.log_density(regression, x, y=y)
    lds = list(pp.Batches(_batches(x, y, 25), num_data=N).log_densities(regression))  # 25, 25, 10
    sizes = [25, 25, 10]
    # weighting each scaled estimate by B_k / N recovers the full log-likelihood exactly
    total = sum(b / N * ld.split.log_likelihood(POS) for b, ld in zip(sizes, lds, strict=True))
    np.testing.assert_allclose(total, full.split.log_likelihood(POS), rtol=1e-12)


def test_epoch_sums_give_full_data_weights_and_global_results():
    x, y = _data()
    stream = BatchStream(regression, (), {}, True, pp.Batches(lambda: iter(_batches(x, y, 20)), num_data=N))
    assert stream.plate == "data" and stream.plate_sites == {"mu", "y"}
    rt = Runtime(stream.template, stream.arrays, pp.MeanFieldVI(), progress=False, batches=stream)
    full = pp.log_density(regression, x, y=y)

    class Approx:  # any approximation with log_prob over flat draws
        def log_prob(self, draws):
            return jnp.zeros(draws.shape[0])

    draws = jax.random.normal(jax.random.key(1), (5, full.dim)) * 0.3
    lp, log_w = approximation_weights(rt, Approx(), draws)
    exact = jax.vmap(full.posterior_logdensity_fn)(full.unravel(draws))
    np.testing.assert_allclose(lp, exact, rtol=1e-10)
    np.testing.assert_allclose(log_w, exact, rtol=1e-10)
    posterior, loglik, observed = constrained_draws(rt, full.unravel(draws[None]))
    assert set(posterior) == {"b", "s"} and loglik == {} and observed == {}

    # the stream cycles over epochs; a step program compiles once per batch shape
    def step(ld, ctx, carry, key):
        return carry + 1, ld.split.log_likelihood(POS)

    count, liks = rt.stream("count", step, jnp.zeros(()), jax.random.key(0), num_steps=7)
    assert int(count) == 7 and liks.shape == (7,)
    np.testing.assert_allclose(liks[3], liks[0], rtol=1e-12)  # batch 0 again after 3 batches
    np.testing.assert_allclose(np.mean(liks[:3]), full.split.log_likelihood(POS), rtol=1e-10)


def test_batch_errors_name_the_fix():
    x, y = _data()
    with pytest.raises(pp.ConfigError, match="one-shot iterator"):
        pp.Batches(iter(_batches(x, y, 20)), num_data=N)
    with pytest.raises(pp.ConfigError, match="num_data"):
        pp.Batches(_batches(x, y, 20), num_data=0)
    with pytest.raises(pp.ConfigError, match="needs the full data and cannot take batches=.*meanfield_vi"):
        pp.infer(regression, method="laplace", batches=pp.Batches(_batches(x, y, 20), num_data=N))
    with pytest.raises(pp.ConfigError, match="'z' is not an argument of the model"):
        BatchStream(regression, (), {}, True, pp.Batches([{"x": x, "z": y}], num_data=N))
    with pytest.raises(pp.ConfigError, match="'y' is in every batch and also passed"):
        BatchStream(regression, (), {"y": y}, True, pp.Batches(_batches(x, y, 20), num_data=N))
    with pytest.raises(pp.ConfigError, match="each batch must be a non-empty dict"):
        BatchStream(regression, (), {}, True, pp.Batches([(x, y)], num_data=N))
    with pytest.raises(pp.ConfigError, match="batch has 60 items but num_data=10"):
        BatchStream(regression, (), {}, True, pp.Batches(_batches(x, y, 60), num_data=10))
    bad = _batches(x, y, 20)
    bad[1]["y"] = np.where(np.arange(20) == 3, np.nan, bad[1]["y"])
    stream = BatchStream(regression, (), {}, True, pp.Batches(bad, num_data=N))
    with pytest.raises(pp.ModelError, match=r"batch 1\['y'\] has 1 NaN"):
        list(zip(range(3), stream.stream(), strict=False))

    def local(x, y=None):
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal())
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y)

    with pytest.raises(pp.ModelError, match="latent site 'z' is inside the batch plate 'data'"):
        BatchStream(local, (), {}, True, pp.Batches(_batches(x[:, 0], y, 20), num_data=N))


def test_stochastic_vi_on_batches_reaches_the_meanfield_optimum():
    """Conjugate regression with known noise: the mean-field optimum has the posterior mean
    and sd_i = Λ_ii^-1/2; batches of 16 from a loader that reshuffles every epoch."""
    n, b, prior_sd = 64, 16, 1.0
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, K))
    y = x @ np.array([1.0, -0.5]) + NOISE * rng.normal(size=n)

    def known_noise(x, y=None):
        w = numpyro.sample("w", dist.Normal(0.0, prior_sd).expand([K]).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(x @ w, NOISE), obs=y)

    epoch_rng = np.random.default_rng(1)

    def loader():
        order = epoch_rng.permutation(n)
        return iter([{"x": x[order[i : i + b]], "y": y[order[i : i + b]]} for i in range(0, n, b)])

    prec = x.T @ x / NOISE**2 + np.eye(K) / prior_sd**2
    mean = np.linalg.solve(prec, x.T @ y / NOISE**2)
    sd = 1 / np.sqrt(np.diag(prec))
    cfg = pp.MeanFieldVI(num_steps=3000, num_samples=100, average_fraction=0.5)
    idata = pp.infer(known_noise, method=cfg, batches=pp.Batches(loader, num_data=n), rng_key=0, progress=False)
    ap = idata.approximation
    # minibatch noise of the averaged iterates: a few percent of a posterior sd
    np.testing.assert_allclose(ap["mean"].values, mean, atol=0.1 * sd.min())
    np.testing.assert_allclose(ap["scale"].values, sd, rtol=0.1)
    assert idata.attrs["batches_num_data"] == n and idata.attrs["batches_plate"] == "data"
    groups = compat.group_names(idata)
    assert "log_likelihood" not in groups and "observed_data" not in groups
    # the PSIS weights use the full data (one epoch): the mean-field fit of this
    # nearly uncorrelated posterior is good
    assert idata.attrs["psis_khat"] < 0.7
    # a second call with new batches of the same shapes compiles nothing
    again = pp.infer(known_noise, method=cfg, batches=pp.Batches(loader, num_data=n), rng_key=1, progress=False)
    assert again.attrs["cache_hit"] == 1
