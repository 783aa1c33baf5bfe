"""Initial positions: Stan's uniform(-r, r) draws on the unconstrained space."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._errors import ModelError
from .log_density import LogDensity, Position

__all__ = ["initial_positions"]


def initial_positions(
    log_density: LogDensity, rng_key: jax.Array, num: int, radius: float = 2.0, max_tries: int = 100
) -> Position:
    """``num`` positions with finite log density and gradient, stacked on a leading axis.

    Each coordinate is drawn uniformly from (-radius, radius) on the unconstrained
    space, as Stan does (``init_r``; radius 0 gives the origin); draws whose log
    density or gradient is not finite are redrawn, up to ``max_tries`` rounds.

    Returns
    -------
    dict
        Position whose leaves have shape (num, *unconstrained shape).

    Raises
    ------
    ModelError
        If no finite starting point is found; the message names the sites whose
        log density is not finite at the origin.
    """
    dim = log_density.dim
    value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(log_density.flat_logdensity_fn)))
    dtype = jnp.result_type(float)
    found = jnp.zeros((num, dim), dtype)
    ok = jnp.zeros((num,), bool)
    for _ in range(max_tries):
        rng_key, sub = jax.random.split(rng_key)
        cand = jax.random.uniform(sub, (num, dim), dtype, -radius, radius)
        lp, g = value_and_grad(cand)
        good = jnp.isfinite(lp) & jnp.all(jnp.isfinite(g), axis=-1)
        take = good & ~ok
        found = jnp.where(take[:, None], cand, found)
        ok = ok | good
        if bool(ok.all()):
            return log_density.unravel(found)
    raise ModelError(
        f"no starting point with a finite log density and gradient was found in {max_tries} "
        f"rounds of uniform(-{radius}, {radius}) draws on the unconstrained space; "
        f"log density at the origin: {float(log_density.logdensity_fn(log_density.init_position))}. "
        "Check the priors and the data (e.g. a likelihood that is -inf for every parameter)."
    )
