"""Gaussians on pytrees: diagonal densities and draws, Cholesky packing, and sampling
from large Gaussians given by their precision without forming the covariance.

* :func:`diag_normal_log_prob`, :func:`diag_normal_sample`: N(mean, diag(sd²)) on a
  parameter pytree (as ``posteriors.diag_normal_log_prob`` / ``diag_normal_sample``).
* :func:`L_from_flat`, :func:`L_to_flat`: a lower-triangular (n, n) matrix packed row by
  row into its n(n+1)/2 nonzero entries (``numpy.tril_indices`` order, as posteriors).
* :func:`lowrank_normal_sample`, :func:`lowrank_normal_log_prob`: N(mean, A⁻¹) with a
  low-rank-plus-diagonal precision A (:class:`~ppl_posteriors.linalg.LowRankPlusDiag`);
  its log-determinant is ``A.logdet()``.
* :func:`cg_normal_sample`: N(mean, A⁻¹) for a precision known only through its
  matvec, by perturb-and-solve.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .._errors import ConfigError
from .operators import LowRankPlusDiag
from .solvers import CGResult, cg

__all__ = [
    "L_from_flat",
    "L_to_flat",
    "cg_normal_sample",
    "diag_normal_log_prob",
    "diag_normal_sample",
    "lowrank_normal_log_prob",
    "lowrank_normal_sample",
]

_tmap = jax.tree_util.tree_map


def _broadcast_like(value, like):
    """A Python or 0-d scalar becomes a pytree like ``like``; a pytree is returned as is."""
    if isinstance(value, (int, float)) or (hasattr(value, "ndim") and value.ndim == 0):
        return _tmap(lambda _: value, like)
    return value


def diag_normal_log_prob(x, mean=0.0, sd_diag=1.0, normalize: bool = True) -> jax.Array:
    """log N(x; mean, diag(sd_diag²)), summed over every element of the pytree ``x``.

    Parameters
    ----------
    x : pytree of arrays
        Point(s); leaves may carry extra leading axes only if ``mean`` and ``sd_diag``
        broadcast against them (the sum is then over everything).
    mean, sd_diag : scalar or pytree like x
        Mean and standard deviations (units of x); scalars broadcast to every leaf.
    normalize : bool
        Include −log(sd √(2π)) per element; if False only −½((x − mean)/sd)².

    Returns
    -------
    scalar array
    """
    mean = _broadcast_like(mean, x)
    sd_diag = _broadcast_like(sd_diag, x)

    def one(v, m, sd):
        z = (v - m) / sd
        out = -0.5 * z * z
        if normalize:
            out = out - jnp.log(sd) - 0.5 * math.log(2 * math.pi)
        return jnp.sum(out)

    return sum(jax.tree_util.tree_leaves(_tmap(one, x, mean, sd_diag)))


def diag_normal_sample(rng_key: jax.Array, mean, sd_diag, sample_shape: tuple[int, ...] = ()):
    """Draws from N(mean, diag(sd_diag²)) on a pytree.

    Parameters
    ----------
    rng_key : PRNG key
    mean : pytree of arrays
    sd_diag : scalar or pytree like mean
        Standard deviations.
    sample_shape : tuple of int

    Returns
    -------
    pytree like mean, each leaf (*sample_shape, *leaf.shape)
    """
    sd_diag = _broadcast_like(sd_diag, mean)
    leaves, treedef = jax.tree_util.tree_flatten(mean)
    keys = jax.random.split(rng_key, max(len(leaves), 1))
    sds = treedef.flatten_up_to(sd_diag)
    out = [
        m + sd * jax.random.normal(k, (*sample_shape, *jnp.shape(m)), jnp.result_type(m))
        for m, sd, k in zip(leaves, sds, keys[: len(leaves)], strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def _tril_size(k: int) -> int:
    n = int(round((math.isqrt(8 * k + 1) - 1) / 2))
    if n * (n + 1) // 2 != k:
        raise ConfigError(f"L_from_flat: length {k} is not n(n+1)/2 for any integer n")
    return n


def L_from_flat(L_flat: jax.Array) -> jax.Array:  # noqa: N802  (posteriors' name)
    """Lower-triangular (n, n) matrix from its n(n+1)/2 packed entries (row by row).

    Raises ``ConfigError`` if the length is not triangular. Inverse of :func:`L_to_flat`.
    """
    n = _tril_size(L_flat.shape[-1])
    rows, cols = jnp.tril_indices(n)
    return jnp.zeros((*L_flat.shape[:-1], n, n), L_flat.dtype).at[..., rows, cols].set(L_flat)


def L_to_flat(L: jax.Array) -> jax.Array:  # noqa: N802
    """The n(n+1)/2 lower-triangular entries of L (..., n, n), row by row."""
    rows, cols = jnp.tril_indices(L.shape[-1])
    return L[..., rows, cols]


def lowrank_normal_sample(
    rng_key: jax.Array, mean, precision: LowRankPlusDiag, sample_shape: tuple[int, ...] = ()
):
    """Draws from N(mean, A⁻¹), A = U diag(s) Uᵀ + diag(d) a precision, in O(D k) each.

    Parameters
    ----------
    rng_key : PRNG key
    mean : pytree of arrays or (D,) array
        Ravelled with ``ravel_pytree`` to match A's dimension D.
    precision : LowRankPlusDiag
    sample_shape : tuple of int

    Returns
    -------
    pytree like mean, each leaf (*sample_shape, *leaf.shape)

    Notes
    -----
    x = mean + A^{-1/2} ε with the exact symmetric inverse square root of
    :class:`LowRankPlusDiag` (one thin SVD of the (D, k) factor); the covariance is
    never formed.
    """
    flat, unravel = ravel_pytree(mean)
    if flat.shape[0] != precision.dim:
        raise ConfigError(
            f"mean has {flat.shape[0]} scalars but the precision is {precision.dim}-dimensional"
        )
    draws = flat + precision.sample(rng_key, sample_shape, inverse=True)
    return _unravel_batch(unravel, draws, sample_shape)


def _unravel_batch(unravel, draws, sample_shape):
    out = jax.vmap(unravel)(draws.reshape(-1, draws.shape[-1]))
    return _tmap(lambda x: x.reshape(*sample_shape, *x.shape[1:]), out)


def lowrank_normal_log_prob(x, mean, precision: LowRankPlusDiag) -> jax.Array:
    """log N(x; mean, A⁻¹) for x a pytree like mean (one point): −½(D log 2π − log det A + δᵀAδ)."""
    xf, _ = ravel_pytree(x)
    mf, _ = ravel_pytree(mean)
    return precision.normal_log_prob(xf, mf, precision=True)


def cg_normal_sample(
    rng_key: jax.Array,
    mean,
    precision_matvec: Callable,
    perturbation: Callable,
    sample_shape: tuple[int, ...] = (),
    *,
    preconditioner: Callable | None = None,
    rtol: float = 1e-8,
    atol: float = 0.0,
    max_steps: int | None = None,
) -> CGResult:
    """Draws from N(mean, A⁻¹) with A known only as a matvec: perturb-and-solve.

    Parameters
    ----------
    rng_key : PRNG key
    mean : pytree of arrays
    precision_matvec : callable
        ``A(v) -> Av`` on pytrees like ``mean``; symmetric positive definite.
    perturbation : callable
        ``perturbation(rng_key) -> η``, a pytree like mean with η ~ N(0, A). For a
        precision A = Σ_n J_nᵀ L_n L_nᵀ J_n + diag(λ) (GGN + prior) take
        η = Jᵀ (L ε₁) + √λ ε₂ (one VJP): no factor of A is needed.
    sample_shape : tuple of int
    preconditioner, rtol, atol, max_steps
        Passed to :func:`cg` for each draw.

    Returns
    -------
    CGResult
        ``solution``: the draws, leaves (*sample_shape, *leaf.shape);
        ``num_steps``, ``converged``, ``residual_norm``: (*sample_shape,) per draw.
        A draw whose solve did not converge is not exact: check ``converged``.

    Notes
    -----
    If η ~ N(0, A) then A⁻¹η ~ N(0, A⁻¹A A⁻¹) = N(0, A⁻¹) (perturbation-optimisation,
    Papandreou & Yuille 2010; Orieux et al. 2012 "Sampling high-dimensional Gaussian
    distributions for general linear inverse problems"; "sample-then-optimise" in
    Antorán et al. 2023). Each draw costs one CG solve; exact up to the CG tolerance.
    """
    n = math.prod(sample_shape)
    keys = jax.random.split(rng_key, max(n, 1))

    def one(key):
        res = cg(
            precision_matvec,
            perturbation(key),
            preconditioner=preconditioner,
            rtol=rtol,
            atol=atol,
            max_steps=max_steps,
        )
        return res._replace(solution=_tmap(jnp.add, mean, res.solution))

    out = jax.vmap(one)(keys)
    if not sample_shape:
        return _tmap(lambda x: x[0], out)
    return _tmap(lambda x: x.reshape(*sample_shape, *x.shape[1:]), out)
