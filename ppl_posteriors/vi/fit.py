"""The optimisation loop shared by VI methods: optax steps in one jitted ``lax.scan``.

``fit`` is pure: it takes the loss, the initial parameters and an optax
``GradientTransformation`` and returns the final parameters and the trace of the
loss. ``elbo_converged`` is the convergence test on that trace.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._progress import Progress

__all__ = ["elbo_converged", "fit"]


def fit(
    loss_fn: Callable,
    params,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    rng_key,
    progress: Progress | None = None,
    num_average: int = 0,
):
    """Minimise ``loss_fn(params, rng_key)`` for ``num_steps`` optax steps.

    With ``num_average > 0`` the returned parameters are the mean of the last
    ``num_average`` iterates (Polyak-Ruppert averaging), which removes most of the
    stochastic-gradient noise of the final iterate (Dhaka et al. 2020, "Robust,
    Accurate Stochastic Optimization for Variational Inference", NeurIPS).

    Returns
    -------
    (params, losses)
        Final (or averaged) parameters and the loss at every step, shape (num_steps,).
    """
    opt_state = optimizer.init(params)
    value_and_grad = jax.value_and_grad(loss_fn)
    start = num_steps - num_average

    def step(carry, xs):
        params, opt_state, avg = carry
        i, key = xs
        loss, grads = value_and_grad(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        weight = jnp.where(i >= start, 1.0 / (i - start + 1.0), 0.0)
        avg = jax.tree.map(lambda a, p: a + weight * (p - a), avg, params)
        if progress is not None:
            progress.tick(i)
        return (params, opt_state, avg), loss

    keys = jax.random.split(rng_key, num_steps)
    init = (params, opt_state, params)
    (params, _, avg), losses = jax.lax.scan(step, init, (jnp.arange(num_steps), keys))
    return (avg if num_average > 0 else params), losses


def elbo_converged(elbo_trace, window: int, rtol: float = 1e-4) -> tuple[bool, float]:
    """Has the ELBO stopped increasing?

    Compares the mean ELBO over the last ``window`` steps with the mean over the
    ``window`` steps before: converged when the increase is below three Monte
    Carlo standard errors of that difference plus ``rtol`` · |ELBO|.

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
