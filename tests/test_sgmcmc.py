"""SG-MCMC (pp.SGLD, pp.SGHMC, pp.SGNHT, pp.BAOAB) on conjugate linear regression with known noise.

The posterior is Gaussian, N(μ, P⁻¹), P = XᵀX/σ² + I. The columns of X are orthogonal
with XᵀX = N I, so P = λ I (λ = N/σ² + 1 = 101) and every direction has the same step-size
bias. For a Gaussian target and a gradient that is linear in z, every kernel here is a
linear recursion driven by zero-mean noise (SGNHT: symmetric under z - μ -> μ - z), so
the stationary MEAN is exact: means are checked within 4 Monte Carlo standard errors
(ArviZ's MCSE of the draws, required to be below 0.06 of the target's sd so the check has
power). Standard deviations are checked against each kernel's known stationary sd, within
a stated bias allowance plus 4 MCSEs of the sd:

* SGLD, full data: exact discrete law, var = T / (λ (1 - ε λ / 2)) (ε λ = 0.1: +2.6% sd);
* BAOAB, full data: exact in θ for Gaussians at any stable step (Leimkuhler & Matthews 2013);
* SGHMC (BlackJAX): its linear recursion gives sd ratio 1.0067 at ε = 1e-3, L = 100
  (allowance 1.5%);
* SGNHT: no closed form; first-order in ε √λ = 0.1 (allowance 5%);
* minibatches (B = 20 of N = 100): the gradient noise of covariance v (at μ, sampling
  without replacement) raises the SGLD variance to (1 + ε v / 2) / (λ (1 - ε λ / 2)) to
  first order (Welling & Teh 2011, §5): the sd must lie between the full-data value and
  that prediction (+3% for its first-order error), each widened by 4 MCSEs. A missing or
  wrong N / B scale moves the sd by a factor ≈ √5 and fails.
"""

import warnings

import arviz as az
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl_posteriors as pp

N, B, SIGMA = 100, 20, 1.0


def _data():
    rng = np.random.default_rng(1)
    x = np.linalg.qr(rng.normal(size=(N, 2)))[0] * np.sqrt(N)  # XᵀX = N I
    return x, x @ np.array([1.0, -0.5]) + SIGMA * rng.normal(size=N)


X, Y = _data()
PREC = X.T @ X / SIGMA**2 + np.eye(2)
LAM = float(np.linalg.eigvalsh(PREC).max())
MEAN = np.linalg.solve(PREC, X.T @ Y / SIGMA**2)
SD = 1.0 / np.sqrt(np.diag(PREC))


def regression(x, y=None, subsample=None):
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with numpyro.plate("data", x.shape[0], subsample_size=subsample) as idx:
        numpyro.sample("y", dist.Normal(x[idx] @ b, SIGMA), obs=y[idx])


def batched(x, y=None):
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ b, SIGMA), obs=y)


def _check(idata, sd_low, sd_high):
    draws = idata.posterior["b"].values.reshape(-1, 2)
    mcse = az.mcse(idata, var_names=["b"])["b"].values
    mcse_sd = az.mcse(idata, var_names=["b"], method="sd")["b"].values
    assert np.all(mcse < 0.06 * sd_low), f"too few effective draws for the test to have power: {mcse / sd_low}"
    np.testing.assert_array_less(np.abs(draws.mean(0) - MEAN), 4 * mcse)
    sd = draws.std(0)
    assert np.all(sd > sd_low - 4 * mcse_sd) and np.all(sd < sd_high + 4 * mcse_sd), (sd / SD, sd_low / SD,
                                                                                      sd_high / SD)


def _infer(cfg, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NumericalWarning)  # ESS of the short runs
        return pp.infer(regression, X, y=Y, method=cfg, rng_key=0, progress=False, **kwargs)


EPS_SGLD = 0.1 / LAM  # ε λ = 0.1
SGLD_SD = SD / np.sqrt(1 - EPS_SGLD * LAM / 2)

