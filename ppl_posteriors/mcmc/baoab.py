"""BAOAB: underdamped Langevin dynamics split as kick-drift-Ornstein-Uhlenbeck-drift-kick.

BlackJAX 1.7 has no BAOAB, so this module writes it, in BlackJAX's SG-MCMC shape
(``init(position, rng_key, minibatch)``, ``step(rng_key, state, minibatch, step_size,
temperature)``) so the adapter in :mod:`.sgmcmc` treats it like ``blackjax.sgld``.

Math (Leimkuhler & Matthews 2013, "Rational construction of stochastic numerical
methods for molecular sampling", AMRX 2013:34-56; Leimkuhler & Matthews 2015,
*Molecular Dynamics*, p. 271). With step h, friction γ (per unit time), unit mass,
temperature T and ĝ an estimate of ∇ log π:

    B: m ← m + (h/2) ĝ(θ)
    A: θ ← θ + (h/2) m
    O: m ← c m + √(T (1 - c²)) ξ,      c = exp(-γ h),  ξ ~ N(0, I)
    A: θ ← θ + (h/2) m
    B: m ← m + (h/2) ĝ(θ)

The stationary law of the exact dynamics is ∝ exp((log π(θ) - |m|²/2) / T). The
gradient of the closing B is kept in the state and reused by the next step's opening
B (the same position), so a step costs ONE gradient: the "BAOA" form of the
``posteriors`` library (``posteriors.sgmcmc.baoa``), with the same trajectory of θ.
BAOAB's configurational averages have O(h²) bias, and for a Gaussian target its
stationary law of θ is exact at any stable step (h²λ_max < 4, λ the eigenvalues of
the posterior precision; Leimkuhler & Matthews 2013, §4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm
from blackjax.util import generate_gaussian_noise

__all__ = ["BAOABState", "as_top_level_api", "build_kernel", "init"]


class BAOABState(NamedTuple):
    """position : pytree; momentum : pytree like position; logdensity : scalar, the
    (minibatch) log-density estimate at ``position``; logdensity_grad : its gradient."""

    position: object
    momentum: object
    logdensity: jax.Array
    logdensity_grad: object


def init(position, rng_key, logdensity_estimator: Callable, minibatch, temperature: float = 1.0) -> BAOABState:
    """State at ``position`` with momentum ~ N(0, T I) and the estimator's value and gradient."""
    momentum = jax.tree.map(lambda n: jnp.sqrt(temperature) * n, generate_gaussian_noise(rng_key, position))
    lp, g = jax.value_and_grad(logdensity_estimator)(position, minibatch)
    return BAOABState(position, momentum, lp, g)


def build_kernel(friction: float = 1.0) -> Callable:
    """``kernel(rng_key, state, logdensity_estimator, minibatch, step_size, temperature=1.0)``."""

    def kernel(rng_key, state: BAOABState, logdensity_estimator: Callable, minibatch, step_size,
               temperature=1.0) -> BAOABState:
        h = step_size
        c = jnp.exp(-friction * h)
        noise = generate_gaussian_noise(rng_key, state.position)
        kick = lambda m, g: jax.tree.map(lambda a, b: a + 0.5 * h * b, m, g)  # noqa: E731
        drift = lambda x, m: jax.tree.map(lambda a, b: a + 0.5 * h * b, x, m)  # noqa: E731
        m = kick(state.momentum, state.logdensity_grad)
        x = drift(state.position, m)
        m = jax.tree.map(lambda a, n: c * a + jnp.sqrt(temperature * (1.0 - c**2)) * n, m, noise)
        x = drift(x, m)
        lp, g = jax.value_and_grad(logdensity_estimator)(x, minibatch)
        m = kick(m, g)
        return BAOABState(x, m, lp, g)

    return kernel


def as_top_level_api(logdensity_estimator: Callable, friction: float = 1.0) -> SamplingAlgorithm:
    """BAOAB as a BlackJAX-style ``SamplingAlgorithm``.

    Parameters
    ----------
    logdensity_estimator : callable
        ``(position, minibatch) -> scalar``: an unbiased estimate of log π (e.g. the
        prior plus N/B times a minibatch log-likelihood); differentiated here.
    friction : float
        γ, per unit time (the O step damps momentum by exp(-γ h)).

    Returns
    -------
    SamplingAlgorithm
        ``init(position, rng_key, minibatch, temperature=1.0)`` and
        ``step(rng_key, state, minibatch, step_size, temperature=1.0)``.
    """
    kernel = build_kernel(friction)

    def init_fn(position, rng_key, minibatch, temperature=1.0):
        return init(position, rng_key, logdensity_estimator, minibatch, temperature)

    def step_fn(rng_key, state, minibatch, step_size, temperature=1.0):
        return kernel(rng_key, state, logdensity_estimator, minibatch, step_size, temperature)

    return SamplingAlgorithm(init_fn, step_fn)  # type: ignore[arg-type]
