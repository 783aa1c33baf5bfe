"""Laplace: exact on Gaussian targets, failures are loud."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints

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
    # every start finds the one mode
    assert idata.attrs["num_starts"] == 4
    assert idata.attrs["map_starts_converged"] == 4 and idata.attrs["map_starts_at_mode"] == 4


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


def _bimodal(c=3.0):
    """A symmetric bimodal target whose origin is a stationary point with negative curvature."""

    def m():
        x = numpyro.sample("x", dist.Normal(0.0, 10.0))
        numpyro.factor("modes", jnp.logaddexp(-0.5 * (x - c) ** 2, -0.5 * (x + c) ** 2))

    return m


def test_starts_are_random_draws_not_the_origin():
    """Stan-style uniform(-2, 2) starts, a new set per key; init_radius=0 is the origin."""
    from ppl_posteriors.density import model_template
    from ppl_posteriors.runtime import Runtime

    cfg = pp.Laplace(num_starts=5, num_samples=10, throw=False)
    rt = Runtime(*model_template(_bimodal(), (), {}), cfg)
    starts = cfg.run(jax.random.key(0), rt).info["map_starts"]
    assert starts.shape == (5, 1) and np.all(np.abs(starts) < 2) and np.all(starts != 0)
    assert len(np.unique(starts)) == 5
    other = cfg.run(jax.random.key(1), rt).info["map_starts"]
    assert not np.allclose(starts, other)
    # the origin of this target is a stationary point (the old single start stopped there)
    with pytest.warns(pp.NumericalWarning, match="PSIS k-hat"):  # one Gaussian for two modes
        idata = pp.infer(_bimodal(), method="laplace")
    np.testing.assert_allclose(np.abs(idata.approximation["mean"].values), 3.0 * 100 / 101, rtol=1e-6)
    assert idata.attrs["status"] == "poor_approximation" and idata.attrs["map_starts_converged"] == 4


def test_saddle_at_a_stationary_point_is_indefinite_curvature():
    """Started exactly at the bimodal target's central stationary point (gradient exactly 0)."""
    m = _bimodal()
    with pytest.raises(pp.NumericalError, match="not positive definite.*saddle.*'x'") as e:
        pp.infer(m, method=pp.Laplace(init_radius=0.0))
    assert e.value.status is pp.Status.INDEFINITE_CURVATURE
    assert e.value.idata.attrs["status"] == "indefinite_curvature"
    assert e.value.idata.attrs["map_max_abs_grad"] < 1e-12
    # throw=False keeps the result, status recorded, draws not silently collapsed to the MAP
    with pytest.warns(pp.NumericalWarning, match="indefinite_curvature"):
        idata = pp.infer(m, method=pp.Laplace(throw=False, init_radius=0.0))
    assert idata.attrs["status"] == "indefinite_curvature"
    assert np.all(np.isnan(idata.posterior["x"].values))


