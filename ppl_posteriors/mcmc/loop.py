"""The one chain loop: warmup and sampling of all chains in one jitted scan.

Every sampler adapter (:class:`~ppl_posteriors.mcmc.base.Sampler`) runs through
:func:`run_chains`. One ``lax.scan`` runs ``adaptation.num_steps + num_samples``
iterations whose body advances every chain with ``jax.vmap``, maps the transition's
info to ArviZ ``sample_stats`` names, and during warmup updates the adaptation state
and (``restart_stuck``) restarts stuck chains from the best ones (:mod:`.restart`).
The transition appears once in the program, so it is compiled once. Post-warmup
draws go into preallocated (draw, chain, ...) buffers in the carry; warmup
iterations are never stored. Pure: everything is a function of the inputs.

Chain layout (DESIGN.md "MCMC = sampler x adaptation x chain layout"):

* ``"lockstep"``: one vmapped loop over all chains; on a mesh XLA (GSPMD) splits the
  chains over the ``"chain"`` axis, but a vmapped ``while_loop`` (a NUTS tree, a slice
  expansion) runs until the *last* chain is done, and its predicate is reduced across
  devices at every step: every chain waits for the longest trajectory of all chains.
* ``"per_device"``: the scan runs under ``jax.shard_map`` over the mesh's ``"chain"``
  axis, so each device runs its own loop on its own chains (one chain per device: no
  waiting at all). Cross-chain steps use collectives: the stuck-chain checkpoint
  all-gathers the chains' summaries and states (three times per warmup). Adaptation
  run before the loop (ChEES, which pools chains) stays outside, on the global view.
  In-loop adaptation must be per chain (Stan's window adaptation is). Same keys per
  chain as lockstep, so the draws agree to round-off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from .._progress import Progress
from . import restart as _restart
from .adaptation import Adaptation

__all__ = ["CHAIN_LAYOUTS", "ChainsResult", "chain_layout", "run_chains"]

CHAIN_LAYOUTS = ("auto", "lockstep", "per_device")


class ChainsResult(NamedTuple):
    """What the chain loop returns.

    position : pytree, leaves (chain, draw, ...)
    stats : {ArviZ name: (chain, draw)}
    tuned : {parameter: (chain, ...)} the sampling parameters after warmup
    warmup_grad_evals : (chain,) gradient (or density) evaluations of warmup and tuning
    warmup_divergences : (chain,)
    restart_donor : (checkpoint, chain) int
        At each stuck-chain checkpoint, the chain whose state chain i took, or -1.
    restart_gap : (checkpoint, chain) float
        Median window mean log density of the other chains minus chain i's.
    restart_iteration : tuple of int
        The warmup iteration counts of the checkpoints (static).
    """

    position: Any
    stats: dict[str, jax.Array]
    tuned: dict[str, jax.Array]
    warmup_grad_evals: jax.Array
    warmup_divergences: jax.Array
    restart_donor: Any = None
    restart_gap: Any = None
    restart_iteration: tuple = ()


def chain_layout(layout: str, mesh, num_chains: int) -> str:
    """The layout actually used: ``"per_device"`` needs a mesh whose ``"chain"`` axis has
    more than one device and whose ``"data"`` axis has one; ``"auto"`` picks it then (in a
    single process), ``"lockstep"`` otherwise. An impossible explicit ``"per_device"`` runs lockstep on one
    device only when there is no mesh (nothing to split); otherwise raises ConfigError."""
    from .._errors import ConfigError

    k = int(mesh.shape.get("chain", 1)) if mesh is not None else 1
    m = int(mesh.shape.get("data", 1)) if mesh is not None else 1
    possible = k > 1 and m == 1 and num_chains % k == 0
    if layout == "auto" and jax.process_count() > 1:  # data are placed on the mesh there (runtime.mesh)
        possible = False
    if layout == "lockstep" or (layout == "auto" and not possible) or k == 1:
        return "lockstep"
    if not possible:
        raise ConfigError(
            f"chain_layout='per_device' needs a mesh with a 'chain' axis and no 'data' axis "
            f"(got {dict(mesh.shape)}); use pp.make_mesh(chain=d) or chain_layout='lockstep'"
        )
    return "per_device"


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
    restart_stuck: bool = True,
    mesh=None,
    layout: str = "auto",
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
        Ticked once per iteration with ``i + progress_offset``; a tuner before the loop
        advances it through the first ``progress_offset`` steps.
    restart_stuck : bool
        Detect and restart stuck chains during in-loop warmup (:mod:`.restart`).
    mesh : jax.sharding.Mesh, optional
        With ``layout`` (``"auto"``, ``"lockstep"``, ``"per_device"``): see the module
        docstring and :func:`chain_layout`.
    """
    num_chains = jax.tree.leaves(init_positions)[0].shape[0]
    num_warmup = adaptation.num_steps
    k_init, k_adapt, k_run = jax.random.split(rng_key, 3)
    dim = sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(init_positions))

    def init_states(positions, tuned):
        keys = jax.random.split(k_init, num_chains)
        return jax.vmap(lambda p, k, t: sampler.build(logdensity_fn, t).init(p, k))(positions, keys, tuned)

    def tick():  # one step of a tuner before the loop (progress_offset steps in all)
        if progress is not None:
            progress.advance(progress_offset)

    states, astate, n_grad0 = adaptation.init(k_adapt, init_positions, init_states, tick)
    tuned = adaptation.tuned(astate)
    points = _restart.checkpoints(num_warmup) if (restart_stuck and num_chains > 1) else ()
    in_window, late, check = _restart.windows(num_warmup, points)
    threshold = _restart.stuck_threshold(dim)
    per_device = chain_layout(layout, mesh, num_chains) == "per_device"
    axis = "chain" if per_device else None
    n_local = num_chains // (int(mesh.shape["chain"]) if per_device else 1)
    # which leaves carry the chain axis (the rest, e.g. a pooled estimate, are replicated)
    chained = jax.tree.map(lambda x: jnp.ndim(x) >= 1 and jnp.shape(x)[0] == num_chains, (states, astate, tuned))

    def offset():
        return jax.lax.axis_index(axis) * n_local if axis else 0

    def all_chains(tree, mask):
        if axis is None:
            return tree
        return jax.tree.map(lambda x, c: jax.lax.all_gather(x, axis, tiled=True) if c else x, tree, mask)

    def one(key, state, t):
        state, info = sampler.build(logdensity_fn, t).step(key, state)
        return state, sampler.stats(state, info, t)

    def draw(states, tuned, key):
        keys = jax.random.split(key, num_chains)
        if axis is not None:
            keys = jax.lax.dynamic_slice_in_dim(keys, offset(), n_local)
        return jax.vmap(one)(keys, states, tuned)

    def on_checkpoint(k, states, astate, tuned, mon, donors, gaps):
        summary = all_chains(_restart.summaries(mon), (True,) * 3)
        stuck, donor, gap = _restart.decide(*summary, threshold)
        everything = all_chains((states, astate, tuned), chained)
        mine = jax.lax.dynamic_slice_in_dim(donor, offset(), n_local) if axis else donor
        states, astate, tuned = jax.tree.map(lambda x, c: x[mine] if c else x, everything, chained)
        local = (lambda v: jax.lax.dynamic_slice_in_dim(v, offset(), n_local)) if axis else (lambda v: v)
        donors = donors.at[k].set(jnp.where(local(stuck), local(donor), -1).astype(jnp.int32))
        gaps = gaps.at[k].set(local(gap).astype(gaps.dtype))
        mon = _restart.monitor_init(states.position, mon.lp_sum)
        return states, astate, tuned, mon, donors, gaps

    def loop(states, astate, tuned, n_grad0, xs):
        n = jax.tree.leaves(states.position)[0].shape[0]
        _, stats_shape = jax.eval_shape(draw, states, tuned, xs[1][0])
        buffers = jax.tree.map(lambda x: jnp.zeros((num_samples,) + x.shape, x.dtype), (states.position, stats_shape))
        mon = _restart.monitor_init(states.position, jnp.zeros((n,), stats_shape["lp"].dtype))
        donors = jnp.full((len(points), n), -1, jnp.int32)
        gaps = jnp.zeros((len(points), n), stats_shape["lp"].dtype)
        win, lat, chk = jnp.asarray(in_window), jnp.asarray(late), jnp.asarray(check)

        def warmup_step(i, states, stats, astate, tuned, n_grad, n_div, mon, donors, gaps):
            astate = adaptation.update(astate, i, states, stats)
            tuned = jax.lax.cond(i == num_warmup - 1, adaptation.final, adaptation.tuned, astate)
            n_grad = n_grad + stats["n_steps"].astype(jnp.int32)
            if "diverging" in stats:
                n_div = n_div + stats["diverging"].astype(jnp.int32)
            if points:
                mon = _restart.monitor_update(mon, win[i], lat[i], states.position, stats["lp"])
                states, astate, tuned, mon, donors, gaps = jax.lax.cond(
                    chk[i] > 0,
                    lambda *c: on_checkpoint(chk[i] - 1, *c),
                    lambda *c: c,
                    states, astate, tuned, mon, donors, gaps,
                )
            return states, astate, tuned, n_grad, n_div, mon, donors, gaps

        def body(carry, xs):
            states, astate, tuned, n_grad, n_div, buffers, mon, donors, gaps = carry
            i, key = xs
            states, stats = draw(states, tuned, key)
            if num_warmup > 0:  # one cond: the sampling phase skips adaptation and monitor alike
                states, astate, tuned, n_grad, n_div, mon, donors, gaps = jax.lax.cond(
                    i < num_warmup,
                    lambda *c: warmup_step(jnp.minimum(i, num_warmup - 1), states, stats, *c),
                    lambda *c: (states, *c),
                    astate, tuned, n_grad, n_div, mon, donors, gaps,
                )
            slot = jnp.maximum(i - num_warmup, 0)  # warmup writes to slot 0, overwritten later
            buffers = jax.tree.map(
                lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v.astype(b.dtype), slot, 0),
                buffers,
                (states.position, stats),
            )
            if progress is not None:
                if axis is None:
                    progress.tick(i + progress_offset)
                else:  # one device reports (its own chains)
                    jax.lax.cond(jax.lax.axis_index(axis) == 0,
                                 lambda: progress.tick(i + progress_offset), lambda: None)
            return (states, astate, tuned, n_grad, n_div, buffers, mon, donors, gaps), None

        zeros = jnp.zeros((n,), jnp.int32)
        carry = (states, astate, tuned, n_grad0.astype(jnp.int32), zeros, buffers, mon, donors, gaps)
        (_, _, tuned, n_grad, n_div, (positions, stats), _, donors, gaps), _ = jax.lax.scan(body, carry, xs)
        return positions, stats, tuned, n_grad, n_div, donors, gaps

    total = num_warmup + num_samples
    xs = (jnp.arange(total), jax.random.split(k_run, total))
    args = (states, astate, tuned, n_grad0, xs)
    if per_device:
        spec = lambda c: P("chain") if c else P()  # noqa: E731
        in_specs = (*jax.tree.map(spec, chained), P("chain"), P())
        draws = P(None, "chain")
        out_specs = (draws, draws, jax.tree.map(spec, chained[2]), P("chain"), P("chain"), draws, draws)
        loop = jax.shard_map(loop, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                             axis_names={"chain"}, check_vma=False)
    positions, stats, tuned, n_grad, n_div, donors, gaps = loop(*args)
    keep = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    return ChainsResult(
        jax.tree.map(keep, positions),
        {k: keep(v) for k, v in stats.items()},
        tuned,
        n_grad,
        n_div,
        donors,
        gaps,
        points,
    )
