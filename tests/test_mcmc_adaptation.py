"""Mass matrices (diag, dense, nutpie, low rank) and warm starts (Pathfinder, init_from).

Posterior checks on a correlated, badly scaled Gaussian with MCSE-scaled tolerances:
|mean - μ| and |E(x - μ)² - Σ_ii| within 5 Monte Carlo standard errors (ESS from
ArviZ, MCSE of a second moment from the ESS of (x - μ)²). Contracts at the end pin the
BlackJAX pieces that mcmc/mass_matrix.py and mcmc/init.py drive.
"""

import inspect
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl_posteriors as pp
from ppl_posteriors.results import compat

MU = np.array([30.0, -20.0, 5.0])
SD = np.array([0.05, 1.0, 10.0])
CORR = np.array([[1.0, 0.9, 0.0], [0.9, 1.0, -0.3], [0.0, -0.3, 1.0]])
COV = CORR * np.outer(SD, SD)


def gaussian(mu):
    numpyro.sample("x", dist.MultivariateNormal(jnp.asarray(mu), covariance_matrix=jnp.asarray(COV)))


def _draws(idata):
    return np.asarray(compat.get_group(idata, "posterior")["x"].values)  # (chain, draw, 3)


def assert_matches_gaussian(x, mu=MU, z=5.0):
    """Means and variances of (chain, draw, D) draws within z MCSE of the exact values."""
    flat = x.reshape(-1, x.shape[-1])
    ess_mean = compat.ess(x, "bulk")
    mcse_mean = flat.std(0) / np.sqrt(ess_mean)
    np.testing.assert_array_less(np.abs(flat.mean(0) - mu), z * mcse_mean)
    sq = (x - mu) ** 2
    mcse_var = sq.reshape(-1, x.shape[-1]).std(0) / np.sqrt(compat.ess(sq, "mean"))
    np.testing.assert_array_less(np.abs(sq.reshape(-1, x.shape[-1]).mean(0) - np.diag(COV)), z * mcse_var)


def _infer(cfg, mu=MU, seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NumericalWarning)
        return pp.infer(gaussian, mu, method=cfg, rng_key=seed, progress=False)


@pytest.mark.parametrize("mass_matrix", ["nutpie", "low_rank"])
def test_mass_matrix_on_a_correlated_gaussian(mass_matrix):
    idata = _infer(pp.NUTS(num_chains=2, num_warmup=400, num_samples=1000, mass_matrix=mass_matrix))
    assert idata.attrs["num_divergent"] == 0
    assert_matches_gaussian(_draws(idata))


def test_mass_matrix_options():
    assert pp.NUTS(dense_mass=True) == pp.NUTS(mass_matrix="dense")  # the kept alias
    assert pp.NUTS(mass_matrix="dense").dense_mass
    assert pp.NUTS().mass_matrix == "diag"
    with pytest.raises(pp.ConfigError, match="dense_mass"):
        pp.NUTS(dense_mass=True, mass_matrix="nutpie")
    with pytest.raises(pp.ConfigError, match="mass_matrix"):
        pp.NUTS(mass_matrix="full")
    with pytest.raises(pp.ConfigError, match="mass_matrix"):
        pp.MALA(mass_matrix="low_rank")  # BlackJAX's MALA takes no low-rank metric
    with pytest.raises(pp.ConfigError, match="mass_matrix"):
        pp.RMH(mass_matrix="nutpie")  # no gradients
    with pytest.raises(pp.ConfigError, match="init"):
        pp.NUTS(init="map")
    with pytest.raises(pp.ConfigError, match="init_from"):
        pp.NUTS(init_from=np.zeros(3))


def test_nutpie_diagonal_is_the_fisher_optimum_on_a_gaussian():
    """Driven directly: on N(0, Σ) the estimator tends to sqrt(Σ_ii / (Σ⁻¹)_ii)."""
    from ppl_posteriors.mcmc.mass_matrix import nutpie_adaptation

    prec = np.linalg.inv(COV)
    logdensity = lambda x: -0.5 * x @ jnp.asarray(prec) @ x  # noqa: E731
    n = 4000
    xs = jax.random.multivariate_normal(jax.random.key(0), jnp.zeros(3), jnp.asarray(COV), (n, 1))

    class S:  # a sampler state with gradients
        def __init__(self, x):
            self.position, self.logdensity_grad = x, jax.vmap(jax.grad(logdensity))(x)

    ad = nutpie_adaptation(n + 200, 0.8, logdensity)
    states, a, _ = ad.init(None, xs[0], lambda p, t: S(p))
    np.testing.assert_allclose(a.imm[0], 1 / np.abs(states.logdensity_grad[0]), rtol=1e-5)  # start: 1/|grad|
    update = jax.jit(lambda a, i, x: ad.update(a, i, S(x), {"acceptance_rate": jnp.full((1,), 0.8)}))
    for i in range(n):
        a = update(a, i, xs[i])
    expected = np.sqrt(np.diag(COV) / np.diag(prec))
    # the foreground holds the last >= 80 draws: ~10% error on each variance ratio
    np.testing.assert_allclose(np.asarray(a.imm[0]), expected, rtol=0.35)


