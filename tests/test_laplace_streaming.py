"""Streaming Laplace transforms (pp.laplace.streaming): minibatch accumulation equals the
full-batch curvature (x64, 1e-10), draws have the right covariance (within MCSE), and the
model-level ``pp.infer(..., batches=...)`` path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ppl_posteriors as pp
from ppl_posteriors._errors import ConfigError

st = pp.laplace.streaming

N, D = 41, 3
SIGMA = 0.7  # noise sd of the linear regression
SIZES = (7, 14, 20)  # an uneven partition of the N data


def _data(kind):
    r = np.random.default_rng(1)
    x = r.normal(size=(N, D))
    w = np.array([0.8, -1.2, 0.3])
    if kind == "logistic":
        y = (r.uniform(size=N) < 1 / (1 + np.exp(-(x @ w + 0.2)))).astype(float)
    else:
        y = x @ w + 0.2 + SIGMA * r.normal(size=N)
    return {"x": jnp.asarray(x), "y": jnp.asarray(y)}


PARAMS = {"w": jnp.array([0.3, -0.5, 0.1]), "b": jnp.array(0.15)}


def forward(p, batch):
    return batch["x"] @ p["w"] + p["b"]


def outer_ll(kind):
    if kind == "logistic":
        return lambda z, b: jnp.sum(b["y"] * z - jnp.logaddexp(0.0, z))
    return lambda z, b: jnp.sum(-0.5 * ((b["y"] - z) / SIGMA) ** 2 - jnp.log(SIGMA) - 0.5 * jnp.log(2 * jnp.pi))


def loglik(kind):
    oll = outer_ll(kind)
    return lambda p, b: oll(forward(p, b), b)


def loglik_per_sample(kind):
    oll = outer_ll(kind)
    return lambda p, b: jax.vmap(lambda xx, yy: oll(xx @ p["w"] + p["b"], {"y": yy}))(b["x"], b["y"])


def _batches(data):
    out, i = [], 0
    for s in SIZES:
        out.append(jax.tree_util.tree_map(lambda a, i=i, s=s: a[i : i + s], data))
        i += s
    assert i == N
    return out


def _reference(kind, data):
    """Full-data per-datum gradients (N, D) and the dense GGN, by explicit Jacobians."""
    flat, unravel = ravel_pytree(PARAMS)
    per = lambda f: loglik_per_sample(kind)(unravel(f), data)  # noqa: E731
    g = jax.jacfwd(per)(flat)  # (N, D)
    jf = jax.jacfwd(lambda f: forward(unravel(f), data))(flat)  # (N, D)
    z = forward(PARAMS, data)
    if kind == "logistic":
        h = jax.nn.sigmoid(z) * (1 - jax.nn.sigmoid(z))
    else:
        h = jnp.full(N, 1 / SIGMA**2)
    return np.asarray(g.T @ g), np.asarray(jf.T @ (h[:, None] * jf))


def _stream(t, data, init):
    state = t.init(PARAMS)
    upd = jax.jit(t.update)
    for b in _batches(data):
        state = upd(state, b)
    assert int(state.step) == len(SIZES)
    full = jax.jit(t.update)(t.init(PARAMS), data)
    return state, full


PRIOR = 0.5


@pytest.mark.parametrize("kind", ["logistic", "linear"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_streaming_fisher_equals_full_batch(kind, per_sample):
    data = _data(kind)
    fisher, _ = _reference(kind, data)
    f = loglik_per_sample(kind) if per_sample else loglik(kind)
    for temp in (2.5,):  # T = 1 in the GGN test
        dn, dn_full = _stream(st.build_dense_fisher(f, per_sample, PRIOR, temperature=temp), data, PRIOR)
        dg, dg_full = _stream(pp.laplace.diag_fisher.build(f, per_sample, PRIOR, temperature=temp, batch_size=5), data, PRIOR)
        want = PRIOR * np.eye(D + 1) + fisher / temp
        np.testing.assert_allclose(dn.prec, want, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dn_full.prec, want, rtol=1e-10, atol=1e-10)
        for s in (dg, dg_full):
            np.testing.assert_allclose(ravel_pytree(s.prec_diag)[0], np.diag(want), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["logistic", "linear"])
def test_streaming_ggn_equals_full_batch(kind):
    data = _data(kind)
    _, g = _reference(kind, data)
    prior_diag = {"w": jnp.array([0.5, 1.0, 2.0]), "b": jnp.array(0.25)}
    prior = np.diag(ravel_pytree(prior_diag)[0])
    dn, dn_full = _stream(pp.laplace.dense_ggn.build(forward, outer_ll(kind), prior), data, prior)
    dg, dg_full = _stream(pp.laplace.diag_ggn.build(forward, outer_ll(kind), prior_diag), data, prior_diag)
    np.testing.assert_allclose(dn.prec, prior + g, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dn_full.prec, prior + g, rtol=1e-10, atol=1e-10)
    for s in (dg, dg_full):
        np.testing.assert_allclose(ravel_pytree(s.prec_diag)[0], np.diag(prior + g), rtol=1e-10, atol=1e-10)
    # per-datum form of the diagonal GGN
    fwd1 = lambda p, d: d["x"] @ p["w"] + p["b"]  # noqa: E731
    oll = outer_ll(kind)
    ps, _ = _stream(st.build_diag_ggn(fwd1, lambda z, d: oll(z, d), 0.0, per_sample=True, temperature=0.5), data, 0.0)
    np.testing.assert_allclose(ravel_pytree(ps.prec_diag)[0], 2 * np.diag(g), rtol=1e-10, atol=1e-10)
    if kind == "linear":  # GGN = exact Hessian of the negative log-likelihood for linear-Gaussian
        flat, unravel = ravel_pytree(PARAMS)
        hess = -jax.hessian(lambda f: loglik(kind)(unravel(f), data))(flat)
        np.testing.assert_allclose(g, hess, rtol=1e-10, atol=1e-10)


def test_sample_covariance_within_mcse():
    prec_np = np.array([[4.0, 1.2, 0.3, 0.0], [1.2, 3.0, -0.5, 0.2], [0.3, -0.5, 2.0, 0.4], [0.0, 0.2, 0.4, 1.5]])
    cov = np.linalg.inv(prec_np)
    n = 40_000
    t = st.build_dense_ggn(forward, outer_ll("linear"), jnp.asarray(prec_np))
    state = t.init(PARAMS)
    draws = jax.jit(t.sample, static_argnums=2)(jax.random.key(3), state, (n // 100, 100))
    assert draws["w"].shape == (n // 100, 100, 3) and draws["b"].shape == (n // 100, 100)
    x = np.asarray(jax.vmap(jax.vmap(lambda p: ravel_pytree(p)[0]))(draws)).reshape(n, -1)
    mean = np.asarray(ravel_pytree(PARAMS)[0])
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * se_mean)
    emp = np.cov(x.T)
    mcse = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)  # sd of a sample covariance entry
    assert np.all(np.abs(emp - cov) < 5 * mcse), (emp - cov) / mcse
    # diagonal: variances 1/prec_diag
    prec_diag = {"w": jnp.array([4.0, 0.25, 1.0]), "b": jnp.array(9.0)}
    td = st.build_diag_fisher(loglik("linear"), False, prec_diag)
    dd = td.sample(jax.random.key(4), td.init(PARAMS), (n,))
    xd = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(dd))
    var = 1 / np.asarray(ravel_pytree(prec_diag)[0])
    assert np.all(np.abs(xd.mean(0) - mean) < 5 * np.sqrt(var / n))
    assert np.all(np.abs(xd.var(0) - var) < 5 * var * np.sqrt(2 / n))


def test_bad_options():
    with pytest.raises(ConfigError, match="temperature"):
        st.build_diag_fisher(loglik("linear"), temperature=0.0)
    with pytest.raises(ConfigError, match="init_prec"):
        st.build_dense_fisher(loglik("linear"), init_prec=jnp.ones((2, 2))).init(PARAMS)


# -- model level: pp.infer(model, method=pp.Laplace(...), batches=pp.Batches(...)) ------------

S0 = 2.0  # prior sd of the weights


def _linreg(x, y=None):
    import numpyro
    import numpyro.distributions as dist

    w = numpyro.sample("w", dist.Normal(0.0, S0).expand([D]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w, SIGMA), obs=y)


def _linreg_data():
    r = np.random.default_rng(2)
    n = 64
    x = r.normal(size=(n, D))
    y = x @ np.array([0.8, -1.2, 0.3]) + SIGMA * r.normal(size=n)
    prec = np.eye(D) / S0**2 + x.T @ x / SIGMA**2
    mean = np.linalg.solve(prec, x.T @ y / SIGMA**2)
    loader = [{"x": x[i : i + 16], "y": y[i : i + 16]} for i in range(0, n, 16)]
    return x, y, prec, mean, pp.Batches(loader, num_data=n)


@pytest.mark.parametrize("structure", ["full", "diag"])
def test_model_level_batches_conjugate_linear_regression(structure):
    from ppl_posteriors.results.approximation import load_approximation

    x, y, prec, mean, batches = _linreg_data()
    cfg = pp.Laplace(curvature="ggn", structure=structure, num_steps=1500, num_samples=200)
    idata = pp.infer(_linreg, method=cfg, batches=batches, rng_key=jax.random.key(0))
    assert idata.attrs["status"] == "success" and idata.attrs["newton_decrement"] < 0.01
    approx, _ = load_approximation(idata)
    sd = np.sqrt(np.diag(np.linalg.inv(prec)))
    # the stochastic MAP (tail-averaged adam) is the exact posterior mean to 1% of an sd (measured 0.1%)
    np.testing.assert_array_less(np.abs(np.asarray(approx.mean) - mean), 0.01 * sd)
    if structure == "full":  # Laplace is exact here: the evidence of the conjugate model
        cov = SIGMA**2 * np.eye(len(y)) + S0**2 * x @ x.T
        _, logdet = np.linalg.slogdet(2 * np.pi * cov)
        log_z = -0.5 * logdet - 0.5 * y @ np.linalg.solve(cov, y)
        assert abs(idata.attrs["log_evidence"] - log_z) < 1e-4
    # GGN = Hessian for linear-Gaussian: the precision is exact whatever the point
    got = np.asarray(approx.precision) if structure == "full" else np.asarray(approx.prec)
    want = prec if structure == "full" else np.diag(prec)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert idata.attrs["curvature"] == "ggn" and idata.attrs["batches_num_data"] == 64


def test_model_level_batches_fisher_equals_full_data_at_map():
    from ppl_posteriors.results.approximation import load_approximation

    x, y, prec, mean, batches = _linreg_data()
    cfg = pp.Laplace(curvature="fisher", structure="full", num_steps=1500, num_samples=100, temperature=2.0,
                     throw=False)
    idata = pp.infer(_linreg, method=cfg, batches=batches, rng_key=jax.random.key(1))
    approx, _ = load_approximation(idata)
    m = np.asarray(approx.mean)
    g = (y - x @ m)[:, None] * x / SIGMA**2  # per-datum gradients of log p(y_n | w) at the MAP
    np.testing.assert_allclose(np.asarray(approx.precision), np.eye(D) / S0**2 + g.T @ g / 2.0, rtol=1e-10)


@pytest.mark.parametrize("bad", [dict(curvature="hessian"), dict(curvature="ggn", structure="lowrank"),
                                 dict(curvature="ggn", predictive=("glm",))])
def test_model_level_batches_refuses(bad):
    *_, batches = _linreg_data()
    with pytest.raises(ConfigError, match="batches"):
        pp.infer(_linreg, method=pp.Laplace(**bad), batches=batches, rng_key=jax.random.key(0))
    with pytest.raises(ConfigError, match="temperature"):
        x, y, *_ = _linreg_data()
        pp.infer(_linreg, x, y=y, method=pp.Laplace(temperature=0.5), rng_key=jax.random.key(0))
