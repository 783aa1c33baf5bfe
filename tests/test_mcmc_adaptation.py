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


def _gaussian_buffer(cov, n, seed=0, pad=5):
    """(n + pad, D) draws of N(0, cov) and their exact log-density gradients -cov⁻¹x, padded with junk rows."""
    rng = np.random.default_rng(seed)
    x = rng.multivariate_normal(np.zeros(len(cov)), cov, size=n)
    g = -np.linalg.solve(cov, x.T).T
    junk = rng.normal(size=(pad, len(cov))) * 1e3  # rows past n must be masked out
    return jnp.asarray(np.vstack([x, junk])), jnp.asarray(np.vstack([g, junk]))


def _dense(sigma, U, lam):
    sigma, U, lam = map(np.asarray, (sigma, U, lam))
    return (sigma[:, None] * (np.eye(len(sigma)) + (U * (lam - 1.0)) @ U.T)) * sigma[None, :]


def test_low_rank_metric_recovers_a_gaussian_covariance_exactly():
    # Seyboldt et al. Thm 2.4: with D + 1 or more draws and the whole space spanned
    # (q = 2·rank = D), the Fisher estimate is the covariance, up to the γ = 1e-5 regularisation
    from ppl_posteriors.mcmc.mass_matrix import fisher_low_rank_metric

    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + 0.1 * np.eye(6)
    x, g = _gaussian_buffer(cov, 50)
    sigma, U, lam = fisher_low_rank_metric(x, g, 50, rank=3, cutoff=1.0)
    assert U.shape == (6, 6) and lam.shape == (6,)
    np.testing.assert_allclose(_dense(sigma, U, lam), cov, rtol=1e-3, atol=1e-6 * np.abs(cov).max())


def test_low_rank_metric_keeps_the_small_eigen_directions():
    # nutpie keeps every eigenvalue of the 2·rank subspace outside [1/c, c]; BlackJAX 1.7 keeps
    # the rank largest |λ - 1|, i.e. only large ones when there are as many large as rank
    from ppl_posteriors.mcmc.mass_matrix import fisher_low_rank_metric

    d = 20
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(d, d)))
    ev = np.ones(d)
    ev[:2], ev[2:4] = [100.0, 50.0], [0.01, 0.02]
    cov = (q * ev) @ q.T
    x, g = _gaussian_buffer(cov, 400, seed=3)
    sigma, U, lam = fisher_low_rank_metric(x, g, 400, rank=2)
    assert U.shape == (d, 4)
    lam = np.sort(np.asarray(lam))
    assert lam[0] < 0.5 and lam[1] < 0.5 and lam[-1] > 2 and lam[-2] > 2, lam
    # the preconditioned covariance (cond 1e4) is left with a condition number of about the
    # cutoff band's (eigenvalues in [1/2, 2] are not corrected); dropping the small
    # directions would leave ~100
    est = _dense(sigma, U, np.asarray(fisher_low_rank_metric(x, g, 400, rank=2)[2]))
    l_inv = np.linalg.inv(np.linalg.cholesky(est))
    rel = np.linalg.eigvalsh(l_inv @ cov @ l_inv.T)
    assert rel.max() / rel.min() < 10.0, rel


def test_mass_matrix_options():
    assert pp.NUTS(dense_mass=True) == pp.NUTS(mass_matrix="dense")  # the kept alias
    assert pp.NUTS(mass_matrix="dense").dense_mass
    assert pp.NUTS().mass_matrix == "auto"  # low_rank for 20 <= D <= 1000, else diag
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
    states, a, _ = ad.init(None, xs[0], lambda p, t: S(p), lambda: None)
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


def test_pathfinder_path_equals_blackjax_approximate_and_sample():
    """mcmc/init.py runs BlackJAX's Pathfinder with its iterations in lax.map (one matrix
    per LAPACK call): with the same keys it must give BlackJAX's vmapped result."""
    from blackjax.vi.pathfinder import approximate, sample

    from ppl_posteriors.mcmc import init

    prec = jnp.asarray(np.linalg.inv(COV))

    def logdensity(x):
        return -0.5 * (x - MU) @ prec @ (x - MU)

    k1, k2 = jax.random.split(jax.random.key(3))
    x0 = jnp.asarray(MU + 3 * SD)
    ref, _ = approximate(k1, logdensity, x0, init.PATHFINDER_DRAWS, maxiter=init.PATHFINDER_MAXITER,
                         maxcor=init.PATHFINDER_MAXCOR)
    ref_draws, ref_logq = sample(k2, ref, init.PATHFINDER_DRAWS)
    phi, logp, logq, alpha, beta, gamma = jax.jit(init._pathfinder_path, static_argnums=0)(logdensity, k1, k2, x0)
    for ours, theirs in [(alpha, ref.alpha), (beta, ref.beta), (gamma, ref.gamma), (phi, ref_draws),
                         (logq, ref_logq), (logp, jax.vmap(logdensity)(ref_draws))]:
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-8)