def test_pathfinder_init_without_warmup():
    """Multi-path Pathfinder from uniform starts > 500 sd away: the chains start in the
    bulk with each path's L-BFGS inverse Hessian as metric (a Gaussian's covariance), so
    even without warmup the draws are right."""
    cfg = pp.NUTS(num_chains=2, num_warmup=0, num_samples=1000, mass_matrix="dense", init="pathfinder")
    x = _draws(_infer(cfg, seed=1))
    assert_matches_gaussian(x)
    assert np.all(np.abs(np.linalg.solve(np.linalg.cholesky(COV), (x[:, 0] - MU).T)) < 6)


def test_init_from_a_laplace_result_without_warmup_and_without_recompiling():
    lap = pp.infer(gaussian, MU, method=pp.Laplace(), progress=False)
    # no warmup at all: the chains start at Laplace draws with its covariance as the
    # metric (step size 1 in whitened units), so the draws are right from the first one
    cfg = pp.NUTS(num_chains=2, num_warmup=0, num_samples=1000, mass_matrix="dense", init_from=lap)
    idata = _infer(cfg)
    assert json.loads(idata.attrs["config"])["init_from"] == "a previous result"
    assert_matches_gaussian(_draws(idata))
    first = _draws(idata)[:, 0]  # first draws already within the bulk
    assert np.all(np.abs(np.linalg.solve(np.linalg.cholesky(COV), (first - MU).T)) < 6)
    # another Laplace result of the same model: the program is reused
    lap2 = pp.infer(gaussian, MU + 0.5 * SD, method=pp.Laplace(), progress=False)
    again = _infer(pp.NUTS(num_chains=2, num_warmup=0, num_samples=1000, mass_matrix="dense", init_from=lap2), seed=1)
    assert again.attrs["cache_hit"] == 1 and again.attrs["compile_time"] == 0.0
    assert_matches_gaussian(_draws(again))


def test_init_from_refuses_another_model():
    lap = pp.infer(gaussian, MU, method=pp.Laplace(), progress=False)

    def other():
        numpyro.sample("y", dist.Normal(0.0, 1.0).expand([3]).to_event(1))

    with pytest.raises(pp.ConfigError, match="init_from"):
        pp.infer(other, method=pp.NUTS(num_chains=1, num_warmup=10, num_samples=10, init_from=lap), progress=False)
    with pytest.raises(pp.ConfigError, match="alternatives"):
        pp.NUTS(init="pathfinder", init_from=lap)


# -- contracts with the BlackJAX pieces we drive ------------------------------------
def _params(fn):
    return list(inspect.signature(fn).parameters)


def test_blackjax_contracts():
    from blackjax.adaptation.low_rank_adaptation import build_growing_window_schedule
    from blackjax.adaptation.metric_recipes import REGISTRY, seed_low_rank_sigma_from_grad
    from blackjax.adaptation.step_size import dual_averaging_adaptation
    from blackjax.mcmc.metrics import LowRankInverseMassMatrix
    from blackjax.vi.multipathfinder import multi_approximate

    init, update, final = dual_averaging_adaptation(0.8)
    s = update(init(1.0), 0.5)
    assert {"log_step_size", "log_step_size_avg"} <= set(s._fields) and jnp.shape(final(s)) == ()
    sched = np.asarray(build_growing_window_schedule(1000))
    assert sched.shape == (1000, 2) and sched[:, 1].sum() > 3 and sched[-1, 0] == 0
    core = REGISTRY["fisher_low_rank"].build_core(buffer_size=20)
    c = seed_low_rank_sigma_from_grad(core.init(3), jnp.array([1.0, 4.0, 0.25]))
    np.testing.assert_allclose(c.inverse_mass_matrix.sigma ** 2, [1.0, 0.25, 4.0], rtol=1e-6)
    update = jax.jit(core.update)
    for i in range(20):
        c = update(c, jnp.full(3, float(i % 5)) * jnp.array([1.0, 2.0, 3.0]), jnp.full(3, -float(i % 5)))
    assert {"draws_buffer", "grads_buffer", "buffer_idx"} <= set(c._fields) and int(c.buffer_idx) == 20
    c = jax.jit(core.final)(c)
    assert isinstance(c.inverse_mass_matrix, LowRankInverseMassMatrix) and c.buffer_idx == 0
    assert _params(multi_approximate)[:4] == ["rng_key", "logdensity_fn", "initial_positions", "num_samples"]
    # its state (samples, logp, logq, path_states.alpha / beta / gamma) is exercised by
    # test_pathfinder_init_without_warmup
