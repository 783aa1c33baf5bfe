"""Generalized VI (pp.GeneralizedVI): exact Gibbs posteriors, equality with standard VI,
forward-mode and score-function gradients, a small simulator, errors.

Exact answers: for a loss quadratic in θ with a Normal prior the Gibbs posterior
q* ∝ π(θ) exp(-loss(θ)/w) is Gaussian, so a Gaussian guide recovers it exactly up to
the optimiser's noise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import ppl_posteriors as pp
from ppl_posteriors.vi import estimators, gvi, meanfield, objectives

pytestmark = pytest.mark.filterwarnings("ignore::ppl_posteriors.NumericalWarning")  # short runs

Y = np.random.default_rng(0).normal(1.0, 1.0, size=20)
PRIOR_SD = 2.0


def prior(y):
    numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))


def full(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def nll(values, y):
    return -jnp.sum(dist.Normal(values["mu"], 1.0).log_prob(y))


def sq_loss(values, y):
    return 0.5 * jnp.sum((y - values["mu"]) ** 2)


def gibbs(w):
    prec = 1 / PRIOR_SD**2 + len(Y) / w
    return Y.sum() / w / prec, prec**-0.5


OPT = optax.adam(1e-2)


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_gibbs_posterior_recovered(w):
    cfg = pp.GeneralizedVI(loss=sq_loss, w=w, num_steps=2000, num_particles=8, optimizer=OPT, average_fraction=0.5)
    r = pp.infer(prior, Y, method=cfg, rng_key=0, progress=False)
    mean, sd = gibbs(w)
    assert r.attrs["kl"] == "analytic"
    np.testing.assert_allclose(r.approximation["mean"].values[0], mean, atol=0.05 * sd)
    np.testing.assert_allclose(r.approximation["scale"].values[0], sd, rtol=0.05)
    assert r.attrs["psis_khat"] < 0.5


def test_w1_nll_objective_equals_negative_elbo_at_fixed_params():
    """E_q[-log p(y|θ)] + KL(q‖π) with the Monte Carlo KL is -ELBO with the same draws,
    value and gradient, to float precision."""
    ld_prior = pp.log_density(prior, Y)
    ld_full = pp.log_density(full, Y)
    guide = meanfield.guide()
    params = meanfield.MeanFieldParams(jnp.array([0.3]), jnp.array([-1.0]))
    key = jax.random.key(3)

    def loss_flat(x):
        return nll(ld_prior.constrain(ld_prior.unravel(x)), Y)

    kl = gvi.kl_monte_carlo(guide, ld_prior.flat_logdensity_fn)
    elbo = objectives.resolve("elbo")

    def ours(p):
        return gvi.surrogate(guide, p, key, loss_flat, kl, 1.0, num_particles=5)[0]

    def standard(p):
        return estimators.surrogate(guide, elbo, "pathwise", p, key, ld_full.flat_logdensity_fn, 5, 1)[0]

    np.testing.assert_allclose(ours(params), standard(params), rtol=1e-5)
    g1, g2 = jax.grad(ours)(params), jax.grad(standard)(params)
    np.testing.assert_allclose(np.asarray(g1.loc), np.asarray(g2.loc), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(g1.log_scale), np.asarray(g2.log_scale), rtol=1e-4)


def test_closed_form_kl_matches_monte_carlo():
    ld = pp.log_density(prior, Y)
    guide = meanfield.guide()
    params = meanfield.MeanFieldParams(jnp.array([0.7]), jnp.array([0.4]))
    exact = gvi.kl_closed_form(guide, jnp.zeros(1), jnp.full(1, PRIOR_SD))(params, None, None)
    z, log_q = guide.sample_and_log_prob(jax.random.key(0), params, 200_000)
    per_draw = log_q - jax.vmap(ld.flat_logdensity_fn)(z)
    se = float(jnp.std(per_draw)) / np.sqrt(per_draw.shape[0])
    assert abs(float(jnp.mean(per_draw)) - float(exact)) < 4.5 * se


def test_w1_nll_same_optimum_as_standard_vi():
    cfg = dict(num_steps=3000, num_particles=8, optimizer=OPT, average_fraction=0.5)
    g = pp.infer(prior, Y, method=pp.GeneralizedVI(loss=nll, **cfg), rng_key=0, progress=False)
    s = pp.infer(full, Y, method=pp.MeanFieldVI(**cfg), rng_key=1, progress=False)
    mean, sd = gibbs(1.0)
    for r in (g, s):
        np.testing.assert_allclose(r.approximation["mean"].values[0], mean, atol=0.05 * sd)
        np.testing.assert_allclose(r.approximation["scale"].values[0], sd, rtol=0.05)
    np.testing.assert_allclose(g.approximation["mean"].values, s.approximation["mean"].values, atol=0.08 * sd)


# --------------------------------------------------------------------- a small simulator

T = np.linspace(0.0, 6.0, 150)
THETA_TRUE = np.array([0.5, -1.0])
SIGMA = 0.5
OBS = THETA_TRUE[0] + THETA_TRUE[1] * np.sin(T) + SIGMA * np.random.default_rng(1).normal(size=T.size)


def sim_prior(obs):
    numpyro.sample("theta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))


def simulate(theta):
    """A step-by-step simulator (lax.scan over 150 outputs): x_t = θ0 + θ1 sin(t)."""

    def step(carry, t):
        return carry, theta[0] + theta[1] * jnp.sin(t)

    return jax.lax.scan(step, 0.0, jnp.asarray(T))[1]


def sim_loss(values, obs):
    return 0.5 * jnp.sum((simulate(values["theta"]) - obs) ** 2) / SIGMA**2


def _sim_gibbs(w):
    a = np.stack([np.ones_like(T), np.sin(T)], -1)
    prec = np.eye(2) + a.T @ a / (w * SIGMA**2)
    cov = np.linalg.inv(prec)
    return cov @ (a.T @ OBS) / (w * SIGMA**2), np.sqrt(np.diag(cov))


@pytest.mark.parametrize("kw", [dict(), dict(diff_mode="forward", jacobian_chunk_size=1)])
def test_simulator_gibbs_posterior_fullrank(kw):
    w = 2.0
    cfg = pp.GeneralizedVI(loss=sim_loss, w=w, guide="fullrank", num_steps=3000, num_particles=8,
                           optimizer=OPT, average_fraction=0.5, **kw)
    r = pp.infer(sim_prior, OBS, method=cfg, rng_key=0, progress=False)
    mean, sd = _sim_gibbs(w)
    np.testing.assert_allclose(r.approximation["mean"].values, mean, atol=0.1 * sd.min())
    np.testing.assert_allclose(r.approximation["scale"].values, sd, rtol=0.08)


def test_forward_mode_gradient_equals_reverse_mode():
    ld = pp.log_density(sim_prior, OBS)
    guide = meanfield.guide()
    params = meanfield.MeanFieldParams(jnp.array([0.2, 0.1]), jnp.array([-0.5, -1.0]))
    kl = gvi.kl_monte_carlo(guide, ld.flat_logdensity_fn)

    def loss_flat(x):
        return sim_loss(ld.constrain(ld.unravel(x)), OBS)

    def grad(**kw):
        return jax.grad(lambda p: gvi.surrogate(guide, p, jax.random.key(5), loss_flat, kl, 2.0,
                                                num_particles=3, **kw)[0])(params)

    rev = grad()
    for chunk in (None, 1):
        fwd = grad(diff_mode="forward", jacobian_chunk_size=chunk)
        for a, b in zip(jax.tree.leaves(fwd), jax.tree.leaves(rev), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def _numpy_loss(values, obs):
    """A simulator outside JAX (numpy through a callback): it cannot be differentiated."""

    def host(theta, o):
        theta, o = np.asarray(theta), np.asarray(o)
        return np.asarray(0.5 * np.sum((theta[0] + theta[1] * np.sin(T) - o) ** 2) / SIGMA**2, np.float32)

    out = jax.ShapeDtypeStruct((), jnp.float32)
    return jax.pure_callback(host, out, values["theta"], obs, vmap_method="sequential")


def test_score_estimator_fits_a_non_differentiable_simulator():
    w = 2.0
    with pytest.raises(ValueError, match="[Pp]ure.callback"):  # reverse mode cannot differentiate it
        jax.grad(lambda th: _numpy_loss({"theta": th}, jnp.asarray(OBS, jnp.float32)))(jnp.zeros(2))
    cfg = pp.GeneralizedVI(loss=_numpy_loss, w=w, estimator="score", num_particles=16, num_steps=2500,
                           optimizer=OPT, average_fraction=0.5, num_samples=200)
    r = pp.infer(sim_prior, OBS.astype(np.float32), method=cfg, rng_key=0, progress=False)
    mean, sd = _sim_gibbs(w)
    assert r.attrs["grad_evals"] == 0
    np.testing.assert_allclose(r.approximation["mean"].values, mean, atol=0.3 * sd.min())
    np.testing.assert_allclose(r.approximation["scale"].values, sd, rtol=0.25)


def test_score_gradient_is_unbiased():
    """Mean of 4000 score-function gradient estimates = mean of pathwise ones (4.5 MCSE)."""
    ld = pp.log_density(prior, Y)
    guide = meanfield.guide()
    params = meanfield.MeanFieldParams(jnp.array([0.3]), jnp.array([-0.7]))
    kl = gvi.kl_closed_form(guide, jnp.zeros(1), jnp.full(1, PRIOR_SD))

    def loss_flat(x):
        return sq_loss(ld.constrain(ld.unravel(x)), Y)

    def grads(est):
        def one(k):
            g = jax.grad(lambda p: gvi.surrogate(guide, p, k, loss_flat, kl, 1.0, est, num_particles=4)[0])(params)
            return jnp.concatenate([g.loc, g.log_scale])

        return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), 4000)))

    score, path = grads("score"), grads("pathwise")
    se = np.sqrt(score.var(0) / len(score) + path.var(0) / len(path))
    assert np.all(np.abs(score.mean(0) - path.mean(0)) < 4.5 * se)


# --------------------------------------------------------------------- options and errors


def test_initialize_to_prior_fits_the_prior():
    """One main step after 1500 prior steps: q is the prior N(3, 2²)."""
    def p(y):
        numpyro.sample("mu", dist.Normal(3.0, 2.0))

    cfg = pp.GeneralizedVI(loss=sq_loss, initialize_to_prior=True, num_steps=1, prior_steps=1500,
                           optimizer=optax.adam(0.01), average_fraction=0.0, num_samples=10, throw=False)
    r = pp.infer(p, Y, method=cfg, rng_key=0, progress=False)
    np.testing.assert_allclose(r.approximation["mean"].values[0], 3.0, atol=0.02)  # one step of 0.01 after
    np.testing.assert_allclose(r.approximation["scale"].values[0], 2.0, rtol=0.05)


def test_monte_carlo_kl_for_hierarchical_or_constrained_priors():
    def hier(y):
        tau = numpyro.sample("tau", dist.HalfNormal(1.0))
        numpyro.sample("mu", dist.Normal(0.0, tau))

    cfg = pp.GeneralizedVI(loss=sq_loss, num_steps=200, num_samples=20)
    r = pp.infer(hier, Y, method=cfg, rng_key=0, progress=False)
    assert r.attrs["kl"] == "mc"
    with pytest.raises(pp.ConfigError, match="kl='analytic'"):
        pp.infer(hier, Y, method=pp.GeneralizedVI(loss=sq_loss, kl="analytic", num_steps=10), progress=False)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(loss="nll"), "loss"),
        (dict(loss=sq_loss, estimator="score"), "num_particles >= 2"),
        (dict(loss=sq_loss, jacobian_chunk_size=4), "diff_mode='forward'"),
        (dict(loss=sq_loss, w=0.0), "w"),
        (dict(loss=sq_loss, guide="meanfeild"), "meanfield"),
        (dict(loss=sq_loss, guide="bnaf", estimator="score", num_particles=4), "log q"),
        (dict(loss=sq_loss, guide="lowrank", guide_options={"rnak": 2}), "rank"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(pp.ConfigError, match=match):
        pp.GeneralizedVI(**kw)


def test_config_is_hashable_and_second_call_hits_the_cache():
    cfg = pp.GeneralizedVI(loss=sq_loss, guide="lowrank", guide_options={"rank": 1}, num_steps=50, num_samples=10)
    assert hash(cfg) == hash(pp.GeneralizedVI(loss=sq_loss, guide="lowrank", guide_options={"rank": 1},
                                              num_steps=50, num_samples=10))
    pp.infer(prior, Y, method=cfg, rng_key=0, progress=False)
    again = pp.infer(prior, Y + 1.0, method=cfg, rng_key=1, progress=False)
    assert again.attrs["cache_hit"] == 1
