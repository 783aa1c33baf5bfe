"""pp.linalg against dense references (float64: conftest enables x64).

Products against jax.hessian / explicit Jᵀ H J / explicit Σ ∇f ∇fᵀ; CG against a dense
solve; Lanczos against eigh; low-rank and CG Gaussian samplers against the exact
covariance within Monte Carlo standard errors; linearized_forward against J Σ Jᵀ.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ppl_posteriors as pp
from ppl_posteriors import ConfigError
from ppl_posteriors import linalg as la

TOL = 1e-10

# ---------------------------------------------------------------- a small MLP


def _params(seed):
    r = np.random.default_rng(seed)
    return {
        "W1": jnp.asarray(r.normal(size=(3, 4))),
        "b1": jnp.asarray(0.1 * r.normal(size=4)),
        "W2": jnp.asarray(r.normal(size=(4, 3))),
        "b2": jnp.asarray(0.1 * r.normal(size=3)),
    }


def _net(p, x):  # x (..., 3) -> logits (..., 3)
    return jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]


def _xent(logits, y):  # summed negative log-likelihood of labels y
    return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), y[..., None], -1))


@pytest.fixture(scope="module")
def mlp():
    params = _params(1)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(6, 3)))
    y = jnp.array([0, 1, 2, 1, 0, 2])
    flat, unravel = ravel_pytree(params)
    return params, x, y, flat, unravel


def _dense_ggn(params, x, y, loss=_xent):
    flat, unravel = ravel_pytree(params)
    fwd = lambda f: _net(unravel(f), x).ravel()  # noqa: E731
    jac = jax.jacfwd(fwd)(flat)  # (P, D)
    z = fwd(flat)
    h = jax.hessian(lambda zz: loss(zz.reshape(x.shape[0], 3), y))(z)
    return jac.T @ h @ jac


def _close(a, b, tol=TOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def _check(pairs, tol=TOL):
    """Compare (got, want) pairs computed inside one jitted function (one compile per test)."""
    for i, (got, want) in enumerate(pairs):
        np.testing.assert_allclose(
            np.asarray(got), np.asarray(want), rtol=tol, atol=tol, err_msg=f"pair {i}"
        )


# ---------------------------------------------------------------- products
# each test computes (got, want) pairs inside one jax.jit: one compile per test


def test_hvp_matches_dense_hessian(mlp):
    params, x, y, flat, unravel = mlp
    v = _params(5)

    @jax.jit
    def run(params, v):
        f = lambda p: _xent(_net(p, x), y)  # noqa: E731
        g, hv = la.hvp(f, (params,), (v,))
        h = jax.hessian(lambda q: f(unravel(q)))(ravel_pytree(params)[0])
        _, _, aux = la.hvp(lambda p: (f(p), 7.0), (params,), (v,), has_aux=True)
        return [
            (ravel_pytree(hv)[0], h @ ravel_pytree(v)[0]),
            (ravel_pytree(g)[0], jax.grad(lambda q: f(unravel(q)))(ravel_pytree(params)[0])),
            (aux, 7.0),
        ]

    _check(run(params, v))


def test_fvp_and_empirical_fisher_match_outer_products(mlp):
    params, x, y, flat, unravel = mlp
    v = _params(6)

    @jax.jit
    def run(params, v):
        per_datum = lambda p: -jax.vmap(_xent)(_net(p, x), y)  # noqa: E731  (N,) log-likelihoods
        jac = jax.jacfwd(lambda q: per_datum(unravel(q)))(ravel_pytree(params)[0])  # (N, D)
        fis = sum(jnp.outer(jac[n], jac[n]) for n in range(jac.shape[0]))
        fv_ref = fis @ ravel_pytree(v)[0]
        out, fv = la.fvp(per_datum, (params,), (v,))
        _, fvn = la.fvp(per_datum, (params,), (v,), normalize=True)
        # diagonal from per-datum gradients, in chunks with a remainder
        f1 = lambda p, d: -_xent(_net(p, d["x"]), d["y"])  # noqa: E731
        dfis = la.diag_empirical_fisher(f1, batch_size=4)(params, {"x": x, "y": y})
        return [
            (out, per_datum(params)),
            (ravel_pytree(fv)[0], fv_ref),
            (ravel_pytree(fvn)[0], fv_ref / 6),
            (la.empirical_fisher(per_datum)(params), fis),
            (la.empirical_fisher(per_datum, normalize=True)(params), fis / 6),
            (ravel_pytree(dfis)[0], jnp.diag(fis)),
        ]

    _check(run(params, v))


def test_ggnvp_and_ggn_match_explicit_jthj(mlp):
    params, x, y, flat, unravel = mlp
    v = _params(7)

    @jax.jit
    def run(params, v, x):
        dense = _dense_ggn(params, x, y)
        fwd = lambda p: _net(p, x)  # noqa: E731
        loss = lambda z: _xent(z, y)  # noqa: E731
        (z, gz), gv = la.ggnvp(fwd, loss, (params,), (v,))
        _, gvn = la.ggnvp(fwd, loss, (params,), (v,), normalize=True)
        # argnums over two arguments, forward with aux
        fwd2 = lambda p, x_: (_net(p, x_), x_.sum())  # noqa: E731
        g2, aux = la.ggn(fwd2, loss, argnums=0, forward_has_aux=True)(params, x)
        vf = ravel_pytree(v)[0]
        return [
            (z, fwd(params)),
            (gz, jax.grad(loss)(z)),
            (ravel_pytree(gv)[0], dense @ vf),
            (ravel_pytree(gvn)[0], dense @ vf / 6),
            (la.ggn(fwd, loss)(params), dense),
            (la.ggn(fwd, loss, normalize=True)(params), dense / 6),
            (g2, dense),
            (aux, x.sum()),
        ]

    _check(run(params, v, x))


def test_diag_ggn_exact_matrix_free(mlp):
    params, x, y, flat, unravel = mlp
    forward = lambda p, d: _net(p, d["x"])  # noqa: E731  one datum
    loss = lambda z, d: _xent(z, d["y"])  # noqa: E731

    @jax.jit
    def run(params, batch):
        want = jnp.diag(_dense_ggn(params, batch["x"], batch["y"]))
        pairs = []
        for bs in (None, 2, 4):  # all at once; scan over 3 chunks; 1 chunk + remainder
            diag = la.diag_ggn(forward, loss, batch_size=bs)(params, batch)
            assert jax.tree_util.tree_structure(diag) == jax.tree_util.tree_structure(params)
            pairs.append((ravel_pytree(diag)[0], want))
        diag_n = la.diag_ggn(forward, loss, normalize=True)(params, batch)
        return pairs + [(ravel_pytree(diag_n)[0], want / 6)]

    _check(run(params, {"x": x, "y": y}))


def test_diag_ggn_exact_for_indefinite_outer_hessian(mlp):
    params, x, y, flat, unravel = mlp
    loss = lambda z, yy: jnp.sum(jnp.sin(3.0 * z) * z) + 0.0 * jnp.sum(yy)  # noqa: E731 non-convex

    @jax.jit
    def run(params):
        dense = _dense_ggn(params, x, y, loss=loss)
        min_eig = jnp.min(
            jnp.linalg.eigvalsh(jax.hessian(lambda z: loss(z, y))(_net(params, x)).reshape(18, 18))
        )
        diag = la.diag_ggn(lambda p, d: _net(p, d["x"]), lambda z, d: loss(z, d["y"]))(
            params, {"x": x, "y": y}
        )
        return min_eig, [(ravel_pytree(diag)[0], jnp.diag(dense))]

    min_eig, pairs = run(params)
    assert min_eig < 0
    _check(pairs)


def test_per_samplify(mlp):
    params, x, y, *_ = mlp
    mean_loss = lambda p, b: _xent(_net(p, b["x"]), b["y"]) / b["x"].shape[0]  # noqa: E731
    per = jax.jit(la.per_samplify(mean_loss))(params, {"x": x, "y": y})
    assert per.shape == (6,)
    _close(per, jax.jit(lambda p: jax.vmap(_xent)(_net(p, x), y))(params))


# ---------------------------------------------------------------- solvers


def _spd(seed, d, cond=100.0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return jnp.asarray((q * np.geomspace(1.0, cond, d)) @ q.T)


def _normal(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


def test_cg_matches_dense_solve_with_damping_and_preconditioner():
    # badly scaled rows and columns (scales 0.1 ... 10), which Jacobi preconditioning undoes;
    # on an unscaled rotation its diagonal is nearly constant and it saves nothing
    scale = jnp.asarray(np.random.default_rng(5).permutation(np.geomspace(0.1, 10.0, 20)))
    a = scale[:, None] * _spd(0, 20, cond=1e3) * scale[None, :]
    b = {"u": _normal(1, 5), "v": _normal(2, 3, 5)}
    lam = 0.5

    @jax.jit
    def run(b):
        bf, unravel = ravel_pytree(b)
        A = lambda t: unravel(a @ ravel_pytree(t)[0])  # noqa: E731
        exact = jnp.linalg.solve(a + lam * jnp.eye(20), bf)
        dinv = 1.0 / (jnp.diag(a) + lam)
        precond = lambda r: unravel(dinv * ravel_pytree(r)[0])  # noqa: E731
        exact_pre = lambda r: unravel(jnp.linalg.solve(a + lam * jnp.eye(20), ravel_pytree(r)[0]))  # noqa: E731
        plain = la.cg(A, b, damping=lam, rtol=1e-12)
        pre = la.cg(A, b, damping=lam, preconditioner=precond, rtol=1e-12)
        one = la.cg(
            A, b, damping=lam, preconditioner=exact_pre, rtol=1e-10
        )  # exact inverse: one step
        return plain, pre, one, exact, jnp.linalg.norm(bf)

    plain, pre, one, exact, bnorm = run(b)
    for res in (plain, pre):
        assert bool(res.converged)
        _close(ravel_pytree(res.solution)[0], exact, 1e-9)
        assert float(res.residual_norm) <= 1e-12 * float(bnorm)
    assert int(pre.num_steps) < 0.8 * int(plain.num_steps), (int(pre.num_steps), int(plain.num_steps))
    assert bool(one.converged) and int(one.num_steps) == 1


def test_cg_reports_non_convergence_and_differentiates():
    a = _spd(3, 30, cond=1e6)
    b = _normal(4, 30)
    res = jax.jit(lambda bb: la.cg(lambda v: a @ v, bb, max_steps=3, rtol=1e-10))(b)
    assert not bool(res.converged)
    assert int(res.num_steps) == 3
    _close(
        res.residual_norm, np.linalg.norm(np.asarray(b) - np.asarray(a) @ np.asarray(res.solution))
    )
    assert float(res.residual_norm) > 1e-10 * float(jnp.linalg.norm(b))
    with pytest.raises(ConfigError, match="rtol"):
        la.cg(lambda v: v, b, rtol=0.0, atol=0.0)
    # implicit differentiation of the solution in the damping
    a2 = _spd(5, 8, cond=10.0)
    b2 = _normal(6, 8)
    f = lambda lam: jnp.sum(la.cg(lambda v: a2 @ v, b2, damping=lam, rtol=1e-13).solution)  # noqa: E731
    fd = lambda lam: jnp.sum(jnp.linalg.solve(a2 + lam * jnp.eye(8), b2))  # noqa: E731
    _check([jax.jit(lambda lam: (jax.grad(f)(lam), jax.grad(fd)(lam)))(0.3)], 1e-8)


def test_lanczos_top_k_matches_eigh():
    d = 40
    a = _spd(7, d, cond=1e4)
    lam, vec = np.linalg.eigh(np.asarray(a))
    lam, vec = lam[::-1], vec[:, ::-1]
    v0 = _normal(8, d)

    @jax.jit
    def run(v0):
        full = la.lanczos(lambda x: a @ x, v0, k=5, num_iterations=d)
        part = la.lanczos(lambda x: a @ x, v0, k=3, num_iterations=25)
        return full, part

    res, res2 = run(v0)
    _close(res.eigenvalues, lam[:5], 1e-9)
    assert res.eigenvectors.shape == (5, d)
    _close(np.abs(np.sum(np.asarray(res.eigenvectors) * vec[:, :5].T, axis=1)), np.ones(5), 1e-9)
    # fewer iterations than D: the top values within their a-posteriori bounds
    assert np.all(
        np.abs(np.asarray(res2.eigenvalues) - lam[:3]) <= np.asarray(res2.residual_norms) + 1e-9
    )
    _close(res2.eigenvalues[0], lam[0], 1e-8)
    with pytest.raises(ConfigError, match="num_iterations"):
        la.lanczos(lambda x: a @ x, v0, k=5, num_iterations=3)


def test_lanczos_low_rank_operator_on_pytree():
    # rank-3 PSD operator: the Krylov space becomes invariant after 3 steps
    u = np.random.default_rng(9).normal(size=(12, 3))
    a = jnp.asarray(u @ np.diag([9.0, 4.0, 1.0]) @ u.T)
    v0 = {"x": jnp.ones(4), "y": jnp.ones((2, 4))}

    @jax.jit
    def run(v0):
        _, unravel = ravel_pytree(v0)
        mv = lambda t: unravel(a @ ravel_pytree(t)[0])  # noqa: E731
        res = la.lanczos(mv, v0, k=5, num_iterations=8)
        return res, jax.vmap(lambda t: ravel_pytree(t)[0])(res.eigenvectors)

    res, u_flat = run(v0)
    _close(res.eigenvalues, np.linalg.eigvalsh(np.asarray(a))[::-1][:5], 1e-9)
    assert res.eigenvectors["y"].shape == (5, 2, 4)
    _close(u_flat @ u_flat.T, np.eye(5), 1e-9)


# ---------------------------------------------------------------- operators and Gaussians


@pytest.fixture(scope="module")
def lowrank():
    u = _normal(10, 5, 2)
    return la.LowRankPlusDiag(u, jnp.array([3.0, 0.5]), jnp.linspace(0.5, 2.0, 5))


def test_lowrank_operator_algebra(lowrank):
    v = _normal(11, 5)
    x = _normal(12, 4, 5)
    mean = jnp.arange(5.0)

    @jax.jit
    def run(op, v, x):
        a = op.to_dense()
        ainv = jnp.linalg.inv(a)
        eye = jnp.eye(5)
        b = jax.vmap(op.sqrt_matvec, out_axes=1)(eye)
        c = jax.vmap(op.inv_sqrt_matvec, out_axes=1)(eye)
        ref = jax.scipy.stats.multivariate_normal.logpdf(x, mean, ainv)
        return [
            (op.matvec(v), a @ v),
            (op.solve(v), jnp.linalg.solve(a, v)),
            (op.logdet(), jnp.linalg.slogdet(a)[1]),
            (op.diagonal(), jnp.diag(a)),
            (op.inverse_diagonal(), jnp.diag(ainv)),
            (b @ b.T, a),
            (c @ c.T, ainv),
            (op.normal_log_prob(x, mean), ref),
            (
                op.normal_log_prob(x, mean, precision=False),
                jax.scipy.stats.multivariate_normal.logpdf(x, mean, a),
            ),
            (
                la.lowrank_normal_log_prob(
                    {"a": x[0, :2], "b": x[0, 2:]}, {"a": mean[:2], "b": mean[2:]}, op
                ),
                ref[0],
            ),
        ]

    _check(run(lowrank, v, x))


def _assert_cov_within_mcse(draws, mean, cov, z=5.0):
    """Each entry of the known-mean sample covariance within z MCSE of the truth."""
    draws, mean, cov = np.asarray(draws), np.asarray(mean), np.asarray(cov)
    n = draws.shape[0]
    c = draws - mean
    emp = c.T @ c / n
    var = np.diag(cov)
    se = np.sqrt((np.outer(var, var) + cov**2) / n)  # sd of x_i x_j for a zero-mean Gaussian
    assert np.all(np.abs(emp - cov) < z * se), (emp, cov)
    assert np.all(np.abs(draws.mean(0) - mean) < z * np.sqrt(var / n))


def test_lowrank_precision_sampler_covariance(lowrank):
    op = lowrank
    mean = {"a": jnp.array([1.0, -1.0]), "b": jnp.array([0.0, 2.0, 3.0])}

    @jax.jit
    def run(op, key):
        k1, k2 = jax.random.split(key)
        return la.lowrank_normal_sample(k1, mean, op, (20000,)), op.sample(k2, (20000,))

    draws, cov_draws = run(op, jax.random.key(13))
    assert draws["a"].shape == (20000, 2) and draws["b"].shape == (20000, 3)
    dense = np.asarray(op.to_dense())
    flat = np.concatenate([draws["a"], draws["b"]], 1)
    _assert_cov_within_mcse(flat, ravel_pytree(mean)[0], np.linalg.inv(dense))
    _assert_cov_within_mcse(cov_draws, np.zeros(5), dense)  # the same operator as a covariance


def test_cg_perturb_and_solve_sampler_covariance():
    bmat = _normal(15, 6, 3)
    lam = 0.7
    prec = bmat.T @ bmat + lam * jnp.eye(3)
    mean = jnp.array([1.0, 0.0, -2.0])

    def perturbation(key):  # η = Bᵀ ε₁ + √λ ε₂ ~ N(0, BᵀB + λI)
        k1, k2 = jax.random.split(key)
        return bmat.T @ jax.random.normal(k1, (6,)) + jnp.sqrt(lam) * jax.random.normal(k2, (3,))

    res = jax.jit(
        lambda k: la.cg_normal_sample(
            k, mean, lambda v: prec @ v, perturbation, (8000,), rtol=1e-12
        )
    )(jax.random.key(16))
    assert res.solution.shape == (8000, 3) and res.converged.shape == (8000,)
    assert bool(jnp.all(res.converged))
    _assert_cov_within_mcse(res.solution, mean, np.linalg.inv(np.asarray(prec)))


def test_diag_normal_log_prob_and_sample():
    x = {"a": jnp.array([0.3, -1.0]), "b": jnp.array(2.0)}
    mean = {"a": jnp.array([0.0, 1.0]), "b": jnp.array(1.5)}
    sd = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(0.5)}
    flat = lambda t: ravel_pytree(t)[0]  # noqa: E731

    @jax.jit
    def run(x, mean, sd, key):
        norm = jax.scipy.stats.norm.logpdf
        pairs = [
            (la.diag_normal_log_prob(x, mean, sd), jnp.sum(norm(flat(x), flat(mean), flat(sd)))),
            (
                la.diag_normal_log_prob(x, mean, sd, normalize=False),
                -0.5 * jnp.sum(((flat(x) - flat(mean)) / flat(sd)) ** 2),
            ),
            (la.diag_normal_log_prob(x), jnp.sum(norm(flat(x)))),
            (la.diag_normal_log_prob(x, 0.5, 2.0), jnp.sum(norm(flat(x), 0.5, 2.0))),
        ]
        k1, k2 = jax.random.split(key)
        return (
            pairs,
            la.diag_normal_sample(k1, mean, sd, (20000,)),
            la.diag_normal_sample(k2, mean, 2.0, (3,)),
        )

    pairs, draws, scalar_sd = run(x, mean, sd, jax.random.key(17))
    _check(pairs)
    assert draws["a"].shape == (20000, 2) and draws["b"].shape == (20000,)
    fd = np.concatenate([draws["a"], draws["b"][:, None]], 1)
    _assert_cov_within_mcse(fd, flat(mean), np.diag(np.asarray(flat(sd)) ** 2))
    assert scalar_sd["a"].shape == (3, 2)


def test_L_flat_roundtrip():
    L = np.tril(np.random.default_rng(19).normal(size=(4, 4)))
    flat, back, batched = jax.jit(
        lambda m: (
            la.L_to_flat(m),
            la.L_from_flat(la.L_to_flat(m)),
            jax.vmap(la.L_from_flat)(jnp.stack([la.L_to_flat(m), 2 * la.L_to_flat(m)])),
        )
    )(L)
    assert flat.shape == (10,)
    r, c = np.tril_indices(4)
    _close(flat, L[r, c])
    _close(back, L)
    _close(batched, np.stack([L, 2 * L]))
    with pytest.raises(ConfigError, match="n\\(n\\+1\\)/2"):
        la.L_from_flat(jnp.ones(7))


# ---------------------------------------------------------------- linearised predictive


def test_linearized_forward_matches_explicit_jsjt(mlp, lowrank):
    params, x, y, flat, unravel = mlp
    d = flat.shape[0]
    f = lambda p: _net(p, x[:2])  # noqa: E731  output (2, 3)
    var = jax.tree_util.tree_map(lambda t: 0.1 + t**2, params)
    op = la.LowRankPlusDiag(_normal(20, d, 3), jnp.array([2.0, 1.0, 0.5]), jnp.full(d, 0.3))
    a = _spd(21, d, cond=50.0)

    @jax.jit
    def run(params, var, op, a):
        jac = jax.jacfwd(lambda q: f(unravel(q)).ravel())(ravel_pytree(params)[0])  # (6, D)
        cases = [
            (var, {}, jnp.diag(ravel_pytree(var)[0])),
            (a, {}, a),
            (a, {"precision": True}, jnp.linalg.inv(a)),
            (op, {}, op.to_dense()),
            (op, {"precision": True}, jnp.linalg.inv(op.to_dense())),
            (lambda v: unravel(a @ ravel_pytree(v)[0]), {}, a),
        ]
        pairs = []
        for cov, kw, sig in cases:
            ref = jac @ sig @ jac.T
            out = la.linearized_forward(f, params, cov, **kw)
            assert out.cov.shape == (2, 3, 2, 3)
            dg = la.linearized_forward(f, params, cov, diagonal=True, batch_size=4, **kw)
            assert dg.cov.shape == (2, 3)
            pairs += [
                (out.mean, f(params)),
                (out.cov.reshape(6, 6), ref),
                (dg.cov.ravel(), jnp.diag(ref)),
            ]
        return pairs

    _check(run(params, var, op, a), 1e-9)
    with pytest.raises(ConfigError, match="cov must be"):
        la.linearized_forward(f, params, jnp.ones((3, 3)))
    assert pp.linalg is la
