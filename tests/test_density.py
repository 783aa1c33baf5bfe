"""The log density: equal to NumPyro's potential, split recombines, pointwise sums,
constrain/unconstrain invert each other, dynamic supports, flat views."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import potential_energy

import ppl_posteriors as pp
from ppl_posteriors.density import initial_positions


def rich_model(x, y=None):
    """Constrained, vector, simplex, Cholesky-factor sites and a plate."""
    a = numpyro.sample("a", dist.Normal(0.0, 2.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    p = numpyro.sample("p", dist.Dirichlet(jnp.ones(3)))
    u = numpyro.sample("u", dist.Beta(2.0, 3.0))
    L = numpyro.sample("L", dist.LKJCholesky(2, 1.5))
    with numpyro.plate("n", x.shape[0]):
        mean = a + x * p[0] + u + L[1, 0]
        numpyro.deterministic("mean", mean)
        numpyro.sample("y", dist.Normal(mean, s), obs=y)


@pytest.fixture
def rich():
    rng = np.random.default_rng(1)
    x = rng.normal(size=7)
    y = 1.0 + 0.5 * x + rng.normal(size=7)
    return pp.log_density(rich_model, x, y=y), (x,), {"y": y}


def _random_position(ld, key):
    x = jax.random.normal(key, (ld.dim,))
    return ld.unravel(x)


def test_logdensity_equals_numpyro_potential(rich):
    ld, args, kwargs = rich
    for i in range(3):
        z = _random_position(ld, jax.random.key(i))
        ours = ld.logdensity_fn(z)
        ref = -potential_energy(rich_model, args, kwargs, z)
        np.testing.assert_allclose(ours, ref, rtol=1e-12)
        g_ours = jax.grad(ld.logdensity_fn)(z)
        g_ref = jax.grad(lambda q: -potential_energy(rich_model, args, kwargs, q))(z)
        for k in g_ref:
            np.testing.assert_allclose(g_ours[k], g_ref[k], rtol=1e-10, atol=1e-12)


def test_jacobian_false_is_density_of_constrained_values(rich):
    ld, args, kwargs = rich
    ld0 = pp.log_density(rich_model, *args, jacobian=False, **kwargs)
    z = _random_position(ld, jax.random.key(3))
    theta = ld.constrain(z)
    from numpyro.infer.util import log_density as np_log_density

    latent = {k: theta[k] for k in ("a", "s", "p", "u", "L")}
    ref, _ = np_log_density(rich_model, args, kwargs, latent)
    np.testing.assert_allclose(ld0.logdensity_fn(z), ref, rtol=1e-12)
    assert not ld0.jacobian and ld.jacobian


def test_split_recombines_into_logdensity(rich):
    ld, _, _ = rich
    z = _random_position(ld, jax.random.key(4))
    split = ld.split
    dists = split.observed_dists(z)
    assert set(dists) == {"y"} and isinstance(dists["y"], dist.Distribution)
    total = split.log_prior(z) + sum(
        jnp.sum(d.log_prob(split.observed[n])) for n, d in dists.items()
    )
    np.testing.assert_allclose(total, ld.logdensity_fn(z), rtol=1e-12)
    np.testing.assert_allclose(split.log_prior(z) + split.log_likelihood(z), ld.logdensity_fn(z), rtol=1e-12)
    # distributions are pytrees: the likelihood parameters can be linearised in z
    _, jvp = jax.linearize(lambda q: split.observed_dists(q)["y"].loc, z)
    assert jvp(jax.tree.map(jnp.ones_like, z)).shape == (7,)


def test_pointwise_loglik_sums_to_likelihood(rich):
    ld, _, _ = rich
    z = _random_position(ld, jax.random.key(5))
    pw = ld.pointwise_loglik(z)
    assert pw["y"].shape == (7,)
    np.testing.assert_allclose(pw["y"].sum(), ld.split.log_likelihood(z), rtol=1e-12)


def test_pointwise_strips_to_event():
    def m(y):
        mu = numpyro.sample("mu", dist.Normal())
        numpyro.sample("y", dist.Normal(mu, 1.0).expand([4]).to_event(1), obs=y)

    ld = pp.log_density(m, np.arange(4.0))
    pw = ld.pointwise_loglik({"mu": jnp.array(0.5)})["y"]
    np.testing.assert_allclose(pw, dist.Normal(0.5, 1.0).log_prob(np.arange(4.0)), rtol=1e-12)


def test_constrain_unconstrain_round_trip_and_deterministic(rich):
    ld, args, _ = rich
    z = _random_position(ld, jax.random.key(6))
    theta = ld.constrain(z)
    assert set(theta) == {"a", "s", "p", "u", "L", "mean"}
    assert theta["s"] > 0 and 0 < theta["u"] < 1
    np.testing.assert_allclose(theta["p"].sum(), 1.0, rtol=1e-12)
    expected_mean = theta["a"] + args[0] * theta["p"][0] + theta["u"] + theta["L"][1, 0]
    np.testing.assert_allclose(theta["mean"], expected_mean, rtol=1e-12)
    back = ld.unconstrain({k: v for k, v in theta.items() if k != "mean"})
    for k in z:
        np.testing.assert_allclose(back[k], z[k], rtol=1e-8, atol=1e-10)


def test_dynamic_support_uses_the_current_bound():
    """b ~ Uniform(0, a): the transform of b must follow the current a (not the initial one)."""

    def m():
        a = numpyro.sample("a", dist.LogNormal(0.0, 1.0))
        numpyro.sample("b", dist.Uniform(0.0, a))

    ld = pp.log_density(m)
    z = {"a": jnp.array(1.5), "b": jnp.array(0.3)}
    theta = ld.constrain(z)
    a = np.exp(1.5)
    np.testing.assert_allclose(theta["b"], a / (1 + np.exp(-0.3)), rtol=1e-12)
    # density of (log a, logit(b/a)) by hand
    s = 1 / (1 + np.exp(-0.3))
    lp = (
        dist.LogNormal(0.0, 1.0).log_prob(a) + np.log(a)  # a and its Jacobian
        - np.log(a) + np.log(a * s * (1 - s))  # Uniform(0, a) density and Jacobian of b
    )
    np.testing.assert_allclose(ld.logdensity_fn(z), lp, rtol=1e-12)


def test_scale_handler_is_applied():
    def m(y):
        mu = numpyro.sample("mu", dist.Normal())
        with numpyro.handlers.scale(scale=3.0):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    ld = pp.log_density(m, 0.7)
    z = {"mu": jnp.array(0.2)}
    expected = dist.Normal().log_prob(0.2) + 3 * dist.Normal(0.2, 1.0).log_prob(0.7)
    np.testing.assert_allclose(ld.logdensity_fn(z), expected, rtol=1e-12)
    np.testing.assert_allclose(ld.split.log_prior(z) + ld.split.log_likelihood(z), expected, rtol=1e-12)


def test_flat_views(rich):
    ld, _, _ = rich
    assert ld.dim == 1 + 1 + 2 + 1 + 1
    assert ld.param_names() == ["L[0]", "a", "p[0]", "p[1]", "s", "u"]
    x = jnp.arange(2 * 3 * ld.dim, dtype=float).reshape(2, 3, ld.dim)
    pos = ld.unravel(x)
    assert pos["p"].shape == (2, 3, 2) and pos["a"].shape == (2, 3)
    np.testing.assert_array_equal(ld.ravel(pos), x)
    flat_ravel, _ = jax.flatten_util.ravel_pytree(ld.unravel(x[0, 0]))
    np.testing.assert_array_equal(flat_ravel, x[0, 0])  # same order as ravel_pytree
    np.testing.assert_allclose(ld.flat_logdensity_fn(x[0, 0] / 10), ld.logdensity_fn(ld.unravel(x[0, 0] / 10)))


def test_initial_positions_are_finite_and_spread(rich):
    ld, _, _ = rich
    init = initial_positions(ld, jax.random.key(0), 5, radius=2.0)
    flat = ld.ravel(init)
    assert flat.shape == (5, ld.dim)
    assert np.all(np.abs(flat) <= 2.0) and np.unique(np.asarray(flat[:, 0])).size == 5
    assert np.all(np.isfinite(jax.vmap(ld.logdensity_fn)(init)))


def test_initial_positions_gives_up_with_a_model_error():
    def m():
        x = numpyro.sample("x", dist.Normal())
        numpyro.factor("never", jnp.where(x > 100.0, 0.0, -jnp.inf))

    ld = pp.log_density(m)
    with pytest.raises(pp.ModelError, match="no starting point"):
        initial_positions(ld, jax.random.key(0), 2, max_tries=3)