def test_flat_direction_is_indefinite_curvature_naming_the_site():
    """An improper flat site that nothing depends on: zero curvature everywhere, zero gradient."""

    def m(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("u", dist.ImproperUniform(constraints.real, (), ()))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(pp.NumericalError, match="flat along 'u'") as e:
        pp.infer(m, y=1.0, method="laplace")
    assert e.value.status is pp.Status.INDEFINITE_CURVATURE
    attrs = e.value.idata.attrs
    assert attrs["map_starts_converged"] == 4 and attrs["map_max_abs_grad"] < 1e-8


class _NormLogDensity(dist.Distribution):
    """log p(x) = -|x|^2 / 2 written with jnp.linalg.norm, whose gradient is NaN at x = 0."""

    support = constraints.real_vector

    def __init__(self, dim):
        super().__init__(event_shape=(dim,))

    def log_prob(self, value):
        return -0.5 * jnp.linalg.norm(value, axis=-1) ** 2

    def sample(self, key, sample_shape=()):
        return jax.random.normal(key, sample_shape + self.event_shape)


def test_custom_distribution_with_nan_gradient_at_the_origin():
    """Old behaviour: the single start at the origin gave "indefinite curvature, eigenvalue nan"."""
    y = np.array([1.0, 2.0])

    def m(y=None):
        x = numpyro.sample("x", _NormLogDensity(2))
        numpyro.sample("y", dist.Normal(x, 1.0).to_event(1), obs=y)

    ld = pp.log_density(m, y=y)
    assert not np.all(np.isfinite(jax.grad(ld.logdensity_fn)(ld.init_position)["x"]))
    idata = pp.infer(m, y=y, method="laplace")
    assert idata.attrs["status"] == "success"
    np.testing.assert_allclose(idata.approximation["mean"].values, y / 2, rtol=1e-8)
    np.testing.assert_allclose(idata.approximation["precision"].values, 2 * np.eye(2), rtol=1e-8, atol=1e-12)


def test_non_finite_term_or_gradient_names_the_site():
    def nan_term():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.factor("broken", jnp.log(-1.0 - x**2))  # NaN for every x

    with pytest.raises(pp.NumericalError, match="no starting point.*term of 'broken' = nan") as e:
        pp.infer(nan_term, method="laplace")
    assert e.value.status is pp.Status.NON_FINITE
    assert e.value.idata.attrs["map_starts_finite"] == 0

    def nan_gradient():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        # the value is 0, but the unused branch puts 0 * NaN into the gradient
        numpyro.factor("kink", jnp.where(x > -100.0, 0.0, jnp.sqrt(-1.0 - x**2)))

    with pytest.raises(pp.NumericalError, match="gradient with respect to 'x' is not finite") as e:
        pp.infer(nan_gradient, method="laplace")
    assert e.value.status is pp.Status.NON_FINITE


def test_site_terms_sum_to_the_log_density(eight_schools_data):
    from ppl_posteriors.examples import eight_schools_noncentered

    d = eight_schools_data
    for jacobian in (True, False):
        ld = pp.log_density(eight_schools_noncentered, d["sigma"], y=d["y"], jacobian=jacobian)
        pos = ld.unravel(jnp.linspace(-1.0, 1.0, ld.dim))
        terms = ld.site_terms(pos)
        assert set(terms) == {"mu", "tau", "theta_z", "y"}
        np.testing.assert_allclose(sum(terms.values()), ld.logdensity_fn(pos), rtol=1e-12)


# UC Berkeley admissions 1973 (McElreath, rethinking::UCBadmit): dept A-F x (male, female)
UCB_APPLICATIONS = np.array([825, 108, 560, 25, 325, 593, 417, 375, 191, 393, 373, 341])
UCB_ADMIT = np.array([512, 89, 353, 17, 120, 202, 138, 131, 53, 94, 22, 24])
UCB_MALE = np.array([1, 0] * 6)
UCB_DEPT = np.repeat(np.arange(6), 2)


def ucb_glmm(dept, male, applications, admit=None):
    """Binomial GLMM: non-centred varying intercepts and slopes by department, LKJ correlation."""
    a = numpyro.sample("a", dist.Normal(0.0, 1.5))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.Exponential(1.0).expand([2]).to_event(1))
    L = numpyro.sample("L", dist.LKJCholesky(2, 2.0))
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([6, 2]).to_event(2))
    v = (sigma[:, None] * (L @ z.T)).T
    logit = a + v[dept, 0] + (b + v[dept, 1]) * male
    numpyro.sample("admit", dist.Binomial(applications, logits=logit), obs=admit)


def test_multistart_finds_the_glmm_mode():
    """At the origin every logit is 0, where numpyro's Binomial(logits) gradient is wrong: the old
    single start never moved, hit max_steps and was reported as indefinite curvature."""
    args = (UCB_DEPT, UCB_MALE, UCB_APPLICATIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NumericalWarning)  # PSIS k-hat: a skewed posterior
        idata = pp.infer(ucb_glmm, *args, admit=UCB_ADMIT, method="laplace", rng_key=0)
    attrs = idata.attrs
    assert attrs["status"] in ("success", "poor_approximation")
    assert attrs["map_starts_converged"] >= 3 and attrs["map_starts_at_mode"] >= 3
    assert attrs["map_max_abs_grad"] < 1e-6 and attrs["newton_decrement"] < 1e-6
    # the gradient at the reported mode, recomputed from the model
    ld = pp.log_density(ucb_glmm, *args, admit=UCB_ADMIT)
    mode = jnp.asarray(idata.approximation["mean"].values)
    assert float(jnp.max(jnp.abs(jax.grad(ld.flat_logdensity_fn)(mode)))) < 1e-6
    np.testing.assert_allclose(ld.flat_logdensity_fn(mode), attrs["map_logdensity"], rtol=1e-12)
    assert np.all(np.linalg.eigvalsh(idata.approximation["precision"].values) > 0)
    # regression value of this model's mode (all four starts agree on it)
    np.testing.assert_allclose(attrs["map_logdensity"], -51.7713, atol=1e-3)


def test_map_not_converged_raises():
    X = np.random.default_rng(0).normal(size=(50, 5))
    y = (X[:, 0] > 0).astype(np.int32)
    from ppl_posteriors.examples import logistic_regression

    with pytest.raises(pp.NumericalError, match="no start reached a stationary point.*max_steps = 1") as e:
        pp.infer(logistic_regression, X, y=y, method=pp.Laplace(max_steps=1))
    assert e.value.status is pp.Status.MAP_NOT_CONVERGED


