"""The optimisation loop shared by every VI method: optax steps in one jitted ``while_loop``.

``fit`` is pure: it minimises a stochastic ``loss_fn(params, rng_key) -> (loss, value)``
with any optax ``GradientTransformation`` (schedules and gradient clipping are optax
too: ``optax.chain(optax.clip_by_global_norm(c), optax.adam(schedule))``), records the
objective ``value`` at every step, and stops early when the smoothed loss has not
improved by a relative tolerance for ``patience`` steps. ``elbo_converged`` is the
window test on a finished trace used for the result's status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._progress import Progress

__all__ = ["FitResult", "FitState", "cosine_factor", "elbo_converged", "fit", "fit_batches", "init_state", "make_step"]


class FitResult(NamedTuple):
    """params: the returned parameters (averaged iterates, see ``fit``); trace (num_steps,):
    the objective value per step, NaN after an early stop; num_steps_run: steps taken
    (int scalar); stopped_early: bool scalar; last_params: the last iterate and
    opt_state: the optimiser's state after it (what a resumed fit continues from);
    step: the global step count, resumed steps included (int scalar)."""

    params: object
    trace: jax.Array
    num_steps_run: jax.Array
    stopped_early: jax.Array
    last_params: object = None
    opt_state: object = None
    step: jax.Array | None = None


def _show_objective(progress: Progress | None, i, value) -> None:
    """Show the smoothed objective in the progress bar's postfix, at the bar's own cadence."""
    if progress is None or not progress.enabled:
        return

    def show(v):
        bar = getattr(progress, "_bar", None)
        if bar is not None:
            bar.set_postfix(objective=f"{float(v):.4g}", refresh=False)

    jax.lax.cond(
        ((i + 1) % progress.every == 0) | (i == progress.total - 1),
        lambda v: jax.debug.callback(show, v),
        lambda v: None,
        value,
    )


class FitState(NamedTuple):
    """The loop's state: step ``i``, ``params``, ``opt_state``, the running average ``avg``
    of the final iterates, the EMA of the iterates ``ema_params``, the EMA of the loss
    ``ema``, its ``best`` value and the steps ``since_best``."""

    i: jax.Array
    params: object
    opt_state: object
    avg: object
    ema_params: object
    ema: jax.Array
    best: jax.Array
    since_best: jax.Array


def init_state(params, optimizer: optax.GradientTransformation, opt_state=None) -> FitState:
    """The state before the first step (``opt_state``: a saved optimiser state to continue
    from, e.g. Adam's moments and step count; None starts the optimiser afresh)."""
    zero = jnp.zeros((), jnp.result_type(float))
    opt_state = optimizer.init(params) if opt_state is None else opt_state
    return FitState(jnp.zeros((), jnp.int32), params, opt_state, params, params, zero,
                    jnp.asarray(jnp.inf, zero.dtype), jnp.zeros((), jnp.int32))


ANNEAL_FLOOR = 0.1


def cosine_factor(i, num_steps: int, floor: float = ANNEAL_FLOOR):
    """floor + (1 - floor) ½ (1 + cos(π i / n)): the cosine annealing factor of step i of
    n (1 at the first step, ``floor`` from step n on; Loshchilov & Hutter 2017, "SGDR",
    ICLR). The floor keeps the iterates moving for the averaging window that follows."""
    c = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(i, num_steps) / max(num_steps, 1)))
    return floor + (1.0 - floor) * c


def make_step(loss_fn: Callable, optimizer, num_steps: int, num_average: int = 0, *,
              rtol: float = 1e-4, smoothing: int = 100, anneal: bool = False):
    """``step(state, key) -> (state, loss, value)``: one optax step on ``loss_fn(params, key)
    -> (loss, value)``, with the averaging and early-stopping bookkeeping of :func:`fit`.
    ``anneal``: multiply the optimiser's updates by :func:`cosine_factor` of the step
    (for Adam, the same as a cosine-decayed learning rate over this fit's steps)."""
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    start = num_steps - num_average
    decay = 1.0 - 1.0 / max(1, smoothing)

    def step(st: FitState, key):
        i = st.i
        (loss, value), grads = value_and_grad(st.params, key)
        updates, opt_state = optimizer.update(grads, st.opt_state, st.params)
        if anneal:
            f = cosine_factor(i, start)  # anneal until the averaging window, then hold the floor
            updates = jax.tree.map(lambda u: (f * u).astype(u.dtype), updates)
        params = optax.apply_updates(st.params, updates)
        weight = jnp.where(i >= start, 1.0 / (i - start + 1.0), 0.0)
        avg = jax.tree.map(lambda a, p: a + weight * (p - a), st.avg, params)
        # bias-corrected EMAs (the first steps are not pulled towards the initial value)
        w = 1.0 / jnp.minimum(i + 1.0, 1.0 / (1.0 - decay))
        ema_params = jax.tree.map(lambda a, p: a + w * (p - a), st.ema_params, params)
        ema = st.ema + w * (loss - st.ema)
        improved = (i < smoothing) | (ema < st.best - rtol * jnp.abs(st.best))  # EMA warm-up counts as progress
        best = jnp.where(improved, ema, st.best)
        since_best = jnp.where(improved, 0, st.since_best + 1)
        return FitState(i + 1, params, opt_state, avg, ema_params, ema, best, since_best), loss, value

    return step


def final_params(st: FitState, num_steps: int, num_average: int):
    """The averaged iterates, or after an early stop their EMA (see :func:`fit`)."""
    if num_average <= 0:
        return st.params
    stopped = st.i < num_steps
    return jax.tree.map(lambda a, e: jnp.where(stopped, e, a), st.avg, st.ema_params)


