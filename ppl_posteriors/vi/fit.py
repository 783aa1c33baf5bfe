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

__all__ = ["FitResult", "FitState", "elbo_converged", "fit", "fit_batches", "init_state", "make_step"]


class FitResult(NamedTuple):
    """params: the returned parameters (averaged iterates, see ``fit``); trace (num_steps,):
    the objective value per step, NaN after an early stop; num_steps_run: steps taken
    (int scalar); stopped_early: bool scalar."""

    params: object
    trace: jax.Array
    num_steps_run: jax.Array
    stopped_early: jax.Array


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


def init_state(params, optimizer: optax.GradientTransformation) -> FitState:
    """The state before the first step."""
    zero = jnp.zeros((), jnp.result_type(float))
    return FitState(jnp.zeros((), jnp.int32), params, optimizer.init(params), params, params, zero,
                    jnp.asarray(jnp.inf, zero.dtype), jnp.zeros((), jnp.int32))


def make_step(loss_fn: Callable, optimizer, num_steps: int, num_average: int = 0, *,
              rtol: float = 1e-4, smoothing: int = 100):
    """``step(state, key) -> (state, loss, value)``: one optax step on ``loss_fn(params, key)
    -> (loss, value)``, with the averaging and early-stopping bookkeeping of :func:`fit`."""
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    start = num_steps - num_average
    decay = 1.0 - 1.0 / max(1, smoothing)

    def step(st: FitState, key):
        i = st.i
        (loss, value), grads = value_and_grad(st.params, key)
        updates, opt_state = optimizer.update(grads, st.opt_state, st.params)
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

    Returns
    -------
    FitResult
    """
    step = make_step(loss_fn, optimizer, num_steps, num_average, rtol=rtol, smoothing=smoothing)
    keys = jax.random.split(rng_key, num_steps)
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

    st, trace = jax.lax.while_loop(cond, body, (init_state(params, optimizer), trace0))
    return FitResult(final_params(st, num_steps, num_average), trace, st.i, st.i < num_steps)


def fit_batches(rt, make_loss: Callable, params, optimizer, num_steps: int, rng_key,
                num_average: int = 0, *, rtol: float = 1e-4, patience: int | None = None,
                smoothing: int = 100) -> FitResult:
    """:func:`fit` over the batches of ``rt`` (``pp.Batches``): one compiled step per batch,
    dispatched from the runtime's host loop (:meth:`Runtime.stream`); ``make_loss(ld)`` is
    the loss on the batch-bound (N / B-scaled) log density. Early stopping is checked
    every 100 steps; the trace holds the steps taken."""

    def program(ld, ctx, st, key):
        step = make_step(make_loss(ld), optimizer, num_steps, num_average, rtol=rtol, smoothing=smoothing)
        st, _loss, value = step(st, key)
        return st, value

    until = None if patience is None else (lambda st: bool(st.since_best >= patience))
    st, trace = rt.stream("fit", program, init_state(params, optimizer), rng_key,
                          num_steps=num_steps, until=until)
    return FitResult(final_params(st, num_steps, num_average), trace, st.i, st.i < num_steps)


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
