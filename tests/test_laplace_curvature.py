"""Laplace curvature x structure: exact checks against dense references (x64, 1e-6)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy.optimize import minimize_scalar

import ppl_posteriors as pp
from ppl_posteriors.laplace.curvature import curvature_ops
from ppl_posteriors.laplace.kfac import kfac_factors

pytestmark = pytest.mark.filterwarnings("ignore::ppl_posteriors.NumericalWarning")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(25, 3))


def _glm(family):
    def m(X, y=None):
        b = numpyro.sample("b", dist.Normal(0.0, 1.5).expand([3]).to_event(1))
        eta = X @ b
        with numpyro.plate("n", X.shape[0]):
            if family == "normal":
                numpyro.sample("y", dist.Normal(eta, 0.7), obs=y)
            elif family == "bernoulli_logits":
                numpyro.sample("y", dist.Bernoulli(logits=eta), obs=y)
            elif family == "bernoulli_probs":
                numpyro.sample("y", dist.Bernoulli(probs=jax.nn.sigmoid(eta)), obs=y)
            elif family == "poisson":
                numpyro.sample("y", dist.Poisson(jnp.exp(eta)), obs=y)
            elif family == "binomial":
                numpyro.sample("y", dist.Binomial(5, logits=eta), obs=y)

    y = {"normal": RNG.normal(size=25), "bernoulli_logits": (RNG.random(25) < 0.5) * 1.0,
         "bernoulli_probs": (RNG.random(25) < 0.5) * 1.0, "poisson": RNG.poisson(1.0, 25) * 1.0,
         "binomial": RNG.binomial(5, 0.4, 25) * 1.0}[family]
    return pp.log_density(m, X, y=y)


POINT = jnp.array([0.3, -0.2, 0.5])


@pytest.mark.parametrize("family", ["normal", "bernoulli_logits", "bernoulli_probs", "poisson", "binomial"])
def test_ggn_equals_hessian_for_canonical_glms(family):
    """GGN with the observed distribution's Fisher = Hessian for canonical-link GLMs, however parametrised."""
    ld = _glm(family)
    h = -jax.hessian(ld.flat_logdensity_fn)(POINT)
    ops = curvature_ops(ld, POINT, jnp.arange(3), "ggn", jax.random.key(0))
    np.testing.assert_allclose(ops.dense(), h, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(ops.diag(), jnp.diag(h), rtol=1e-6, atol=1e-10)
    mv = jax.vmap(lambda v: ops.lik_matvec(v) + ops.prior_matvec(v))(jnp.eye(3))
    np.testing.assert_allclose(mv, h, rtol=1e-6, atol=1e-10)


def test_ggn_with_scale_parameter_is_explicit_jt_fisher_j():
    """Normal(loc, scale) with a learned scale: G = Jᵀ diag(1/σ², 2/σ²) J + prior Hessian."""
    y = RNG.normal(size=25)

    def m(X, y=None):
        b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        with numpyro.plate("n", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ b, s), obs=y)

    ld = pp.log_density(m, X, y=y)
    x = jnp.array([0.3, -0.2, 0.5, -0.4])

    def z(x):  # (N, 2): loc, scale per datum
        p = ld.unravel(x)
        return jnp.stack([X @ p["b"], jnp.broadcast_to(jnp.exp(p["s"]), (25,))], 1)

    J = jax.jacfwd(z)(x)  # (N, 2, D)
    sig2 = jnp.exp(2 * x[3])
    F = jnp.diag(jnp.array([1 / sig2, 2 / sig2]))
    G = jnp.einsum("ncd,ce,nef->df", J, F, J) - jax.hessian(lambda x: ld.split.log_prior(ld.unravel(x)))(x)
    ops = curvature_ops(ld, x, jnp.arange(4), "ggn", jax.random.key(0))
    np.testing.assert_allclose(ops.dense(), G, rtol=1e-6)
    # empirical Fisher: Σ_n g_n g_nᵀ of per-datum gradients, plus the prior Hessian
    g = jax.vmap(lambda xi, yi: jax.grad(lambda x: dist.Normal(xi @ ld.unravel(x)["b"], jnp.exp(x[3])).log_prob(yi))(x))(X, y)
    ef = curvature_ops(ld, x, jnp.arange(4), "fisher", jax.random.key(0))
    np.testing.assert_allclose(ef.dense(), g.T @ g + G - jnp.einsum("ncd,ce,nef->df", J, F, J), rtol=1e-6)


