"""Stuck chains: detected at checkpoints inside warmup and restarted from the best chains.

A chain that starts in a region it cannot leave -- a minor mode behind a barrier of
low density, a narrow steep well where its step size collapses, a plateau with no
gradient -- stays there through warmup and sampling; R-hat then flags the result,
but the user wants the right answer. At a few checkpoints inside warmup
(:func:`checkpoints`: after 7.5 %, 15 % and 25 % of it, i.e. at iterations 75, 150 and
250 of Stan's default 1000: the end of the first fast window and of the first two
slow windows) the chain loop compares the chains over the last half of the interval
since the previous checkpoint (the *window*). For each chain i:

* ``lp_i``: its mean log density over the window;
* ``mass_i = lp_i + 1/2 sum_d log var_{i,d}``: the log mass of the region it explores,
  under a Gaussian (Laplace) approximation with the diagonal of its window variance
  (log of the integral of exp(lp) over N(mean, diag var) ~ mean lp + D/2 + 1/2 log det
  + const; the constants are the same for every chain);
* ``rise_i``: its mean log density over the second half of the window minus that
  over the first half.

Chain i is **stuck** when

    for some chain j:  lp_j - lp_i > T  and  mass_j - mass_i > T,
    and rise_i < (max_j lp_j - lp_i) / 2,
    T = max(10, sqrt(D)),                D = number of unconstrained parameters.

A comparison with each other chain, not with the median of the others, so that the
chains in the main mode restart the others even when they are the minority. Requiring
both gaps keeps chains in a genuine mode that is wide (lower log density, larger
volume, the same mass) and chains still moving through their transient (large
variance) from being restarted; requiring the log-density gap keeps a chain in a
narrow spike of higher density; the rise keeps a chain that is still climbing towards
the others (a transient, not a trap). A chain that does not move at all has zero
variance, so its estimated log mass is -inf: it is restarted when its log density is
also T below another chain's; one frozen at a typical log density is not (a run of
rejections is normal for random-walk Metropolis). ``T`` is in log-density units: a
region whose estimated mass is e^-T times that of the others' (e^-10 = 4.5e-5 for D <= 100) gets
no chain, which a sampler could not cross to anyway. The single-draw log density of
a D-dimensional Gaussian has sd sqrt(D / 2), so a window mean of chains in the same
mode stays well inside sqrt(D).

Each stuck chain is **restarted** from the state of a good chain (the best first by
mean log density, cycling through the good chains when several are stuck): its
sampler state (position, log density, gradient), its tuned parameters (step size,
mass matrix) and its adaptation state (dual averaging, Welford estimators) are
copied, and warmup continues. The restart changes only where a chain continues
from during warmup: every transition still leaves the posterior invariant, and
post-warmup draws are never touched. Everything is array operations inside the
warmup scan (a gather over the chain axis under a ``lax.cond`` at the checkpoint),
so the program is compiled once. With one chain there is nothing to compare and
the monitor is not compiled at all; nor is it without in-loop warmup (samplers
tuned before the loop: MCLMC, adjusted MCLMC, ChEES; ``num_warmup < 75``).

Prior art: restarting or pruning chains stuck in low-probability regions during
warmup is what Stan's and PyMC's users do by hand; multi-path Pathfinder
(Zhang et al. 2022, JMLR 23(306)) discards paths whose ELBO is far below the others'
by importance resampling for the same reason.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Monitor", "checkpoints", "decide", "report_restarts", "stuck_threshold"]

FRACTIONS = (0.075, 0.15, 0.25)
MIN_WINDOW = 10  # iterations in a window at the very least


def checkpoints(num_warmup: int) -> tuple[int, ...]:
    """Iteration counts after which chains are compared: 7.5 %, 15 % and 25 % of warmup,
    those leaving a window of >= 10 iterations (none when ``num_warmup < 75``)."""
    out, prev = [], 0
    for f in FRACTIONS:
        c = int(round(f * num_warmup))
        if c - (prev + c) // 2 >= MIN_WINDOW and c < num_warmup:
            out.append(c)
            prev = c
    return tuple(out)


def windows(num_warmup: int, points: tuple[int, ...]):
    """Static per-iteration arrays of length ``num_warmup``: ``in_window`` (bool), ``late``
    (bool: the second half of a window) and ``check`` (0, or k + 1 at the last iteration of
    checkpoint k)."""
    in_window = np.zeros(max(num_warmup, 1), bool)
    late = np.zeros(max(num_warmup, 1), bool)
    check = np.zeros(max(num_warmup, 1), np.int32)
    prev = 0
    for k, c in enumerate(points):
        start = (prev + c) // 2
        in_window[start:c] = True
        late[(start + c) // 2 : c] = True
        check[c - 1] = k + 1
        prev = c
    return in_window, late, check


def stuck_threshold(dim: int) -> float:
    """T = max(10, sqrt(D)) in log-density units."""
    return max(10.0, math.sqrt(dim))


class Monitor(NamedTuple):
    """Running sums over the current window, per chain (leading axis chain)."""

    lp_sum: jax.Array  # (chain,)
    lp_late: jax.Array  # (chain,) sum over the second half of the window
    count_late: jax.Array  # () int
    ref: object  # position pytree: shift of the sums (the position at the last reset)
    x_sum: object  # position pytree
    x2_sum: object  # position pytree
    count: jax.Array  # () int


def monitor_init(positions, lp) -> Monitor:
    zeros = jax.tree.map(jnp.zeros_like, positions)
    count = jnp.zeros((), jnp.int32)
    return Monitor(jnp.zeros_like(lp), jnp.zeros_like(lp), count, positions, zeros, zeros, count)


def monitor_update(mon: Monitor, in_window, late, position, lp) -> Monitor:
    """Add one transition (all chains) when ``in_window`` (``late``: in its second half)."""
    w = in_window.astype(lp.dtype)
    lp = jnp.where(jnp.isnan(lp), -jnp.inf, lp)
    late = in_window & late
    d = jax.tree.map(lambda x, r: x - r, position, mon.ref)

    return Monitor(
        mon.lp_sum + jnp.where(in_window, lp, 0.0),
        mon.lp_late + jnp.where(late, lp, 0.0),
        mon.count_late + late.astype(jnp.int32),
        mon.ref,
        jax.tree.map(lambda s, x: s + w * x, mon.x_sum, d),
        jax.tree.map(lambda s, x: s + w * x * x, mon.x2_sum, d),
        mon.count + in_window.astype(jnp.int32),
    )


def summaries(mon: Monitor):
    """(mean lp, log mass, rise), each (chain,), of the window; ``rise`` is the mean lp of the
    window's second half minus that of its first half."""
    n = jnp.maximum(mon.count, 1).astype(mon.lp_sum.dtype)
    n_late = jnp.maximum(mon.count_late, 1).astype(n.dtype)
    n_early = jnp.maximum(mon.count - mon.count_late, 1).astype(n.dtype)
    mean_lp = mon.lp_sum / n
    rise = mon.lp_late / n_late - (mon.lp_sum - mon.lp_late) / n_early
    tiny = jnp.finfo(mon.lp_sum.dtype).tiny

    def half_logdet(s, s2):
        var = jnp.maximum(s2 / n - (s / n) ** 2, tiny)
        return 0.5 * jnp.log(var).reshape(var.shape[0], -1).sum(1)

    logdet = sum(jax.tree.leaves(jax.tree.map(half_logdet, mon.x_sum, mon.x2_sum)))
    return mean_lp, mean_lp + logdet, jnp.nan_to_num(rise, nan=0.0)


