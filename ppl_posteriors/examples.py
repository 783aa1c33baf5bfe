"""Example NumPyro models used by the demo, the notebooks and the benchmarks."""

from __future__ import annotations

import numpyro
import numpyro.distributions as dist

from .datasets import eight_schools as _eight_schools_data
from .model.decorator import model

__all__ = ["eight_schools_centered", "eight_schools_noncentered", "logistic_regression"]

_SCHOOLS = _eight_schools_data()["schools"]


def logistic_regression(X, y=None):
    """Bayesian logistic regression: b0 ~ N(0, 5), w ~ N(0, 1), y ~ Bernoulli(logit = b0 + X w).

    X : (N, K) standardised features; y : (N,) in {0, 1}.
    """
    b0 = numpyro.sample("b0", dist.Normal(0.0, 5.0))
    with numpyro.plate("feature", X.shape[1]):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs_id", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=b0 + X @ w), obs=y)


@model(coords={"school": _SCHOOLS})
def eight_schools_noncentered(sigma, y=None):
    """Eight schools, non-centred: theta = mu + tau * theta_z, theta_z ~ N(0, 1)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", len(sigma)):
        theta_z = numpyro.sample("theta_z", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_z)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


@model(coords={"school": _SCHOOLS})
def eight_schools_centered(sigma, y=None):
    """Eight schools, centred: theta ~ N(mu, tau) (a funnel; NUTS reports divergences)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", len(sigma)):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)
