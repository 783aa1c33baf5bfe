"""Warmup and sampling of vmapped chains in one jitted scan.

One ``lax.scan`` runs ``num_warmup + num_samples`` iterations whose body advances
every chain with ``jax.vmap`` (chains run in lockstep, as in BlackJAX's
multi-chain examples) and, during warmup, updates each chain's adaptation state
(per chain, as in Stan). The transition kernel appears once in the program, so it
is compiled once. Pure: everything is a function of the inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._progress import Progress
from .adaptation import WindowAdaptation

__all__ = ["ChainsResult", "run_chains"]


class ChainsResult(NamedTuple):
    """position: leaves (chain, draw, ...); stats: {name: (chain, draw)};
    step_size: (chain,); inverse_mass_matrix: (chain, D) or (chain, D, D);
    warmup_grad_evals, warmup_divergences: (chain,)."""

    position: Any
    stats: dict[str, jax.Array]
    step_size: jax.Array
    inverse_mass_matrix: jax.Array
    warmup_grad_evals: jax.Array
    warmup_divergences: jax.Array


def run_chains(
    rng_key,
    init_positions,
    *,
    init_fn: Callable,
    kernel: Callable,
    adaptation: WindowAdaptation,
    num_samples: int,
    stats_fn: Callable,
    initial_step_size: float = 1.0,
    progress: Progress | None = None,
) -> ChainsResult:
    """Adapt, then sample, every chain.

    Parameters
    ----------
    init_positions : pytree
        Leaves (chain, ...).
    init_fn : callable
        position -> kernel state (e.g. ``blackjax.nuts.init`` with the density bound).
    kernel : callable
        (rng_key, state, step_size, inverse_mass_matrix) -> (state, info).
    stats_fn : callable
        (state, info) -> {ArviZ sample_stats name: scalar}; must include
        ``n_steps`` (gradient evaluations of the transition) and ``diverging``.
    """
    num_chains = jax.tree.leaves(init_positions)[0].shape[0]
    num_warmup = adaptation.schedule.shape[0]
    states = jax.vmap(init_fn)(init_positions)
    astates = jax.vmap(lambda p: adaptation.init(p, initial_step_size))(init_positions)
    step = jax.vmap(kernel)
    # a schedule row for every iteration; sampling rows are never read
    schedule = jnp.concatenate(
        [adaptation.schedule, jnp.zeros((num_samples, 2), adaptation.schedule.dtype)]
    )
    zeros = jnp.zeros((num_chains,), jnp.int32)

    def adapt(astates, stage, states, info):
        return jax.vmap(adaptation.update, in_axes=(0, None, 0, 0))(
            astates, stage, states.position, info.acceptance_rate
        )

    def draw(states, params, key):
        keys = jax.random.split(key, num_chains)
        states, info = step(keys, states, *params)
        return states, info, stats_fn(states, info)

    # post-warmup draws go into preallocated (draw, chain, ...) buffers in the carry,
    # so warmup iterations are never stored
    _, _, stats_shape = jax.eval_shape(draw, states, (astates.step_size, astates.inverse_mass_matrix), rng_key)
    buffers = jax.tree.map(
        lambda x: jnp.zeros((num_samples,) + x.shape, x.dtype), (states.position, stats_shape)
    )

    def body(carry, xs):
        states, astates, params, n_grad, n_div, buffers = carry
        i, key, stage = xs
        states, info, stats = draw(states, params, key)
        warm = i < num_warmup
        astates = jax.lax.cond(warm, adapt, lambda a, *_: a, astates, stage, states, info)
        params = jax.lax.cond(
            i == num_warmup - 1,
            lambda a: jax.vmap(adaptation.final)(a),
            lambda a: jax.lax.cond(
                warm, lambda a: (a.step_size, a.inverse_mass_matrix), lambda _: params, a
            ),
            astates,
        )
        n_grad = n_grad + jnp.where(warm, stats["n_steps"], 0)
        n_div = n_div + jnp.where(warm, stats["diverging"], 0)
        slot = jnp.maximum(i - num_warmup, 0)  # warmup writes to slot 0, overwritten later
        buffers = jax.tree.map(
            lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v, slot, 0), buffers, (states.position, stats)
        )
        if progress is not None:
            progress.tick(i)
        return (states, astates, params, n_grad, n_div, buffers), None

    params = (astates.step_size, astates.inverse_mass_matrix)
    total = num_warmup + num_samples
    xs = (jnp.arange(total), jax.random.split(rng_key, total), schedule)
    carry = (states, astates, params, zeros, zeros, buffers)
    (_, _, (step_size, imm), n_grad, n_div, (positions, stats)), _ = jax.lax.scan(body, carry, xs)
    keep = lambda x: jnp.swapaxes(x, 0, 1)
    return ChainsResult(
        jax.tree.map(keep, positions),
        {k: keep(v) for k, v in stats.items()},
        step_size,
        imm,
        n_grad,
        n_div,
    )