def fit(
    loss_fn: Callable,
    params,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    rng_key,
    progress: Progress | None = None,
    num_average: int = 0,
    *,
    rtol: float = 1e-4,
    patience: int | None = None,
    smoothing: int = 100,
    maximise: bool = True,
    opt_state=None,
    start=0,
    anneal: bool = False,
):
    """Minimise ``loss_fn(params, rng_key) -> (loss, value)`` for up to ``num_steps`` steps.

    Parameters
    ----------
    loss_fn : callable
        Surrogate loss (its gradient is the estimator) and the objective value to record.
    params : pytree
        Initial guide parameters.
    optimizer : optax.GradientTransformation
    num_steps : int
        Maximum number of steps.
    rng_key : jax key
        Split into one key per step.
    progress : Progress, optional
        Ticks once per step; the bar's postfix shows the smoothed objective.
    num_average : int
        Return the mean of the last ``num_average`` iterates (Polyak-Ruppert averaging;
        Dhaka et al. 2020, "Robust, accurate stochastic optimization for variational
        inference", NeurIPS). After an early stop, the exponential moving average of the
        iterates with time constant ``smoothing`` is returned instead.
    rtol : float
        Relative improvement of the smoothed loss that counts as progress.
    patience : int or None
        Stop once the smoothed loss (exponential moving average, time constant
        ``smoothing`` steps) has not improved on its best value by ``rtol`` · |best| for
        this many steps (blackbirds' ``max_epochs_without_improvement``). None: run all
        ``num_steps``.
    maximise : bool
        Only for the sign of the objective shown in the progress bar.
    opt_state : pytree, optional
        The optimiser state to continue from (``FitResult.opt_state`` of an earlier fit
        that ended at ``params``); None starts the optimiser afresh.
    start : int or int scalar
        Global index of the first step. Step i draws with ``fold_in(rng_key, start + i)``,
        so a fit of n steps resumed (``params=last_params``, ``opt_state``, ``start=n``,
        same ``rng_key``) for m more takes exactly the steps of one fit of n + m.
    anneal : bool
        Anneal the updates with :func:`cosine_factor` over these ``num_steps`` (a
        resumed fit anneals again over its own steps: a warm restart).

    Returns
    -------
    FitResult
    """
    step = make_step(loss_fn, optimizer, num_steps, num_average, rtol=rtol, smoothing=smoothing, anneal=anneal)
    start = jnp.asarray(start, jnp.int32)
    # key of step i: fold_in(rng_key, start + i), computed for all steps at once (cheaper in the loop)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(rng_key, start + jnp.arange(num_steps, dtype=jnp.int32))
    trace0 = jnp.full((num_steps,), jnp.nan)

    def cond(carry):
        st, _ = carry
        running = st.i < num_steps
        if patience is not None:
            running = running & (st.since_best < patience)
        return running

    def body(carry):
        st, trace = carry
        i = st.i
        st, _loss, value = step(st, keys[i])
        trace = trace.at[i].set(value)
        if progress is not None:
            progress.tick(i)
            _show_objective(progress, i, st.ema if not maximise else -st.ema)
        return st, trace

    st, trace = jax.lax.while_loop(cond, body, (init_state(params, optimizer, opt_state), trace0))
    return FitResult(final_params(st, num_steps, num_average), trace, st.i, st.i < num_steps,
                     st.params, st.opt_state, start + st.i)


def fit_batches(rt, make_loss: Callable, params, optimizer, num_steps: int, rng_key,
                num_average: int = 0, *, rtol: float = 1e-4, patience: int | None = None,
                smoothing: int = 100, opt_state=None, start=0, anneal: bool = False) -> FitResult:
    """:func:`fit` over the batches of ``rt`` (``pp.Batches``): one compiled step per batch,
    dispatched from the runtime's host loop (:meth:`Runtime.stream`); ``make_loss(ld)`` is
    the loss on the batch-bound (N / B-scaled) log density. Early stopping is checked
    every 100 steps; the trace holds the steps taken. A resumed fit (``opt_state``,
    ``start``) continues the optimiser; the batches start again from the first epoch."""

    def program(ld, ctx, st, key):
        step = make_step(make_loss(ld), optimizer, num_steps, num_average, rtol=rtol, smoothing=smoothing,
                         anneal=anneal)
        st, _loss, value = step(st, key)
        return st, value

    until = None if patience is None else (lambda st: bool(st.since_best >= patience))
    st, trace = rt.stream("fit", program, init_state(params, optimizer, opt_state), rng_key,
                          num_steps=num_steps, until=until)
    return FitResult(final_params(st, num_steps, num_average), trace, st.i, st.i < num_steps,
                     st.params, st.opt_state, jnp.asarray(start, jnp.int32) + st.i)


def elbo_converged(elbo_trace, window: int, rtol: float = 1e-4) -> tuple[bool, float]:
    """Has a maximised objective (e.g. the ELBO) stopped increasing?

    Compares the mean over the last ``window`` steps with the mean over the
    ``window`` steps before: converged when the increase is below three Monte
    Carlo standard errors of that difference plus ``rtol`` · |objective|. For a
    minimised objective pass its negative.

    Returns
    -------
    (converged, increase)
    """
    e = np.asarray(elbo_trace, dtype=np.float64)
    if len(e) < 2 * window:
        return False, float("nan")
    last, prev = e[-window:], e[-2 * window : -window]
    increase = float(last.mean() - prev.mean())
    se = float(np.sqrt(last.var() / window + prev.var() / window))
    return increase <= 3.0 * se + rtol * abs(float(last.mean())), increase
