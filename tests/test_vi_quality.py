"""VI quality checks (sbi's "prop" R²), true resume from the stored optimiser state, the
cosine-annealed default optimiser and the MAP / Laplace starts.

Exact answers: the R² formula against a direct least-squares fit; resumed fits against
one uninterrupted fit (same keys, same optimiser state: equal to round-off); the
Laplace start on a conjugate Gaussian model, where N(mode, H⁻¹) is the posterior.
"""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import ppl_posteriors as pp
from ppl_posteriors.vi.fit import fit as vi_fit
from ppl_posteriors.vi.quality import prop_r2

pytestmark = pytest.mark.filterwarnings("ignore::ppl_posteriors.NumericalWarning")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(30, 2))
Y = X @ np.array([1.0, -0.5]) + RNG.normal(size=30)
OPT = optax.adam(1e-2)  # one object: configs that hold it are equal (compile once)
SCHED = optax.adam(optax.cosine_decay_schedule(2e-2, 1000))


def linreg(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    numpyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)


def exact_posterior():
    prec = np.eye(2) + X.T @ X
    cov = np.linalg.inv(prec)
    return cov @ X.T @ Y, cov, prec


# ----------------------------------------------------------------------------- prop


def test_prop_r2_is_the_least_squares_r2_through_the_origin():
    lq = RNG.normal(size=200)
    lp = lq + 0.3 * RNG.normal(size=200) + 7.0  # unnormalised: the shift must not matter
    x, y = np.exp(lq), np.exp(lp)
    w = np.linalg.lstsq(x[:, None], y, rcond=None)[0][0]
    expected = 1 - np.sum((y - w * x) ** 2) / np.sum((y - y.mean()) ** 2)
    assert prop_r2(lp, lq) == pytest.approx(expected, rel=1e-10)
    assert prop_r2(lq + 3.0, lq) == pytest.approx(1.0, abs=1e-12)  # q ∝ p
    assert prop_r2(-lq, lq) < 0.5  # anti-proportional


def test_quality_option_stores_prop_and_or_khat():
    base = dict(num_steps=300, num_samples=100, init="laplace", optimizer=OPT, num_quality_draws=1000)
    both = pp.infer(linreg, X, Y, method=pp.FullRankVI(quality="both", **base), rng_key=0, progress=False)
    assert both.attrs["prop_r2"] > 0.9 and "psis_khat" in both.attrs  # Gaussian posterior, full-rank q
    only = pp.infer(linreg, X, Y, method=pp.FullRankVI(quality="prop", **base), rng_key=0, progress=False)
    assert "psis_khat" not in only.attrs and only.attrs["prop_r2"] == both.attrs["prop_r2"]
    assert only.attrs["cache_hit"] == 1  # quality is checked on the host: not part of the compile key
    # a guide far from the posterior fails the check and says so
    bad = pp.infer(linreg, X, Y, method=pp.MeanFieldVI(num_steps=1, optimizer=optax.sgd(0.0), init_scale=3.0,
                                                       quality="prop", num_samples=100), progress=False)
    assert bad.attrs["prop_r2"] < 0.5 and bad.attrs["status"] != "success"  # one step: not_converged is worse
    assert "prop check" in bad.attrs["status_messages"]


# ----------------------------------------------------------------------------- resume


def test_two_resumed_halves_equal_one_fit(tmp_path):
    """Full-rank with an optax schedule over 1000 steps: 500 + 500 resumed (after to_netcdf)
    take exactly the steps of one fit of 1000, schedule included."""
    cfg = dict(optimizer=SCHED, average_fraction=0.0, num_samples=10, num_quality_draws=100)
    one = pp.infer(linreg, X, Y, method=pp.FullRankVI(num_steps=1000, **cfg), rng_key=3, progress=False)
    half = pp.infer(linreg, X, Y, method=pp.FullRankVI(num_steps=500, **cfg), rng_key=3, progress=False)
    path = tmp_path / "half.nc"
    half.to_netcdf(str(path))
    stored = az.from_netcdf(str(path))
    two = pp.infer(linreg, X, Y, method=pp.FullRankVI(num_steps=500, init_from=stored, **cfg), rng_key=3,
                   progress=False)
    assert two.attrs["resumed"] == 1 and two.attrs["num_steps_total"] == 1000
    for name in ("mean", "scale_tril", "resume_opt_state", "resume_params"):
        np.testing.assert_allclose(two.approximation[name].values, one.approximation[name].values,
                                   rtol=1e-9, atol=1e-12)
    # the objective trace continues too
    np.testing.assert_allclose(two.approximation["elbo"].values, one.approximation["elbo"].values[500:], rtol=1e-9)
    # another optimiser cannot take the stored state: it restarts from the stored guide, and says so
    again = pp.infer(linreg, X, Y, method=pp.FullRankVI(num_steps=5, num_samples=10, num_quality_draws=100,
                                                        optimizer=optax.sgd(1e-3), init_from=half), progress=False)
    assert again.attrs["resumed"] == 0 and "restarted the optimiser" in again.attrs["status_messages"]