def test_mc_fisher_converges_to_fisher_and_studentt_gamma_run():
    """mc_fisher is unbiased for the GGN-Fisher: the error shrinks like 1/sqrt(S)."""
    ld = _glm("bernoulli_logits")
    ggn = curvature_ops(ld, POINT, jnp.arange(3), "ggn", jax.random.key(0)).dense()
    mc = curvature_ops(ld, POINT, jnp.arange(3), "mc_fisher", jax.random.key(1), num_fisher_samples=4000).dense()
    assert np.max(np.abs(mc - ggn)) < 0.1 * np.max(np.abs(ggn))
    for d in (dist.StudentT(4.0, 0.3, 1.2), dist.Gamma(2.0, 3.0), dist.Beta(2.0, 3.0)):
        from ppl_posteriors.laplace.outer import canonical, fisher_information

        y = d.sample(jax.random.key(0), (20000,))
        c = canonical(d.expand([1]), jnp.zeros((1,)), None, "y")
        f, is_mc = fisher_information(c, jax.random.key(0), 1)
        assert not is_mc
        zp = {k: c.params[k] for k in c.fields}
        s = jax.vmap(lambda yy: jnp.concatenate([v.ravel() for _, v in sorted(jax.grad(
            lambda zp: type(d)(**{**c.params, **zp}).log_prob(yy).sum())(zp).items())]))(y[:, None])  # noqa: B023
        np.testing.assert_allclose(f[0], s.T @ s / s.shape[0], rtol=0.08, atol=0.02)


def test_lowrank_lanczos_matches_eigh():
    ld = _glm("poisson")
    ops = curvature_ops(ld, POINT, jnp.arange(3), "ggn", jax.random.key(0))
    idata = pp.infer(ld_model_poisson, X, y=Y_POIS, method=pp.Laplace(curvature="ggn", structure="lowrank", rank=2),
                     rng_key=0, progress=False)
    ap = idata.approximation
    mean = jnp.asarray(ap["mean"].values)
    ops = curvature_ops(pp.log_density(ld_model_poisson, X, y=Y_POIS), mean, jnp.arange(3), "ggn", jax.random.key(0))
    lik = jax.vmap(ops.lik_matvec)(jnp.eye(3))
    ev, evec = np.linalg.eigh(lik)
    np.testing.assert_allclose(np.sort(ap["s"].values), ev[1:], rtol=1e-6)
    u = ap["U"].values
    np.testing.assert_allclose(np.abs(u.T @ evec[:, 1:]), np.eye(2)[:, ::-1] if ap["s"].values[0] > ap["s"].values[1] else np.eye(2), atol=1e-6)
    np.testing.assert_allclose(ap["d"].values, 1 / 1.5**2, rtol=1e-9)


Y_POIS = RNG.poisson(1.0, 25) * 1.0


def ld_model_poisson(X, y=None):
    b = numpyro.sample("b", dist.Normal(0.0, 1.5).expand([3]).to_event(1))
    with numpyro.plate("n", X.shape[0]):
        numpyro.sample("y", dist.Poisson(jnp.exp(X @ b)), obs=y)


def _blr():
    n, k, s, s0 = 30, 3, 0.7, 2.0
    rng = np.random.default_rng(2)
    Xb = rng.normal(size=(n, k))
    y = Xb @ np.array([1.0, -2.0, 0.5]) + s * rng.normal(size=n)

    def m(X, y=None):
        b = numpyro.sample("b", dist.Normal(0.0, s0).expand([k]).to_event(1))
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ b, s), obs=y)

    return m, Xb, y, s, s0


@pytest.mark.parametrize("curv,struct", [("hessian", "full"), ("ggn", "full"), ("ggn", "diag"), ("hessian", "diag"),
                                         ("ggn", "lowrank"), ("ggn", "kron")])
