"""Contracts with the pinned BlackJAX API that mcmc/ relies on (catch upstream churn)."""

import inspect

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation import window_adaptation as wa


def test_window_adaptation_pieces():
    init, update, final = wa.base(True, 0.8)
    schedule = jnp.asarray(wa.build_schedule(100))
    assert schedule.shape == (100, 2)
    state = init({"a": jnp.zeros(3)}, 1.0)
    state = update(state, schedule[0], {"a": jnp.ones(3)}, 0.9)
    step_size, imm = final(state)
    assert imm.shape == (3,) and step_size.shape == ()


def test_nuts_kernel_signature_and_info():
    kernel = blackjax.nuts.build_kernel()
    params = inspect.signature(kernel).parameters
    assert list(params)[:5] == ["rng_key", "state", "logdensity_fn", "step_size", "inverse_mass_matrix"]
    assert "max_num_doublings" in params
    logdensity = lambda x: -0.5 * jnp.sum(x["a"] ** 2)
    state = blackjax.nuts.init({"a": jnp.zeros(2)}, logdensity)
    state, info = kernel(jax.random.key(0), state, logdensity, 0.5, jnp.ones(2), max_num_doublings=3)
    for field in ("is_divergent", "energy", "num_trajectory_expansions", "num_integration_steps", "acceptance_rate"):
        assert hasattr(info, field)
    assert set(state._fields) == {"position", "logdensity", "logdensity_grad"}


# -- the kernels and tuners behind pp.HMC, MALA, Barker, RMH, MCLMC, AdjustedMCLMC,
# EllipticalSlice, ChEESHMC, Slice and SMC: names and order of the arguments we pass,
# and the state / info fields we read


def _params(fn):
    return list(inspect.signature(fn).parameters)


def test_sampler_kernel_signatures():
    from blackjax.mcmc import adjusted_mclmc_dynamic, dynamic_hmc, random_walk

    assert _params(blackjax.hmc.build_kernel())[:6] == [
        "rng_key", "state", "logdensity_fn", "step_size", "inverse_mass_matrix", "num_integration_steps"
    ]
    assert _params(blackjax.mala.build_kernel())[:4] == ["rng_key", "state", "logdensity_fn", "step_size"]
    assert _params(blackjax.barker.build_kernel())[:5] == [
        "rng_key", "state", "logdensity_fn", "step_size", "inverse_mass_matrix"
    ]
    assert _params(random_walk.build_additive_step())[:4] == ["rng_key", "state", "logdensity_fn", "random_step"]
    assert _params(blackjax.normal_random_walk) == ["logdensity_fn", "sigma"]
    assert _params(blackjax.mcmc.mclmc.build_kernel())[:6] == [
        "rng_key", "state", "logdensity_fn", "inverse_mass_matrix", "L", "step_size"
    ]
    amd = _params(adjusted_mclmc_dynamic.build_kernel())
    assert amd[:4] == ["rng_key", "state", "logdensity_fn", "step_size"]
    assert {"inverse_mass_matrix", "integration_steps_params"} <= set(amd)
    assert _params(adjusted_mclmc_dynamic.init) == ["position", "logdensity_fn", "random_generator_arg"]
    assert _params(adjusted_mclmc_dynamic.make_random_trajectory_length_fn) == ["random_trajectory_length"]
    dh = _params(dynamic_hmc.build_kernel())
    assert dh[:5] == ["rng_key", "state", "logdensity_fn", "step_size", "inverse_mass_matrix"]
    assert "integration_steps_params" in dh
    assert {"next_random_arg_fn", "integration_steps_fn"} <= set(_params(dynamic_hmc.build_kernel))
    assert _params(dynamic_hmc.halton_sequence) == ["i", "max_bits"]
    es = blackjax.mcmc.elliptical_slice
    assert _params(es.elliptical_proposal) == ["logdensity_fn", "momentum_generator", "mean"]
    assert _params(es.init) == ["position", "logdensity_fn"]
    assert _params(blackjax.util.generate_gaussian_noise)[:4] == ["rng_key", "position", "mu", "sigma"]
    assert {"proposal_generator", "width", "max_expansions"} <= set(_params(blackjax.mcmc.slice.as_top_level_api))
    assert _params(blackjax.mcmc.slice.direction_proposal) == ["scale"]


