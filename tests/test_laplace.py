"""Laplace: exact on Gaussian targets, failures are loud."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl_posteriors as pp


def _gaussian_target(dim=4, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(dim, dim))
    cov = A @ A.T + dim * np.eye(dim)
    mean = rng.normal(size=dim)

    def m():
        numpyro.sample("x", dist.MultivariateNormal(mean, cov))

    return m, mean, cov


def test_exact_on_gaussian_target():
    m, mean, cov = _gaussian_target()
    idata = pp.infer(m, method=pp.Laplace(num_samples=4000), rng_key=jax.random.key(1))
    ap = idata.approximation
    np.testing.assert_allclose(ap["mean"].values, mean, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(ap["precision"].values, np.linalg.inv(cov), rtol=1e-8, atol=1e-10)
    # draws: means within 5 Monte Carlo standard errors
    x = idata.posterior["x"].values.reshape(-1, 4)
    se = np.sqrt(np.diag(cov) / x.shape[0])
    assert np.all(np.abs(x.mean(0) - mean) < 5 * se)
    d = np.diag(cov)
    se_cov = np.sqrt((np.outer(d, d) + cov**2) / x.shape[0])  # sd of a sample covariance entry
    assert np.all(np.abs(np.cov(x.T) - cov) < 5 * se_cov)
    # the normalised Gaussian has evidence exactly 1
    assert abs(idata.attrs["log_evidence"]) < 1e-8
    assert idata.attrs["status"] == "success" and idata.attrs["newton_decrement"] < 1e-6


def test_conjugate_linear_regression_exact():
    """y = X b + e, b ~ N(0, s0² I), e ~ N(0, s²): posterior and evidence in closed form."""
    rng = np.random.default_rng(2)
    n, k, s, s0 = 30, 3, 0.7, 2.0
    X = rng.normal(size=(n, k))
    y = X @ np.array([1.0, -2.0, 0.5]) + s * rng.normal(size=n)

    def m(X, y=None):
        b = numpyro.sample("b", dist.Normal(0.0, s0).expand([k]).to_event(1))
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ b, s), obs=y)

    idata = pp.infer(m, X, y=y, method="laplace")
    prec = X.T @ X / s**2 + np.eye(k) / s0**2
    post_mean = np.linalg.solve(prec, X.T @ y / s**2)
    ap = idata.approximation
    np.testing.assert_allclose(ap["mean"].values, post_mean, rtol=1e-9)
    np.testing.assert_allclose(ap["precision"].values, prec, rtol=1e-9)
    marg_cov = s0**2 * X @ X.T + s**2 * np.eye(n)
    log_z = dist.MultivariateNormal(jnp.zeros(n), marg_cov).log_prob(y)
    np.testing.assert_allclose(idata.attrs["log_evidence"], log_z, rtol=1e-9)
    assert idata.posterior["b"].shape == (1, 1000, 3)
    assert idata.log_likelihood["y"].shape == (1, 1000, 30)


def test_jacobian_false_finds_the_constrained_mode():
    """Gamma(a, b) posterior of a positive scale: constrained mode (a-1)/b vs unconstrained mode a/b."""
    a, b = 5.0, 2.0

    def m():
        numpyro.sample("lam", dist.Gamma(a, b))

    with_j = pp.infer(m, method=pp.Laplace(jacobian=True))
    without = pp.infer(m, method=pp.Laplace(jacobian=False))
    np.testing.assert_allclose(np.exp(with_j.approximation["mean"].values), a / b, rtol=1e-8)
    np.testing.assert_allclose(np.exp(without.approximation["mean"].values), (a - 1) / b, rtol=1e-8)
    assert with_j.attrs["jacobian"] == 1 and without.attrs["jacobian"] == 0


def test_indefinite_hessian_raises():
    """A symmetric bimodal target started at its central minimum: no Gaussian exists there."""

    def m():
        x = numpyro.sample("x", dist.Normal(0.0, 10.0))
        numpyro.factor("modes", jnp.logaddexp(-0.5 * (x - 3) ** 2, -0.5 * (x + 3) ** 2))

    with pytest.raises(pp.NumericalError, match="not positive definite") as e:
        pp.infer(m, method="laplace")
    assert e.value.status is pp.Status.INDEFINITE_CURVATURE
    assert e.value.idata.attrs["status"] == "indefinite_curvature"
    # throw=False keeps the result, status recorded, draws not silently collapsed to the MAP
    with pytest.warns(pp.NumericalWarning, match="indefinite_curvature"):
        idata = pp.infer(m, method=pp.Laplace(throw=False))
    assert idata.attrs["status"] == "indefinite_curvature"
    assert np.all(np.isnan(idata.posterior["x"].values))


def test_map_not_converged_raises():
    X = np.random.default_rng(0).normal(size=(50, 5))
    y = (X[:, 0] > 0).astype(np.int32)
    from ppl_posteriors.examples import logistic_regression

    with pytest.raises(pp.NumericalError, match="MAP search stopped") as e:
        pp.infer(logistic_regression, X, y=y, method=pp.Laplace(max_steps=1))
    assert e.value.status is pp.Status.MAP_NOT_CONVERGED


def test_funnel_is_flagged_not_silent(eight_schools_data):
    """Centred eight schools has no interior mode (density grows as tau -> 0)."""
    from ppl_posteriors.examples import eight_schools_centered

    d = eight_schools_data
    with pytest.raises(pp.NumericalError) as e:
        pp.infer(eight_schools_centered, d["sigma"], y=d["y"], method="laplace")
    assert e.value.status in (pp.Status.MAP_NOT_CONVERGED, pp.Status.INDEFINITE_CURVATURE, pp.Status.NON_FINITE)


def test_poor_approximation_warns_with_khat(eight_schools_data):
    from ppl_posteriors.examples import eight_schools_noncentered

    d = eight_schools_data
    with pytest.warns(pp.NumericalWarning, match="PSIS k-hat"):
        idata = pp.infer(eight_schools_noncentered, d["sigma"], y=d["y"], method="laplace")
    assert idata.attrs["psis_khat"] > 0.7 and idata.attrs["status"] == "poor_approximation"


def test_laplace_config_errors():
    with pytest.raises(pp.ConfigError, match="num_samples"):
        pp.Laplace(num_samples=0)
    with pytest.raises(pp.ConfigError, match="num_sample.*did you mean 'num_samples'"):
        pp.Laplace(num_sample=10)


def test_mode_at_the_edge_of_the_unconstrained_space_is_not_silent(eight_schools_data):
    """Without the Jacobian, eight schools' mode has tau -> 0: draws overflow, and that is reported."""
    from ppl_posteriors.examples import eight_schools_noncentered

    d = eight_schools_data
    with pytest.raises(pp.NumericalError) as e:
        pp.infer(eight_schools_noncentered, d["sigma"], y=d["y"], method=pp.Laplace(jacobian=False))
    assert e.value.status in (pp.Status.NON_FINITE, pp.Status.MAP_NOT_CONVERGED, pp.Status.INDEFINITE_CURVATURE)