def decide(mean_lp, log_mass, rise, threshold: float):
    """Which chains are stuck and where each continues from (see the module docstring).

    Parameters
    ----------
    mean_lp, log_mass, rise : (chain,) float
    threshold : float
        T, log-density units.

    Returns
    -------
    stuck : (chain,) bool
    donor : (chain,) int
        The chain whose state chain i takes (i itself when not stuck).
    gap : (chain,) float
        The best mean log density of the other chains minus chain i's.
    """
    n = mean_lp.shape[0]
    lp = jnp.where(jnp.isnan(mean_lp), -jnp.inf, mean_lp)
    mass = jnp.where(jnp.isnan(log_mass), -jnp.inf, log_mass)
    # dominates[i, j]: chain j is more than T above chain i in both log density and log mass
    dominates = ((lp[None, :] - lp[:, None]) > threshold) & ((mass[None, :] - mass[:, None]) > threshold)
    best_other = jnp.max(jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, lp[None, :]), axis=1)
    gap = best_other - lp
    stuck = jnp.any(dominates, axis=1) & ~(rise > gap / 2)
    good = ~stuck
    n_good = jnp.sum(good)
    stuck = stuck & (n_good > 0)
    key = jnp.where(good, -jnp.clip(lp, -1e300, 1e300), jnp.inf)
    order = jnp.argsort(key)  # good chains first, best mean log density first
    rank = jnp.cumsum(stuck) - 1
    donor = jnp.where(stuck, order[rank % jnp.maximum(n_good, 1)], jnp.arange(n))
    return stuck, donor, gap


def report_restarts(res) -> tuple[dict, list[str]]:
    """``idata.attrs`` entries and status messages of the restarts in a ChainsResult.

    attrs: ``num_restarted_chains`` (chains restarted at least once), ``num_restarts``
    (restarts in all), ``restarted_chains`` (e.g. ``"[1, 3]"``), and ``restart_checkpoints``
    (the warmup iterations compared, e.g. ``"[75, 150, 250]"``; ``"[]"`` when off).
    """
    points = tuple(int(p) for p in (getattr(res, "restart_iteration", ()) or ()))
    info = {"restart_checkpoints": str(list(points)), "num_restarted_chains": 0, "num_restarts": 0,
            "restarted_chains": "[]"}
    if not points or res.restart_donor is None:
        return info, []
    donor = np.asarray(res.restart_donor)
    gap = np.asarray(res.restart_gap)
    hit = donor >= 0
    chains = sorted({int(c) for c in np.nonzero(hit.any(0))[0]})
    info.update(num_restarted_chains=len(chains), num_restarts=int(hit.sum()), restarted_chains=str(chains))
    events = []
    for k, c in zip(*np.nonzero(hit), strict=True):
        g = gap[k, c]
        events.append(f"chain {c} at iteration {points[k]} from chain {donor[k, c]} "
                      f"(mean log density {g:.1f} below the best chain's)")
    if not events:
        return info, []
    return info, [
        f"{len(chains)} stuck chain(s) restarted during warmup from the best chains' states: "
        + "; ".join(events) + ". They had been stuck in a region of negligible posterior mass "
        "(a minor mode, a trap); if this recurs, check the model for multimodality"
    ]