def test_evidence_and_precision_on_linear_regression(curv, struct):
    """GGN = Hessian here, so full is exact; diag/lowrank evidence = f(z*) + d/2 log2π − ½ log det of their precision."""
    m, Xb, y, s, s0 = _blr()
    if struct == "kron":
        def m(X, y=None):  # noqa: F811
            b = numpyro.sample("b", dist.Normal(0.0, s0).expand([3, 1]).to_event(2))
            with numpyro.plate("obs", X.shape[0]):
                numpyro.sample("y", dist.Normal(pp.laplace.dense(X, b, "b")[:, 0], s), obs=y)
    idata = pp.infer(m, Xb, y=y, method=pp.Laplace(curvature=curv, structure=struct, rank=3), rng_key=0, progress=False)
    prec = Xb.T @ Xb / s**2 + np.eye(3) / s0**2
    ap = idata.approximation
    dense = {"full": lambda: ap["precision"].values, "diag": lambda: np.diag(ap["prec"].values),
             "lowrank": lambda: (ap["U"].values * ap["s"].values) @ ap["U"].values.T + np.diag(ap["d"].values)}
    if struct == "kron":
        A = Xb.T @ Xb  # single output: B = 1/s², K-FAC (A ⊗ B)/N · N = exact
        got = idata.attrs["log_evidence"]
        post = dist.MultivariateNormal(jnp.zeros(30), s0**2 * Xb @ Xb.T + s**2 * np.eye(30)).log_prob(y)
        np.testing.assert_allclose(got, post, rtol=1e-8)
        assert idata.attrs["kron_sites"] == "b"
        del A
        return
    p = dense[struct]()
    if struct == "diag":
        np.testing.assert_allclose(p, np.diag(np.diag(prec)), rtol=1e-8)
    else:
        np.testing.assert_allclose(p, prec, rtol=1e-8)
    lp_mode = idata.attrs["map_logdensity"]
    expect = lp_mode + 1.5 * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(p)[1]
    np.testing.assert_allclose(idata.attrs["log_evidence"], expect, rtol=1e-9)
    if struct in ("full", "lowrank"):
        log_z = dist.MultivariateNormal(jnp.zeros(30), s0**2 * Xb @ Xb.T + s**2 * np.eye(30)).log_prob(y)
        np.testing.assert_allclose(idata.attrs["log_evidence"], log_z, rtol=1e-8)
        assert idata.attrs["psis_khat"] < 0.5
    assert idata.attrs["curvature"] == curv and idata.attrs["structure"] == struct


def test_kfac_exact_on_single_datum_linear_layer():
    """One datum, z = x @ W (Normal likelihood with 3 outputs): K-FAC block = exact GGN block."""
    x = jnp.array([[0.5, -1.0, 2.0, 0.3]])
    yv = jnp.array([[0.1, 0.2, -0.3]])

    def m(x, y=None):
        W = numpyro.sample("W", dist.Normal(0.0, 1.0).expand([4, 3]).to_event(2))
        numpyro.sample("y", dist.Normal(pp.laplace.dense(x, W, "W"), 0.5).to_event(2), obs=y)

    ld = pp.log_density(m, x, y=yv)
    mean = jnp.linspace(-0.5, 0.5, 12)
    ops = curvature_ops(ld, mean, jnp.arange(12), "ggn", jax.random.key(0))
    (A, B, n), = kfac_factors(ld, ld.unravel(mean), ops.factors).values()
    exact = ops.dense() - jnp.eye(12)
    np.testing.assert_allclose(jnp.kron(A, B) / n, exact, rtol=1e-10, atol=1e-12)


def test_subnetwork_laplace_holds_other_sites_at_map():
    m, Xb, y, s, s0 = _blr()

    def m2(X, y=None):
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        b = numpyro.sample("b", dist.Normal(0.0, s0).expand([3]).to_event(1))
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ b + a, s), obs=y)

    idata = pp.infer(m2, Xb, y=y, method=pp.Laplace(curvature="ggn", sites=["b"]), rng_key=0, progress=False)
    a = idata.posterior["a"].values
    assert np.all(a == a.flat[0])  # held at the MAP
    full = pp.infer(m2, Xb, y=y, method="laplace", rng_key=0, progress=False).approximation["precision"].values
    np.testing.assert_allclose(idata.approximation["precision"].values, full[1:, 1:], rtol=1e-8)
    with pytest.raises(pp.ConfigError, match="not latent sites"):
        pp.infer(m2, Xb, y=y, method=pp.Laplace(sites=["c"]), progress=False)


