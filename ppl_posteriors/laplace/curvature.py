"""Curvature of the negative log density at a point.

``dense_hessian`` returns the exact Hessian H = -∇² log p(x) by forward-over-reverse
differentiation (D Hessian-vector products), symmetrised as (H + Hᵀ)/2 to remove
round-off asymmetry.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

__all__ = ["dense_hessian"]


def dense_hessian(flat_logdensity_fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """H = -∇² log p at ``x`` (D,), as a symmetric (D, D) array (units: 1 / position²)."""
    h = -jax.hessian(flat_logdensity_fn)(x)
    return 0.5 * (h + h.T)