def test_elliptical_slice_kernel_equals_blackjax():
    """pp.EllipticalSlice builds BlackJAX's kernel from a precomputed Cholesky factor:
    the same key must give blackjax.elliptical_slice's transition."""
    from ppl_posteriors.mcmc.elliptical_slice import EllipticalSlice

    cov = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]])
    mean = jnp.array([1.0, -1.0, 0.5])
    loglik = lambda x: -0.5 * jnp.sum((x - 2.0) ** 2)  # noqa: E731
    tuned = {"mean": mean, "chol": jnp.linalg.cholesky(cov)}
    ours = EllipticalSlice().build(loglik, tuned)
    ref = blackjax.elliptical_slice(loglik, mean=mean, cov=cov)
    s1, s2 = ours.init(jnp.zeros(3)), ref.init(jnp.zeros(3))
    for i in range(5):
        key = jax.random.key(i)
        (s1, i1), (s2, i2) = ours.step(key, s1), ref.step(key, s2)
        np.testing.assert_allclose(s1.position, s2.position, rtol=1e-6)
        assert int(i1.subiter) == int(i2.subiter)


def test_tuner_signatures():
    mclmc = _params(blackjax.mclmc_find_L_and_step_size)
    assert mclmc[:4] == ["mclmc_kernel", "num_steps", "state", "rng_key"]
    assert {"logdensity_fn", "frac_tune1", "frac_tune2", "frac_tune3", "desired_energy_var",
            "diagonal_preconditioning"} <= set(mclmc)
    adj = _params(blackjax.adjusted_mclmc_find_L_and_step_size)
    assert adj[:6] == ["mclmc_kernel", "logdensity_fn", "num_steps", "state", "rng_key", "target"]
    assert {"frac_tune1", "frac_tune2", "frac_tune3", "diagonal_preconditioning",
            "target_num_integration_steps"} <= set(adj)
    chees = _params(blackjax.chees_adaptation)
    assert chees[:2] == ["logdensity_fn", "num_chains"]
    assert {"target_acceptance_rate", "max_leapfrog_steps", "mass_matrix_estimation",
            "adaptation_info_fn"} <= set(chees)


def test_smc_signatures():
    from blackjax.smc import adaptive_tempered, resampling, tempered

    assert _params(adaptive_tempered.build_kernel)[:6] == [
        "logprior_fn", "loglikelihood_fn", "mcmc_step_fn", "mcmc_init_fn", "resampling_fn", "target_ess"
    ]
    assert _params(tempered.build_kernel)[:5] == [
        "logprior_fn", "loglikelihood_fn", "mcmc_step_fn", "mcmc_init_fn", "resampling_fn"
    ]
    assert _params(resampling.systematic) == ["rng_key", "weights", "num_samples"]
    logdensity = lambda x: -0.5 * jnp.sum(x["a"] ** 2)  # noqa: E731
    step = adaptive_tempered.build_kernel(
        logdensity, logdensity, blackjax.hmc.build_kernel(), blackjax.hmc.init, resampling.systematic, 0.5
    )
    state = adaptive_tempered.init({"a": jnp.zeros((16, 2))})
    params = {"step_size": jnp.full((1,), 0.5), "inverse_mass_matrix": jnp.ones((1, 2)),
              "num_integration_steps": jnp.full((1,), 3)}
    state, info = step(jax.random.key(0), state, 2, params)
    assert set(state._fields) >= {"particles", "weights", "tempering_param"}
    assert info.log_likelihood_increment.shape == () and info.update_info.acceptance_rate.shape == (16, 2)