def test_config_errors_and_fallback_recorded():
    with pytest.raises(pp.ConfigError, match="kron"):
        pp.Laplace(structure="kron")
    with pytest.raises(pp.ConfigError):
        pp.Laplace(curvature="gauss_newton")
    with pytest.raises(pp.ConfigError, match="fallback"):
        pp.Laplace(fallback=("nonsense",))

    def flat(y=None):  # 'u' is uninformed: the Hessian is singular, GGN too, jitter fixes it
        numpyro.sample("u", dist.ImproperUniform(dist.constraints.real, (), ()))
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(pp.NumericalError):
        pp.infer(flat, y=0.3, method="laplace", progress=False)
    idata = pp.infer(flat, y=0.3, method=pp.Laplace(fallback=("ggn", "ggn:diag+jitter"), jitter=1e-2, throw=False),
                     rng_key=0, progress=False)
    assert idata.attrs["fallback"] == "ggn > ggn:diag+jitter"
    assert idata.attrs["fallback_used"] == "ggn:diag+jitter" and idata.attrs["structure"] == "diag"
    assert idata.attrs["status"] in ("success", "poor_approximation") and idata.attrs["jacobian"] == 1
    np.testing.assert_allclose(idata.approximation["prec"].values, [2.0 + 1e-2, 1e-2], rtol=1e-8)


def test_optimize_prior_matches_exact_type2_ml():
    m, Xb, y, s, _ = _blr()

    def neg_log_z(log_s0):
        return -float(dist.MultivariateNormal(jnp.zeros(30), np.exp(2 * log_s0) * Xb @ Xb.T + s**2 * np.eye(30)).log_prob(y))

    best = minimize_scalar(neg_log_z, bounds=(-3, 3), method="bounded", options={"xatol": 1e-10})
    fit = pp.optimize_prior(m, Xb, y=y, sites=["b"])
    assert fit.converged
    np.testing.assert_allclose(fit.scales["b"], np.exp(best.x), rtol=1e-6)
    np.testing.assert_allclose(fit.log_evidence, -best.fun, rtol=1e-9)


def test_predictives_glm_probit():
    """GLM variance = x Σ xᵀ per datum (logits linear in b), probit = σ(μ/sqrt(1+πv/8))."""
    from ppl_posteriors.laplace.predictive import _probit
    from ppl_posteriors.laplace.structures import DiagGaussian

    ld = _glm("bernoulli_logits")
    prec = jnp.array([2.0, 3.0, 4.0])
    approx = DiagGaussian(POINT, jnp.arange(3), prec)
    cfg = pp.Laplace(predictive=("glm", "probit"))
    glm = _glm_pred = _glm_fn(cfg, ld, approx)
    mean, var = glm["y.logits"]["mean"], glm["y.logits"]["var"]
    np.testing.assert_allclose(mean, X @ POINT, rtol=1e-12)
    np.testing.assert_allclose(var, np.einsum("nd,d,nd->n", X, 1 / prec, X), rtol=1e-10)
    pr = _probit(ld, glm)["y"]
    np.testing.assert_allclose(pr, jax.nn.sigmoid(mean / np.sqrt(1 + np.pi * var / 8)), rtol=1e-12)
    del _glm_pred


def _glm_fn(cfg, ld, approx):
    from ppl_posteriors.laplace.predictive import _glm as g

    return g(cfg, ld, approx)


def test_khat_small_on_gaussian_target_every_structure():
    mean = np.array([1.0, -2.0, 0.5])

    def m():
        numpyro.sample("x", dist.Normal(mean, np.array([0.5, 1.0, 2.0])).to_event(1))

    for struct in ("full", "diag", "lowrank"):
        idata = pp.infer(m, method=pp.Laplace(structure=struct, rank=3), rng_key=0, progress=False)
        assert idata.attrs["psis_khat"] < 0.3
        assert abs(idata.attrs["log_evidence"]) < 1e-8


def test_optimize_prior_reports_a_saddle_and_takes_init_position():
    """y ~ N(a b, 0.1): the prior centre a = b = 0 is a saddle (zero gradient, indefinite
    precision), as all-zero weights of a neural network are; the evidence there is not
    finite, which must raise, and a start off the saddle must give a finite evidence."""

    def product(y=None):
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        b = numpyro.sample("b", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(a * b, 0.1), obs=y)

    y = jnp.full(5, 2.0)
    with pytest.raises(pp.NumericalError, match="not positive definite.*init_position"):
        pp.optimize_prior(product, y=y, sites=["a", "b"], tie=True)
    with pytest.raises(pp.ConfigError, match="init_position has shape"):
        pp.optimize_prior(product, y=y, sites=["a"], init_position=jnp.ones(3))
    fit = pp.optimize_prior(product, y=y, sites=["a", "b"], tie=True, init_position=jnp.array([1.0, 1.0]))
    assert np.isfinite(fit.log_evidence) and fit.converged
    np.testing.assert_allclose(abs(fit.mode[0] * fit.mode[1]), 2.0, rtol=0.05)