_PATHFINDER_8_CHAINS = """
import json, jax
jax.config.update("jax_enable_x64", True)
import numpy as np, numpyro, numpyro.distributions as dist
import ppl_posteriors as pp
from ppl_posteriors.results import compat

def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0).expand([10]).to_event(1))
    numpyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)

out = pp.infer(model, np.arange(10.0), method=pp.NUTS(num_chains=8, num_warmup=100, num_samples=100,
               init="pathfinder"), progress=False)
x = np.asarray(compat.get_group(out, "posterior")["mu"].values)
print("RESULT", json.dumps({"mean": x.mean((0, 1)).tolist(), "ess": compat.ess(x, "bulk").tolist()}))
"""


def test_pathfinder_init_with_eight_chains_does_not_deadlock():
    """Regression: with BlackJAX's vmapped multi-path Pathfinder, 8 chains on a 10-D
    model gave batched LU and QR calls big enough for jaxlib 0.10 to split over the XLA:CPU
    thread pool; on 2 cores the two ran at once and each waited on the pool forever
    (every run). A fresh process, so that a hang cannot take the test session with it."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PPL_POSTERIORS_PROGRESS="0")
    try:
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", _PATHFINDER_8_CHAINS], env=env,
                             capture_output=True, text=True, timeout=240, check=True).stdout
    except subprocess.TimeoutExpired:
        pytest.fail("NUTS(init='pathfinder', num_chains=8) did not finish in 240 s (LAPACK pool deadlock?)")
    res = json.loads(out.split("RESULT")[1])
    # conjugate: mu_i | y ~ N(y_i 25/26, 25/26)
    mcse = np.sqrt(25 / 26) / np.sqrt(res["ess"])
    np.testing.assert_array_less(np.abs(np.array(res["mean"]) - np.arange(10.0) * 25 / 26), 5 * mcse)


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



def test_low_rank_metric_is_recomputed_only_at_window_ends(monkeypatch):
    # the recompute sits under a lax.cond whose predicate is the (unbatched) schedule row: a
    # predicate batched over the vmapped chains would turn it into a select, run every step
    import numpy as _np
    from blackjax.adaptation.low_rank_adaptation import build_growing_window_schedule

    from ppl_posteriors.mcmc import mass_matrix as mm
    from ppl_posteriors.mcmc.loop import run_chains

    calls = []
    real = mm.fisher_low_rank_metric

    def counted(*a, **k):
        jax.debug.callback(lambda: calls.append(1))
        return real(*a, **k)

    monkeypatch.setattr(mm, "fisher_low_rank_metric", counted)
    num_warmup, chains = 200, 2
    logdensity = lambda x: -0.5 * jnp.sum(x**2 / jnp.array([0.01, 1.0, 100.0]))  # noqa: E731
    adaptation = mm.low_rank_adaptation(num_warmup, 0.8, logdensity)
    res = run_chains(jax.random.key(0), jnp.ones((chains, 3)), sampler=pp.NUTS(mass_matrix="low_rank"),
                     logdensity_fn=logdensity, adaptation=adaptation, num_samples=5, restart_stuck=False)
    jax.block_until_ready(res.position)
    ends = int(_np.asarray(build_growing_window_schedule(num_warmup))[:, 1].sum())
    # the metric is computed chain by chain (lax.map: no batched LAPACK call), so the callback
    # runs once per chain per executed recompute; a select would run it at every step
    assert ends > 0 and len(calls) == ends * chains


def test_nuts_auto_mass_matrix_by_dimension():
    """mass_matrix="auto" (NUTS's default) is low_rank for 20 <= D <= 1000, else diag; the one
    used is in attrs, and the low-rank run recovers a correlated Gaussian's variances."""
    from ppl_posteriors.mcmc.mass_matrix import resolve_mass_matrix

    assert [resolve_mass_matrix("auto", d) for d in (19, 20, 1000, 1001)] == ["diag", "low_rank", "low_rank", "diag"]
    assert resolve_mass_matrix("dense", 50) == "dense" and pp.NUTS().mass_matrix == "auto"
    assert pp.NUTS(dense_mass=True).mass_matrix == "dense"

    d = 24
    rho = 0.9
    cov = rho * np.ones((d, d)) + (1 - rho) * np.eye(d)

    def gauss():
        numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(d), jnp.asarray(cov)))

    idata = pp.infer(gauss, method=pp.NUTS(num_warmup=500, num_samples=500), rng_key=0, progress=False)
    assert idata.attrs["mass_matrix"] == "low_rank" and idata.attrs["chain_layout"] == "lockstep"  # no mesh
    import arviz as az

    sd = idata.posterior["x"].values.reshape(-1, d).std(0, ddof=1)
    s_se = np.asarray(az.mcse(idata, var_names=["x"], method="sd")["x"].values)
    assert np.all(np.abs(sd - 1.0) < 5 * s_se), (sd, s_se)
    small = pp.infer(lambda: numpyro.sample("x", dist.Normal(0, 1).expand([3]).to_event(1)),
                     method=pp.NUTS(num_warmup=200, num_samples=200), rng_key=0, progress=False)
    assert small.attrs["mass_matrix"] == "diag"
