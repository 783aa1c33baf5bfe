"""The one chain loop: warmup and sampling of vmapped chains in one jitted scan.

Every sampler adapter (:class:`~ppl_posteriors.mcmc.base.Sampler`) runs through
:func:`run_chains`. One ``lax.scan`` runs ``adaptation.num_steps + num_samples``
iterations whose body advances every chain with ``jax.vmap`` (chains in lockstep,
as in BlackJAX's multi-chain examples), maps the transition's info to ArviZ
``sample_stats`` names, and during warmup updates the adaptation state. The
transition appears once in the program, so it is compiled once. Post-warmup draws
go into preallocated (draw, chain, ...) buffers in the carry; warmup iterations are
never stored. Pure: everything is a function of the inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._progress import Progress
from .adaptation import Adaptation

__all__ = ["ChainsResult", "run_chains"]


class ChainsResult(NamedTuple):
    """What the chain loop returns.

    position : pytree, leaves (chain, draw, ...)
    stats : {ArviZ name: (chain, draw)}
    tuned : {parameter: (chain, ...)} the sampling parameters after warmup
    warmup_grad_evals : (chain,) gradient (or density) evaluations of warmup and tuning
    warmup_divergences : (chain,)
    """

    position: Any
    stats: dict[str, jax.Array]
    tuned: dict[str, jax.Array]
    warmup_grad_evals: jax.Array
    warmup_divergences: jax.Array


def run_chains(
    rng_key,
    init_positions,
    *,
    sampler,
    logdensity_fn: Callable,
    adaptation: Adaptation,
    num_samples: int,
    progress: Progress | None = None,
    progress_offset: int = 0,
) -> ChainsResult:
    """Adapt, then sample, every chain.

    Parameters
    ----------
    init_positions : pytree
        Leaves (chain, ...).
    sampler : Sampler
        Gives ``build(logdensity_fn, tuned) -> blackjax.SamplingAlgorithm`` and
        ``stats(state, info, tuned) -> {ArviZ name: scalar}`` (one chain each). The
        stats ``n_steps`` (evaluations per transition) and, where the sampler has them,
        ``diverging`` and ``acceptance_rate`` drive the counters and the adaptation.
    logdensity_fn : callable
        Position -> scalar, the function handed to ``build``.
    adaptation : Adaptation
        See :mod:`.adaptation`.
    progress : Progress, optional
        Ticked once per iteration with ``i + progress_offset``.
    """
    num_chains = jax.tree.leaves(init_positions)[0].shape[0]
    num_warmup = adaptation.num_steps
    k_init, k_adapt, k_run = jax.random.split(rng_key, 3)

    def init_states(positions, tuned):
        keys = jax.random.split(k_init, num_chains)
        return jax.vmap(lambda p, k, t: sampler.build(logdensity_fn, t).init(p, k))(positions, keys, tuned)

    states, astate, n_grad0 = adaptation.init(k_adapt, init_positions, init_states)
    tuned = adaptation.tuned(astate)

    def one(key, state, t):
        state, info = sampler.build(logdensity_fn, t).step(key, state)
        return state, sampler.stats(state, info, t)

    def draw(states, tuned, key):
        return jax.vmap(one)(jax.random.split(key, num_chains), states, tuned)

    _, stats_shape = jax.eval_shape(draw, states, tuned, rng_key)
    buffers = jax.tree.map(lambda x: jnp.zeros((num_samples,) + x.shape, x.dtype), (states.position, stats_shape))
    zeros = jnp.zeros((num_chains,), jnp.int32)

    def body(carry, xs):
        states, astate, tuned, n_grad, n_div, buffers = carry
        i, key = xs
        states, stats = draw(states, tuned, key)
        warm = i < num_warmup
        if num_warmup > 0:
            astate = jax.lax.cond(warm, lambda a: adaptation.update(a, i, states, stats), lambda a: a, astate)
            tuned = jax.lax.cond(
                i == num_warmup - 1,
                adaptation.final,
                lambda a: jax.lax.cond(warm, adaptation.tuned, lambda _: tuned, a),
                astate,
            )
            n_grad = n_grad + jnp.where(warm, stats["n_steps"], 0).astype(jnp.int32)
            if "diverging" in stats:
                n_div = n_div + jnp.where(warm, stats["diverging"], 0).astype(jnp.int32)
        slot = jnp.maximum(i - num_warmup, 0)  # warmup writes to slot 0, overwritten later
        buffers = jax.tree.map(
            lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v.astype(b.dtype), slot, 0),
            buffers,
            (states.position, stats),
        )
        if progress is not None:
            progress.tick(i + progress_offset)
        return (states, astate, tuned, n_grad, n_div, buffers), None

    total = num_warmup + num_samples
    xs = (jnp.arange(total), jax.random.split(k_run, total))
    carry = (states, astate, tuned, n_grad0.astype(jnp.int32), zeros, buffers)
    (_, _, tuned, n_grad, n_div, (positions, stats)), _ = jax.lax.scan(body, carry, xs)
    keep = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    return ChainsResult(
        jax.tree.map(keep, positions),
        {k: keep(v) for k, v in stats.items()},
        tuned,
        n_grad,
        n_div,
    )