def test_sampler_infos_have_the_fields_we_map():
    fields = lambda cls: set(cls._fields)  # noqa: E731
    from blackjax.mcmc.barker import BarkerInfo
    from blackjax.mcmc.elliptical_slice import EllipSliceInfo
    from blackjax.mcmc.hmc import HMCInfo
    from blackjax.mcmc.mala import MALAInfo, MALAState
    from blackjax.mcmc.mclmc import MCLMCInfo
    from blackjax.mcmc.random_walk import RWInfo
    from blackjax.mcmc.slice import SliceInfo

    assert {"energy", "is_divergent", "num_integration_steps", "acceptance_rate"} <= fields(HMCInfo)
    assert "acceptance_rate" in fields(MALAInfo) and "acceptance_rate" in fields(BarkerInfo)
    assert "acceptance_rate" in fields(RWInfo)
    assert {"energy_change", "nonans"} <= fields(MCLMCInfo)
    assert "subiter" in fields(EllipSliceInfo)
    assert {"num_expansions", "num_shrink"} <= fields(SliceInfo)
    assert list(MALAState._fields) == ["position", "logdensity", "logdensity_grad"]


def test_sgmcmc_signatures_and_update_equations():
    """SG-MCMC (mcmc/sgmcmc.py): the top-level signatures and, at temperature 0 (no
    injected noise), the update equations documented there -- SGLD z + ε g; SGHMC's
    explicit-Euler order (g evaluated before z moves, momentum drawn from the step key);
    SGNHT's thermostat update."""
    from blackjax.sgmcmc import sghmc as _sghmc
    from blackjax.sgmcmc import sgld as _sgld
    from blackjax.sgmcmc import sgnht as _sgnht
    from blackjax.sgmcmc.sgnht import SGNHTState
    from blackjax.util import generate_gaussian_noise

    assert _params(_sgld.as_top_level_api) == ["grad_estimator"]
    assert _params(_sghmc.as_top_level_api) == ["grad_estimator", "num_integration_steps", "alpha", "beta"]
    assert _params(_sgnht.as_top_level_api) == ["grad_estimator", "alpha", "beta"]
    assert list(SGNHTState._fields) == ["position", "momentum", "xi"]
    grad = lambda x, batch: {"a": -batch * x["a"]}  # noqa: E731  (log density -batch |a|² / 2)
    x, key, eps, alpha = {"a": jnp.array([1.0, -2.0])}, jax.random.key(0), 0.1, 0.5

    sgld = blackjax.sgld(grad)
    assert _params(sgld.step) == ["rng_key", "state", "minibatch", "step_size", "temperature"]
    new = sgld.step(key, sgld.init(x), 2.0, eps, 0.0)
    assert jnp.allclose(new["a"], x["a"] - eps * 2.0 * x["a"])

    sghmc = blackjax.sghmc(grad, 2, alpha=alpha, beta=0.0)
    p0 = generate_gaussian_noise(key, x)["a"]
    x1 = x["a"] + eps * p0
    p1 = (1 - alpha * eps) * p0 + eps * (-2.0 * x["a"])
    assert jnp.allclose(sghmc.step(key, sghmc.init(x), 2.0, eps, 0.0)["a"], x1 + eps * p1, atol=1e-6)

    sgnht = blackjax.sgnht(grad, alpha=alpha)
    state = sgnht.init(x, key)
    assert jnp.allclose(state.xi, alpha)
    new = sgnht.step(key, state, 2.0, eps, 0.0)
    m = (1 - alpha * eps) * state.momentum["a"] + eps * (-2.0 * x["a"])
    assert jnp.allclose(new.position["a"], x["a"] + eps * state.momentum["a"], atol=1e-6)
    assert jnp.allclose(new.momentum["a"], m, atol=1e-6)
    assert jnp.allclose(new.xi, alpha + eps * jnp.sum(m**2) / 2, atol=1e-6)
