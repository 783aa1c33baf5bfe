"""Matrix-free MAP search (laplace.mode.find_map_matrix_free, pp.Laplace(map_solver=...)):
equal to the dense search, saddles reported, no D x D array in the program."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.extend import core as jcore

import ppl_posteriors as pp
from ppl_posteriors._errors import ConfigError
from ppl_posteriors.laplace.mode import find_map_matrix_free, find_map_multistart

jax.config.update("jax_enable_x64", True)


def _logistic(n=120, k=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, k))
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-X @ rng.normal(size=k)))).astype(float)

    def f(b):
        eta = X @ b
        return jnp.sum(y * eta - jnp.logaddexp(0.0, eta)) - 0.5 * jnp.sum(b**2)

    return X, y, f


def _gaussian(dim=5, seed=1):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(dim, dim))
    prec = A @ A.T + 0.5 * np.eye(dim)
    mean = rng.normal(size=dim)

    def f(x):
        d = x - mean
        return -0.5 * d @ (prec @ d)

    return mean, prec, f


def _compare(f, x0):
    dense = jax.jit(lambda x: find_map_multistart(f, x))(x0)
    free = jax.jit(lambda x: find_map_multistart(f, x, solver="matrix_free"))(x0)
    np.testing.assert_array_equal(np.asarray(free.tier), np.asarray(dense.tier))
    np.testing.assert_array_equal(np.asarray(free.at_mode), np.asarray(dense.at_mode))
    np.testing.assert_allclose(free.starts.position, dense.starts.position, atol=1e-6, rtol=0)
    np.testing.assert_allclose(free.starts.logdensity, dense.starts.logdensity, atol=1e-6, rtol=1e-12)
    np.testing.assert_allclose(free.starts.decrement, dense.starts.decrement, atol=1e-6, rtol=0)
    assert bool(np.all(free.starts.pd)) and bool(np.all(free.starts.cg_converged))
    # the Ritz values of the probe (D <= lanczos_steps: every eigenvalue) match the dense Hessian's
    ev = np.linalg.eigvalsh(np.asarray(dense.best.precision))
    np.testing.assert_allclose([free.best.min_curvature, free.best.max_curvature], [ev[0], ev[-1]], rtol=1e-8)
    return dense, free


def test_matches_dense_on_logistic_regression():
    X, y, f = _logistic()
    x0 = jnp.asarray(np.random.default_rng(3).uniform(-2, 2, size=(3, X.shape[1])))
    dense, free = _compare(f, x0)
    assert np.all(np.asarray(free.tier) == 3)
    # the mode is a stationary point of f (independent of both searches)
    assert np.max(np.abs(jax.grad(f)(free.best.position))) < 1e-8


def test_matches_dense_on_gaussian_target_and_exact_mode():
    mean, prec, f = _gaussian()
    x0 = jnp.asarray(np.random.default_rng(4).uniform(-2, 2, size=(2, mean.size)))
    _, free = _compare(f, x0)
    np.testing.assert_allclose(free.best.position, mean, atol=1e-8)
    # the decrement away from the mode is sqrt(gᵀ H⁻¹ g) (CG solve) = sqrt(dᵀ P d), d = x - mean
    x = jnp.asarray(mean + 0.3)
    res = find_map_matrix_free(f, x, max_steps=1, newton_steps=0)
    d = np.asarray(res.position) - mean
    np.testing.assert_allclose(res.decrement, np.sqrt(d @ prec @ d), rtol=1e-8)
    assert bool(res.pd)


def _saddle(x):  # stationary at 0 (saddle: curvature -2 along x[1]) and at x[1] = ±1/√2 (maxima)
    return -(x[0] ** 2) + x[1] ** 2 - x[1] ** 4


def test_saddle_is_reported_not_accepted():
    # start 0 at the saddle, where the gradient is exactly 0: CG sees nothing, the Lanczos probe
    # must; start 1 reaches the maximum (0, 1/√2), which is preferred
    x0 = jnp.array([[0.0, 0.0], [0.5, 0.5]])
    free = jax.jit(lambda x: find_map_multistart(_saddle, x, solver="matrix_free"))(x0)
    dense = jax.jit(lambda x: find_map_multistart(_saddle, x))(x0)
    assert list(np.asarray(free.tier)) == list(np.asarray(dense.tier)) == [2, 3]  # stationary, not PD
    assert int(free.index) == 1 and list(np.asarray(free.starts.pd)) == [False, True]
    np.testing.assert_allclose(free.best.position, [0.0, 2**-0.5], atol=1e-8)
    np.testing.assert_allclose(free.starts.min_curvature[0], -2.0, rtol=1e-10)
    np.testing.assert_allclose(np.abs(free.starts.direction[0]), [0.0, 1.0], atol=1e-10)
    # near (not at) the saddle, off its stable manifold by 1e-3: CG meets negative curvature,
    # and the saddle-free decrement (Lanczos quadrature, exact for D = 2) equals the dense one
    x = jnp.array([[0.3, 1e-3]])
    free = jax.jit(lambda x: find_map_multistart(_saddle, x, solver="matrix_free", max_steps=1, newton_steps=0))(x)
    dense = jax.jit(lambda x: find_map_multistart(_saddle, x, max_steps=1, newton_steps=0))(x)
    assert bool(free.best.negative_curvature) and not bool(free.best.pd)
    assert float(free.best.decrement) > 0.01
    np.testing.assert_allclose(free.best.decrement, dense.best.decrement, rtol=1e-8)
    np.testing.assert_allclose(free.best.position, dense.best.position, atol=1e-6)


def test_saddle_model_gives_failure_status_with_direction():
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
        numpyro.factor("f", x[1] ** 2 - x[1] ** 4 - x[0] ** 2)

    cfg = pp.Laplace(map_solver="matrix_free", init_radius=0.0, num_starts=1, throw=False)
    idata = pp.infer(model, method=cfg, rng_key=0)
    assert idata.attrs["status"] == "indefinite_curvature"
    assert idata.attrs["map_solver"] == "matrix_free" and idata.attrs["map_hessian_pd"] == 0
    msg = idata.attrs["status_messages"]
    assert "direction found by CG/Lanczos" in msg and "'x[1]'" in msg and "saddle" in msg


def _shapes(jaxpr, out):
    for eqn in jaxpr.eqns:
        out += [tuple(getattr(v.aval, "shape", ())) for v in eqn.outvars]
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else [p]:
                if isinstance(sub, jcore.ClosedJaxpr):
                    _shapes(sub.jaxpr, out)
                elif isinstance(sub, jcore.Jaxpr):
                    _shapes(sub, out)
    return out


def test_matrix_free_program_has_no_d_by_d_array():
    d = 300
    _, _, f = _logistic(n=80, k=d)
    x0 = jnp.zeros((2, d))

    def big(solver):
        shapes = _shapes(jax.make_jaxpr(lambda x: find_map_multistart(f, x, solver=solver))(x0).jaxpr, [])
        assert len(shapes) > 100
        return [s for s in shapes if sum(n >= d for n in s) >= 2]

    assert big("dense")  # the check sees the dense search's (D, D) arrays ...
    assert big("matrix_free") == []  # ... and none in the matrix-free one


def _logistic_model(X, y=None):
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("n", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=X @ b), obs=y)


def test_forced_matrix_free_gives_the_dense_diag_ggn_laplace():
    X, y, _ = _logistic(n=80, k=4, seed=5)
    out = {}
    for solver in ("dense", "matrix_free"):
        cfg = pp.Laplace(curvature="ggn", structure="diag", map_solver=solver, num_samples=200)
        out[solver] = pp.infer(_logistic_model, X, y=y, method=cfg, rng_key=0)
        assert out[solver].attrs["status"] == "success"
    assert out["dense"].attrs["map_solver"] == "dense"
    assert out["matrix_free"].attrs["map_solver"] == "matrix_free"
    a, b = out["dense"], out["matrix_free"]
    for name in a.approximation.data_vars:
        np.testing.assert_allclose(b.approximation[name].values, a.approximation[name].values, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(b.posterior["b"].values, a.posterior["b"].values, atol=1e-6)
    for key in ("map_logdensity", "log_evidence", "newton_decrement"):
        np.testing.assert_allclose(b.attrs[key], a.attrs[key], atol=1e-6, rtol=1e-9)
    assert b.attrs["map_hessian_pd"] == 1 and b.attrs["map_cg_converged"] == 1


def test_auto_picks_matrix_free_above_4096_unless_full():
    cfg = pp.Laplace(curvature="ggn", structure="diag")
    assert cfg._map_solver(4096) == "dense" and cfg._map_solver(4097) == "matrix_free"
    assert pp.Laplace(curvature="ggn")._map_solver(10**5) == "dense"  # full forms D x D anyway
    assert pp.Laplace(map_solver="dense", structure="diag")._map_solver(10**5) == "dense"


def test_bad_map_solver_raises_config_error():
    with pytest.raises(ConfigError, match="map_solver"):
        pp.Laplace(map_solver="lbfgs")
    with pytest.raises(ConfigError, match="solver"):
        find_map_multistart(lambda x: -jnp.sum(x**2), jnp.zeros((1, 2)), solver="cg")