def test_fit_continues_from_a_saved_state():
    """fit() itself: n steps, then m more from (last_params, opt_state, start=n) == n + m steps."""

    def loss(p, key):
        z = p["a"] + jax.random.normal(key, (4,))
        value = jnp.sum(z**2)
        return value, value

    p0 = {"a": jnp.ones(4)}
    key = jax.random.key(5)
    full = vi_fit(loss, p0, SCHED, 60, key)
    a = vi_fit(loss, p0, SCHED, 25, key)
    b = vi_fit(loss, a.last_params, SCHED, 35, key, opt_state=a.opt_state, start=a.step)
    np.testing.assert_allclose(b.last_params["a"], full.last_params["a"], rtol=1e-12)
    assert int(b.step) == 60


# ----------------------------------------------------------------------------- defaults and starts


def test_cosine_annealing_scales_the_steps():
    """With sgd(1) on a loss of gradient 1 the parameter moves by -Σ_i f_i, with
    f_i = a + (1 - a) ½(1 + cos(π i / m)) over the m = n - num_average annealed steps and
    the floor a after them (the averaging window)."""
    from ppl_posteriors.vi.fit import ANNEAL_FLOOR as a

    def loss(p, key):
        return p, p

    n, num_average = 10, 3
    m = n - num_average
    res = vi_fit(loss, jnp.zeros(()), optax.sgd(1.0), n, jax.random.key(0), None, num_average, anneal=True)
    f = [a + (1 - a) * 0.5 * (1 + np.cos(np.pi * min(i, m) / m)) for i in range(n)]
    assert float(res.last_params) == pytest.approx(-sum(f), rel=1e-12)


@pytest.mark.parametrize("cls", [pp.FullRankVI, pp.MeanFieldVI, pp.LowRankVI])
def test_laplace_start_is_the_posterior_on_a_gaussian_model(cls):
    """On a conjugate linear regression N(mode, H⁻¹) is the posterior: a fit that does not
    move (sgd(0)) returns it (mean-field: σ_i = H_ii^(-1/2), its reverse-KL optimum)."""
    mean, cov, prec = exact_posterior()
    kw = {"rank": 1} if cls is pp.LowRankVI else {}
    res = pp.infer(linreg, X, Y, method=cls(num_steps=1, optimizer=optax.sgd(0.0), init="laplace", num_samples=10,
                                            num_quality_draws=100, **kw), progress=False)
    a = res.approximation
    np.testing.assert_allclose(a["mean"].values, mean, rtol=1e-6)
    if cls is pp.FullRankVI:
        L = a["scale_tril"].values
        np.testing.assert_allclose(L @ L.T, cov, rtol=1e-6)
    elif cls is pp.MeanFieldVI:
        np.testing.assert_allclose(a["scale"].values, np.diag(prec) ** -0.5, rtol=1e-6)
    else:  # rank 1 of 2 + diagonal: the marginal sds are matched
        np.testing.assert_allclose(a["scale"].values, np.sqrt(np.diag(cov)), rtol=1e-6)
    assert res.attrs["init"] == "laplace"


def test_map_start_and_option_errors():
    mean, _, _ = exact_posterior()
    res = pp.infer(linreg, X, Y, method=pp.MeanFieldVI(num_steps=1, optimizer=optax.sgd(0.0), init="map",
                                                       init_scale=0.3, num_samples=10), progress=False)
    np.testing.assert_allclose(res.approximation["mean"].values, mean, rtol=1e-6)
    np.testing.assert_allclose(res.approximation["scale"].values, 0.3)
    for bad, match in [(dict(init="mode"), "init"), (dict(quality="khat"), "quality"),
                       (dict(lr_schedule="linear"), "lr_schedule"), (dict(learning_rate=0.0), "learning_rate"),
                       (dict(num_quality_draws=5), "num_quality_draws")]:
        with pytest.raises(pp.ConfigError, match=match):
            pp.MeanFieldVI(**bad)


def test_flow_with_a_triangular_affine_layer_starts_at_laplace_and_reloads():
    mean, cov, _ = exact_posterior()
    cfg = pp.FlowVI(flow="maf", flow_layers=1, nn_width=4, affine="triangular", init="laplace", num_steps=1,
                    optimizer=optax.sgd(0.0), num_samples=10)
    res = pp.infer(linreg, X, Y, method=cfg, progress=False)
    draws = pp.sample_approximation(res, 0, 20000).unconstrained_posterior["w"].values[0]
    # one MAF layer at its random init is near, not at, the identity: the moments are close
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.1 * np.sqrt(np.diag(cov)).max() + 0.05)
    with pytest.raises(pp.ConfigError, match="affine"):
        pp.FlowVI(affine="full")
    with pytest.raises(pp.ConfigError, match="init_loc_fn"):
        pp.NumPyroGuideVI(init="laplace")
