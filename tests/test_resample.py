"""Importance resampling (PSIS-SIR) of Laplace and VI draws: ppl_posteriors.results.resample."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl_posteriors as pp
from ppl_posteriors.results.resample import (
    importance_resample,
    pool_size,
    psis_weights,
    systematic_resample,
)

# Poisson counts with a Gamma(1, 1) prior on the rate: the posterior is Gamma(1 + Σy, 1 + n)
Y = np.array([1, 0, 2])
A, B = 1.0 + Y.sum(), 1.0 + Y.size  # Gamma(4, 4): mean 1, sd 0.5, skewed


def _poisson_rate(y=None):
    lam = numpyro.sample("lam", dist.Gamma(1.0, 1.0))
    numpyro.sample("y", dist.Poisson(lam), obs=y)


def _lam(idata):
    return np.asarray(idata.posterior["lam"], dtype=np.float64).ravel()


def test_resampled_laplace_mean_matches_gamma_posterior():
    """Laplace on log λ is centred at log(a/b) with variance 1/a, so its draws of λ have mean
    (a/b) exp(1/(2a)) = 1.133 against the exact 1 (0.27 sd off); the PSIS-resampled draws'
    mean is within MCSE of 1, with MCSE = sd sqrt(1/M + 1/ESS) (resampling + weights)."""
    m = 2000
    exact_mean, exact_sd = A / B, np.sqrt(A) / B
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NumericalWarning)
        plain = pp.infer(_poisson_rate, y=Y, method=pp.Laplace(num_samples=m), rng_key=0, progress=False)
        res = pp.infer(_poisson_rate, y=Y, method=pp.Laplace(num_samples=m, importance_resampling=True),
                       rng_key=0, progress=False)
    a = res.attrs
    assert int(a["importance_resampling"]) == 1 and int(plain.attrs["importance_resampling"]) == 0
    assert int(a["resampling_pool"]) == pool_size(m, True) == 4 * m
    ess = float(a["resampling_ess"])
    assert 0.5 * a["resampling_pool"] < ess <= a["resampling_pool"]  # k-hat ~0.5: mild weights
    assert float(a["resampling_khat"]) < 0.7
    assert _lam(res).shape == (m,) and int(a["resampling_unique"]) <= m
    mcse_plain = _lam(plain).std() / np.sqrt(m)
    mcse = exact_sd * np.sqrt(1.0 / m + 1.0 / ess)
    assert abs(_lam(plain).mean() - exact_mean) > 6 * mcse_plain  # the mode-vs-mean bias: ~10 MCSE
    assert abs(_lam(res).mean() - exact_mean) < 3 * mcse
    assert abs(_lam(res).std() / exact_sd - 1.0) < 0.06  # plain: sd of a lognormal, 0.55 / 0.5 - 1 = 0.1


def test_systematic_resample_counts_are_floor_or_ceil():
    rng = np.random.default_rng(1)
    w = rng.gamma(0.3, size=50)
    w /= w.sum()
    for num in (7, 100, 1000):
        idx = systematic_resample(np.random.default_rng(num), w, num)
        counts = np.bincount(idx, minlength=w.size)
        assert counts.sum() == num
        assert np.all(counts >= np.floor(num * w) - 1e-9) and np.all(counts <= np.ceil(num * w) + 1e-9)


def test_psis_weights():
    lw = np.random.default_rng(2).normal(size=4000)
    w, khat = psis_weights(lw + 100.0)  # unnormalised: shift-invariant
    assert w.shape == (4000,) and np.isclose(w.sum(), 1.0) and np.all(w > 0)
    assert khat < 0.5  # log-normal weights with sd 1: light tail
    # the smoothing only touches the tail: the bulk keeps the raw ratios
    raw = np.exp(lw - lw.max())
    raw /= raw.sum()
    bulk = lw < np.quantile(lw, 0.9)
    np.testing.assert_allclose(w[bulk] / w[bulk].sum(), raw[bulk] / raw[bulk].sum(), rtol=1e-10)
    w0, k0 = psis_weights(np.full(100, 3.0))  # q equals p: equal weights
    np.testing.assert_allclose(w0, 0.01) and np.isneginf(k0)
    w1, _ = psis_weights(np.concatenate([lw, [-np.inf]]))  # zero posterior density: weight 0
    assert w1[-1] == 0.0
    with pytest.raises(ValueError, match="NaN"):
        psis_weights(np.array([0.0, np.nan]))


def test_heavy_tailed_weights_warn_and_nan_weights_skip():
    rng = np.random.default_rng(3)
    s = 4000
    lw = np.log(rng.pareto(0.8, size=s) + 1.0)  # Pareto tail with k = 1/0.8 = 1.25
    draws, lp = rng.normal(size=(s, 2)), rng.normal(size=s)
    with pytest.warns(pp.NumericalWarning, match="unreliable"):
        rs = importance_resample(draws, lp, lw, 500, jax.random.key(0))
    assert rs.info["resampling_khat"] > 0.7 and rs.messages and rs.draws.shape == (500, 2)
    # each returned row is a pool row, with its lp and log weight
    rows = {tuple(r): i for i, r in enumerate(draws)}
    j = np.array([rows[tuple(r)] for r in rs.draws])
    np.testing.assert_array_equal(rs.lp, lp[j])
    np.testing.assert_array_equal(rs.log_weight, lw[j])
    bad = lw.copy()
    bad[5] = np.nan
    with pytest.warns(pp.NumericalWarning, match="skipped"):
        rs = importance_resample(draws, lp, bad, 500, jax.random.key(0))
    assert rs.info["importance_resampling"] == 0
    np.testing.assert_array_equal(rs.draws, draws[:500])


def test_vi_importance_resampling_option():
    """The same option on the VI configs: a mean-field fit of the Gamma posterior on log λ
    (q Gaussian, p skewed): the resampled mean moves towards the exact mean."""
    m = 1000
    cfg = pp.MeanFieldVI(num_steps=1500, num_samples=m, optimizer=None, importance_resampling=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NumericalWarning)
        res = pp.infer(_poisson_rate, y=Y, method=cfg, rng_key=0, progress=False)
    a = res.attrs
    assert int(a["importance_resampling"]) == 1 and int(a["resampling_pool"]) == pool_size(m, True)
    assert float(a["resampling_khat"]) == pytest.approx(float(a["psis_khat"]))
    mcse = np.sqrt(A) / B * np.sqrt(1.0 / m + 1.0 / float(a["resampling_ess"]))
    assert abs(_lam(res).mean() - A / B) < 3.5 * mcse
