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
):
    """Minimise ``loss_fn(params, rng_key)`` for ``num_steps`` optax steps.

    Returns
    -------
    (params, losses)
        Final parameters and the loss at every step, shape (num_steps,).
    """
    opt_state = optimizer.init(params)
    value_and_grad = jax.value_and_grad(loss_fn)

    def step(carry, xs):
        params, opt_state = carry
        i, key = xs
        loss, grads = value_and_grad(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if progress is not None:
            progress.tick(i)
        return (params, opt_state), loss

    keys = jax.random.split(rng_key, num_steps)
    (params, _), losses = jax.lax.scan(step, (params, opt_state), (jnp.arange(num_steps), keys))
    return params, losses


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
