"""``mcmc.metric.kernel_metric`` against BlackJAX's metrics: the same momentum draws, kinetic
energy, velocity, U-turn decisions and scalings for diagonal, dense and low-rank inverse mass
matrices (fewer M⁻¹ products, no LAPACK call in the kernel, the same numbers)."""

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from blackjax.mcmc.metrics import LowRankInverseMassMatrix, default_metric

from ppl_posteriors.mcmc.metric import dense_factors, kernel_metric, low_rank_dense

D = 7


def _tuned(kind):
    keys = jax.random.split(jax.random.key(0), 3)
    if kind == "diag":
        imm = jnp.exp(jax.random.normal(keys[0], (D,)))
        return {"inverse_mass_matrix": imm}, imm
    if kind == "dense":
        a = jax.random.normal(keys[0], (D, D))
        imm = a @ a.T / D + 0.1 * jnp.eye(D)
        return {"inverse_mass_matrix": imm, **jax.tree.map(lambda x: x[0], dense_factors(imm[None]))}, imm
    sigma = jnp.exp(0.3 * jax.random.normal(keys[0], (D,)))
    q = 4 if kind == "low_rank" else D
    U = jnp.linalg.qr(jax.random.normal(keys[1], (D, q)))[0]
    lam = jnp.exp(jax.random.normal(keys[2], (q,)))
    tuned = {"imm_sigma": sigma, "imm_U": U, "imm_lam": lam}
    if kind == "low_rank_dense":
        tuned["imm_dense"] = low_rank_dense(sigma, U, lam)
    return tuned, LowRankInverseMassMatrix(sigma, U, lam)


@pytest.mark.parametrize("kind", ["diag", "dense", "low_rank", "low_rank_dense"])
def test_kernel_metric_equals_blackjax(kind):
    tuned, imm = _tuned(kind)
    ours, ref = kernel_metric(tuned), default_metric(imm)
    pos = {"a": jnp.zeros(3), "b": jnp.zeros(D - 3)}  # a pytree position: ravel order matters
    for i in range(3):
        key = jax.random.key(10 + i)
        p_ours, p_ref = ours.sample_momentum(key, pos), ref.sample_momentum(key, pos)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), p_ours, p_ref)
        np.testing.assert_allclose(ours.kinetic_energy(p_ours), ref.kinetic_energy(p_ref), rtol=1e-12)
        # the velocity M⁻¹p: our custom VJP against autodiff of BlackJAX's ½ pᵀM⁻¹p
        v_ours, v_ref = jax.grad(ours.kinetic_energy)(p_ours), jax.grad(ref.kinetic_energy)(p_ref)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), v_ours, v_ref)
        for inv in (False, True):
            for trans in (False, True):
                s_ours = ours.scale(pos, p_ours, inv=inv, trans=trans)
                s_ref = ref.scale(pos, p_ref, inv=inv, trans=trans)
                jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), s_ours, s_ref)
    # U-turn decisions on random triples, both outcomes present
    decisions = []
    for i in range(40):
        left, right, total = (ref.sample_momentum(k, pos) for k in jax.random.split(jax.random.key(100 + i), 3))
        a, b = bool(ours.check_turning(left, right, total)), bool(ref.check_turning(left, right, total))
        assert a == b
        decisions.append(a)
    assert 0 < sum(decisions) < len(decisions)


@pytest.mark.parametrize("kind", ["dense", "low_rank_dense"])
def test_nuts_kernel_with_kernel_metric_calls_no_lapack(kind):
    # a batched LAPACK call inside a chain loop can deadlock XLA:CPU with chains on host devices
    tuned, imm = _tuned(kind)
    logdensity = lambda x: -0.5 * jnp.sum(x**2)  # noqa: E731
    state = blackjax.nuts(logdensity, 0.5, jnp.ones(D)).init(jnp.zeros(D))

    def hlo(metric_of, params):  # the metric's arrays are traced, as in the chain loop
        step = lambda p, key, s: blackjax.nuts(logdensity, 0.5, metric_of(p)).step(key, s)  # noqa: E731
        return jax.jit(step).lower(params, jax.random.key(0), state).as_text()

    lapack = ("lapack", "potrf", "syevd", "trsm")
    assert not any(name in hlo(kernel_metric, tuned) for name in lapack), "LAPACK call in the kernel"
    if kind == "dense":  # the check can fail: BlackJAX's own dense metric factors M⁻¹ in the kernel
        assert any(name in hlo(default_metric, imm) for name in lapack)