FULL = {  # config, (allowed sd range in units of the exact sd)
    "sgld": (pp.SGLD(step_size=EPS_SGLD, num_warmup=300, num_samples=2000), SGLD_SD, SGLD_SD),
    "baoab": (pp.BAOAB(step_size=0.05, friction=10.0, num_warmup=300, num_samples=2000), SD, SD),
    "sghmc": (pp.SGHMC(step_size=1e-3, num_integration_steps=100, num_warmup=100, num_samples=500),
              SD, 1.015 * SD),
    # temperature T targets π^(1/T): the exact discrete SGLD variance times T
    "sgld_cold": (pp.SGLD(step_size=EPS_SGLD, temperature=0.25, num_warmup=300, num_samples=2000),
                  0.5 * SGLD_SD, 0.5 * SGLD_SD),
    "sgnht": (pp.SGNHT(step_size=0.01, num_warmup=5000, num_samples=4000), 0.95 * SD, 1.05 * SD),
}


@pytest.mark.parametrize("name", sorted(FULL))
def test_full_data_gradients_sample_the_exact_posterior_within_the_known_bias(name):
    cfg, low, high = FULL[name]
    idata = _infer(cfg)
    assert idata.posterior["b"].shape == (4, cfg.num_samples, 2)
    assert set(idata.sample_stats) >= {"lp", "step_size"}
    np.testing.assert_allclose(idata.sample_stats["step_size"].values, cfg.step_size)
    assert idata.attrs["status"] == "success" or idata.attrs["status"] == "poor_mixing"
    _check(idata, low, high)


def _sgld_minibatch_sd():
    """First-order stationary sd of SGLD with the minibatch gradient noise at μ."""
    g = X * (Y - X @ MEAN)[:, None] / SIGMA**2  # per-datum likelihood gradients (N, 2)
    v = N**2 / B * (N - B) / (N - 1) * g.var(axis=0, ddof=0)  # covariance of (N/B)·Σ_batch, without replacement
    return SD * np.sqrt((1 + EPS_SGLD * v / 2) / (1 - EPS_SGLD * LAM / 2))


def test_subsampled_plate_draws_fresh_minibatches_scaled_by_n_over_b():
    cfg = pp.SGLD(step_size=EPS_SGLD, num_warmup=300, num_samples=2000)
    idata = _infer(cfg, subsample=B)
    high = _sgld_minibatch_sd()
    assert np.all(high / SGLD_SD < 1.15)  # the minibatch noise is a modest effect at this step size
    _check(idata, SGLD_SD, 1.03 * high)


def test_batches_from_a_loader():
    epoch_rng = np.random.default_rng(3)

    def loader():
        order = epoch_rng.permutation(N)
        return iter([{"x": X[order[i : i + B]], "y": Y[order[i : i + B]]} for i in range(0, N, B)])

    # few steps (each is a host dispatch), many chains: burn-in contracts by (1 - ελ)^200
    cfg = pp.SGLD(step_size=EPS_SGLD, num_chains=8, num_warmup=200, num_samples=1200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NumericalWarning)
        idata = pp.infer(batched, method=cfg, batches=pp.Batches(loader, num_data=N), rng_key=0, progress=False)
    assert idata.attrs["batches_num_data"] == N
    _check(idata, SGLD_SD, 1.03 * _sgld_minibatch_sd())


def test_polynomial_schedule_and_thinning():
    cfg = pp.SGLD(step_size=0.01, schedule="polynomial", decay_offset=10.0, decay_power=0.6,
                  num_chains=2, num_warmup=7, num_samples=5, thinning=3)
    idata = _infer(cfg)
    assert idata.posterior["b"].shape == (2, 5, 2)
    t = 7 + 3 * np.arange(5) + 2  # the last step of each group of `thinning` after burn-in
    np.testing.assert_allclose(idata.sample_stats["step_size"].values, np.broadcast_to(0.01 * (10.0 + t) ** -0.6,
                                                                                      (2, 5)), rtol=1e-6)


def test_a_step_size_too_large_is_a_numerical_error_and_bad_options_are_config_errors():
    with pytest.raises(pp.NumericalError, match="lower step_size"):
        _infer(pp.SGLD(step_size=1.0, num_chains=1, num_warmup=300, num_samples=10))
    for bad in ({"step_size": 0.0}, {"schedule": "cosine"}, {"decay_power": 1.5}, {"thinning": 0},
                {"temperature": -1.0}):
        with pytest.raises(pp.ConfigError):
            pp.SGLD(**bad)
    with pytest.raises(pp.ConfigError, match="friction"):
        pp.BAOAB(friction=0.0)
