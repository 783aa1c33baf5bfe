"""Initial positions: Stan's uniform(-r, r) draws on the unconstrained space."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from .._errors import ModelError
from .log_density import LogDensity, Position

__all__ = ["draw_initial_positions", "initial_positions"]


def draw_initial_positions(
    flat_logdensity_fn: Callable[[jax.Array], jax.Array],
    rng_key: jax.Array,
    num: int,
    dim: int,
    radius: float = 2.0,
    max_tries: int = 100,
    dtype=None,
) -> tuple[jax.Array, jax.Array]:
    """Pure, jittable core of :func:`initial_positions` on the flat vector.

    Each round draws ``num`` candidates uniformly from (-radius, radius)^dim; a
    row keeps the first candidate whose log density and gradient are finite.
    Rounds stop when every row has one, or after ``max_tries`` rounds.

    Returns
    -------
    x : array (num, dim)
        The starting points; a row that found none holds its last (non-finite) candidate.
    ok : bool array (num,)
        Whether the row's point has a finite log density and gradient.
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    value_and_grad = jax.vmap(jax.value_and_grad(flat_logdensity_fn))

    def cond(carry):
        _, _, ok, i = carry
        return (i < max_tries) & ~jnp.all(ok)

    def body(carry):
        key, found, ok, i = carry
        key, sub = jax.random.split(key)
        cand = jax.random.uniform(sub, (num, dim), dtype, -radius, radius)
        lp, g = value_and_grad(cand)
        good = jnp.isfinite(lp) & jnp.all(jnp.isfinite(g), axis=-1)
        found = jnp.where((~ok)[:, None], cand, found)  # the first good candidate is kept
        return key, found, ok | good, i + 1

    init = (rng_key, jnp.zeros((num, dim), dtype), jnp.zeros((num,), bool), jnp.zeros((), jnp.int32))
    _, found, ok, _ = jax.lax.while_loop(cond, body, init)
    return found, ok


def initial_positions(
    log_density: LogDensity, rng_key: jax.Array, num: int, radius: float = 2.0, max_tries: int = 100
) -> Position:
    """``num`` positions with finite log density and gradient, stacked on a leading axis.

    Each coordinate is drawn uniformly from (-radius, radius) on the unconstrained
    space, as Stan does (``init_r``; radius 0 gives the origin); draws whose log
    density or gradient is not finite are redrawn, up to ``max_tries`` rounds
    (:func:`draw_initial_positions`, which jitted programs can call directly).

    Returns
    -------
    dict
        Position whose leaves have shape (num, *unconstrained shape).

    Raises
    ------
    ModelError
        If no finite starting point is found; the message names the sites whose
        log-density term is not finite at the last draw.
    """
    draw = jax.jit(
        lambda key: draw_initial_positions(
            log_density.flat_logdensity_fn, key, num, log_density.dim, radius, max_tries
        )
    )
    found, ok = draw(rng_key)
    if bool(ok.all()):
        return log_density.unravel(found)
    last = log_density.unravel(found[int(jnp.argmin(ok))])
    terms = log_density.site_terms(last) if log_density.site_terms_fn is not None else {}
    bad = [name for name, t in terms.items() if not bool(jnp.isfinite(t))]
    where = f"; the log density of {', '.join(map(repr, bad))} is not finite at the last draw" if bad else ""
    raise ModelError(
        f"no starting point with a finite log density and gradient was found in {max_tries} "
        f"rounds of uniform(-{radius}, {radius}) draws on the unconstrained space{where}. "
        "Check the priors and the data (e.g. a likelihood that is -inf for every parameter)."
    )
