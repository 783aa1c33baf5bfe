"""The adaptation axis of MCMC: how a sampler's parameters are tuned during warmup.

An :class:`Adaptation` is chosen apart from the sampler (DESIGN.md "MCMC = sampler x
adaptation x chain layout") and driven by the one chain loop (:mod:`.loop`). It
works on all chains at once (leading axis ``chain``), so it may adapt per chain
(Stan's windows, vmapped) or across chains (ChEES). Two forms share the protocol:

* **in the loop**: ``num_steps > 0``; ``update`` sees every warmup transition and
  ``tuned`` gives the parameters of the next one, ``final`` those of sampling.
  :func:`window_adaptation` (Stan) is this form.
* **before the loop**: ``num_steps == 0``; ``init`` runs a tuner of its own (BlackJAX's
  MCLMC or ChEES tuning, one ``lax.scan``; the tuner calls ``tick()`` once per step,
  which advances the progress bar) and returns the tuned states and parameters. :func:`tuned_before_loop` wraps such a tuner.

Tuned parameters are a dict of arrays with a leading chain axis, which the sampler
adapter's ``build(logdensity_fn, tuned)`` reads (``step_size``,
``inverse_mass_matrix``, ``L``, ...).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from blackjax.adaptation import window_adaptation as _wa

from .metric import dense_factors

__all__ = ["Adaptation", "fixed_parameters", "tuned_before_loop", "window_adaptation"]


class Adaptation(NamedTuple):
    """Pure functions of an adaptation over a batch of chains.

    num_steps : int
        Warmup iterations inside the chain loop (0: none).
    init : callable
        ``(rng_key, positions, init_states, tick) -> (states, astate, grad_evals)``, where
        ``init_states(positions, tuned)`` makes the sampler's states for all chains,
        ``tick()`` (jitted code) advances the progress bar by one tuning step and
        ``grad_evals`` (chain,) counts gradient (or density) evaluations spent here.
    update : callable
        ``(astate, i, states, stats) -> astate`` after warmup iteration ``i``; ``stats``
        are the ArviZ-named sample stats of the transition, (chain,) each.
    tuned : callable
        ``astate -> tuned`` parameters for the next warmup transition.
    final : callable
        ``astate -> tuned`` parameters for sampling.
    with_initial_metric : callable or None
        ``imm0 -> Adaptation``: the same adaptation started from the inverse mass
        matrices ``imm0`` ((chain, D) or (chain, D, D)) instead of its own first guess
        (warm starts, :mod:`.init`); None where the adaptation has no mass matrix.
    """

    num_steps: int
    init: Callable
    update: Callable
    tuned: Callable
    final: Callable
    with_initial_metric: Callable | None = None


def _identity(astate, *_):
    return astate


def fixed_parameters(tuned_fn: Callable, num_burn_in: int = 0) -> Adaptation:
    """Nothing to tune: ``tuned_fn(num_chains)`` gives parameters used throughout;
    the loop still runs ``num_burn_in`` discarded iterations."""

    def init(rng_key, positions, init_states, tick):
        n = jax.tree.leaves(positions)[0].shape[0]
        tuned = tuned_fn(n)
        return init_states(positions, tuned), tuned, jnp.zeros((n,), jnp.int32)

    return Adaptation(num_burn_in, init, _identity, _identity, _identity)


def tuned_before_loop(initial_tuned: Callable, tuner: Callable) -> Adaptation:
    """A tuner that runs before the chain loop.

    ``initial_tuned(num_chains)`` gives the parameters the states are made with;
    ``tuner(rng_key, states, tuned, tick) -> (states, tuned, grad_evals)`` tunes all chains
    (vmapped inside, or across chains) and calls ``tick()`` once per tuning step.
    """

    def init(rng_key, positions, init_states, tick):
        n = jax.tree.leaves(positions)[0].shape[0]
        tuned = initial_tuned(n)
        states, tuned, grad_evals = tuner(rng_key, init_states(positions, tuned), tuned, tick)
        return states, tuned, jnp.broadcast_to(jnp.asarray(grad_evals, jnp.int32), (n,))

    return Adaptation(0, init, _identity, _identity, _identity)


def window_adaptation(
    num_warmup: int, target_accept: float, dense_mass: bool, initial_step_size: float = 1.0
) -> Adaptation:
    """Stan's windowed warmup, per chain, for ``num_warmup`` loop iterations.

    Step size by dual averaging of the acceptance statistic towards
    ``target_accept`` (Hoffman & Gelman 2014, JMLR 15:1593, Alg. 5); inverse mass
    matrix (diagonal, or dense with ``dense_mass``) from Welford estimates of the
    positions' covariance, regularised towards 1e-3 I, in windows of 75 / 25
    doubling / 50 iterations, rescaled when the warmup is short (Stan Reference
    Manual, "HMC algorithm parameters"). Any sampler with a step size and an
    acceptance rate uses it: the "step size" is what the sampler scales by it
    (a leapfrog step, a MALA or random-walk proposal scale). A transition without an
    ``acceptance_rate`` stat (slice sampling) counts as on target, so only the
    mass matrix adapts.

    BlackJAX's ``window_adaptation(...).run`` runs the whole warmup as one scan with no
    hook for a progress bar, so we drive BlackJAX's own pieces
    (``window_adaptation.base`` init / update / final and ``build_schedule``) from
    the chain loop; ``base`` is marked deprecated in BlackJAX 1.7 (its successor's
    engine is not public): ``tests/test_contracts.py`` catches churn.

    Tuned parameters: ``{"step_size": (chain,), "inverse_mass_matrix": (chain, D) or
    (chain, D, D)}``, and for a dense matrix its factors (:func:`.metric.dense_factors`).
    ``with_initial_metric(imm0)`` starts from ``imm0`` instead of
    the identity (used until the first slow window ends; the windows' estimates are
    regularised towards 1e-3 I as before, not towards ``imm0``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        base_init, base_update, base_final = _wa.base(not dense_mass, target_accept)
    schedule = jnp.asarray(_wa.build_schedule(num_warmup), dtype=jnp.int32).reshape(num_warmup, 2)

    def factors_of(imm):  # a dense matrix's factors, formed where it changes (not per step)
        return dense_factors(imm) if imm.ndim == 3 else {}

    def as_tuned(step_size, imm, factors):
        return {"step_size": step_size, "inverse_mass_matrix": imm, **factors}

    def make_init(imm0):
        def init(rng_key, positions, init_states, tick):
            astate = jax.vmap(lambda p: base_init(p, initial_step_size))(positions)
            if imm0 is not None:
                imm = jnp.asarray(imm0, astate.inverse_mass_matrix.dtype)
                if imm.ndim != astate.inverse_mass_matrix.ndim:  # diagonal <-> dense
                    imm = jax.vmap(jnp.diag)(imm) if imm.ndim == 2 else jnp.diagonal(imm, axis1=-2, axis2=-1)
                astate = astate._replace(
                    inverse_mass_matrix=imm, imm_state=astate.imm_state._replace(inverse_mass_matrix=imm)
                )
            factors = factors_of(astate.inverse_mass_matrix)
            tuned = as_tuned(astate.step_size, astate.inverse_mass_matrix, factors)
            n = astate.step_size.shape[0]
            return init_states(positions, tuned), (astate, factors), jnp.zeros((n,), jnp.int32)

        return init

    def update(state, i, states, stats):
        astate, factors = state
        stage = schedule[jnp.clip(i, 0, max(num_warmup - 1, 0))]
        acc = stats.get("acceptance_rate")
        if acc is None:
            acc = jnp.full(astate.step_size.shape, target_accept, astate.step_size.dtype)
        astate = jax.vmap(base_update, in_axes=(0, None, 0, 0))(astate, stage, states.position, acc)
        if factors:  # the matrix changes only at the end of a slow window (stage[1], not batched)
            factors = jax.lax.cond(stage[1] == 1, factors_of, lambda _: factors, astate.inverse_mass_matrix)
        return astate, factors

    def tuned(state):
        astate, factors = state
        return as_tuned(astate.step_size, astate.inverse_mass_matrix, factors)

    def final(state):
        astate, factors = state
        return as_tuned(*jax.vmap(base_final)(astate), factors)  # base_final keeps the matrix

    def with_metric(imm0):
        return Adaptation(num_warmup, make_init(imm0), update, tuned, final, with_metric)

    return Adaptation(num_warmup, make_init(None), update, tuned, final, with_metric)
