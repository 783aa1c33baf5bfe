"""Contracts with the pinned BlackJAX API that mcmc/ relies on (catch upstream churn)."""

import inspect

import blackjax
import jax
import jax.numpy as jnp
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