def test_max_steps_is_not_converged_even_where_the_curvature_is_indefinite():
    """Cauchy(10, 1): from starts in (-2, 2) the density is convex (-log p concave) until |x - 10| < 1,
    so after one BFGS step the Hessian is indefinite; the old order called that indefinite curvature."""

    def m():
        numpyro.sample("x", dist.Cauchy(10.0, 1.0))

    with pytest.raises(pp.NumericalError, match="max_steps") as e:
        pp.infer(m, method=pp.Laplace(max_steps=1))
    assert e.value.status is pp.Status.MAP_NOT_CONVERGED
    assert e.value.idata.attrs["map_starts_converged"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NumericalWarning)  # PSIS k-hat of a Cauchy: its tails
        idata = pp.infer(m, method="laplace")
    np.testing.assert_allclose(idata.approximation["mean"].values, 10.0, rtol=1e-8)
    np.testing.assert_allclose(idata.approximation["precision"].values, 2.0, rtol=1e-8)


def test_funnel_is_flagged_not_silent(eight_schools_data):
    """Centred eight schools has no interior mode (density grows as tau -> 0)."""
    from ppl_posteriors.examples import eight_schools_centered

    d = eight_schools_data
    with pytest.raises(pp.NumericalError, match="edge of the unconstrained space.*'tau' at z = -1") as e:
        pp.infer(eight_schools_centered, d["sigma"], y=d["y"], method="laplace")
    assert e.value.status is pp.Status.MAP_NOT_CONVERGED


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
    with pytest.raises(pp.ConfigError, match="num_starts"):
        pp.Laplace(num_starts=0)
    with pytest.raises(pp.ConfigError, match="init_radius"):
        pp.Laplace(init_radius=-1.0)


def test_mode_at_the_edge_of_the_unconstrained_space_is_not_silent(eight_schools_data):
    """Without the Jacobian, eight schools' supremum is at tau -> 0: the gradient vanishes as the search
    runs off, but there is no interior mode, and that is reported, naming the site."""
    from ppl_posteriors.examples import eight_schools_noncentered

    d = eight_schools_data
    with pytest.raises(pp.NumericalError, match="no interior mode.*'tau' at z = -1.*tau → 0") as e:
        pp.infer(eight_schools_noncentered, d["sigma"], y=d["y"], method=pp.Laplace(jacobian=False))
    assert e.value.status is pp.Status.MAP_NOT_CONVERGED


def test_stationarity_by_cholesky_equals_the_eigendecomposition():
    """λ by one triangular solve (H positive definite) equals sqrt(gᵀ|H|⁻¹g) by eigh; an
    indefinite H takes the saddle-free eigh branch."""
    from ppl_posteriors.laplace.mode import stationarity

    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    g = rng.normal(size=6)
    for h in (a @ a.T + 0.1 * np.eye(6), a + a.T):  # positive definite, then indefinite
        w, v = np.linalg.eigh(h)
        exact = np.sqrt(np.sum((v.T @ g) ** 2 / np.abs(w)))
        np.testing.assert_allclose(stationarity(jnp.asarray(g), jnp.asarray(h)), exact, rtol=1e-10)


def test_multistart_runs_eigh_only_in_a_branch():
    """No LAPACK eigh outside a cond branch in the multistart program: positive definite end
    points never run it, and it is never batched over starts (batched eigh calls can
    deadlock XLA:CPU's 2-thread pool)."""
    from ppl_posteriors.laplace.mode import find_map_multistart

    def f(x):
        return -0.5 * jnp.sum(x**2 * jnp.arange(1.0, 4.0))

    jaxpr = jax.make_jaxpr(lambda x0: find_map_multistart(f, x0, max_steps=5))(jnp.ones((3, 3)))

    def eigh_outside_cond(jx):
        n = 0
        for eqn in jx.eqns:
            if eqn.primitive.name == "cond":
                continue
            n += eqn.primitive.name == "eigh"
            for p in eqn.params.values():
                for cj in (p if isinstance(p, (list, tuple)) else [p]):
                    inner = getattr(cj, "jaxpr", None)
                    if inner is not None:
                        n += eigh_outside_cond(getattr(inner, "jaxpr", inner))
        return n

    assert eigh_outside_cond(jaxpr.jaxpr) == 0
    res = find_map_multistart(f, jnp.ones((3, 3)))
    assert np.all(np.asarray(res.starts.decrement) < 1e-8) and np.all(np.asarray(res.at_mode))
