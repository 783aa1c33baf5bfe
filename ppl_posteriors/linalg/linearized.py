"""Linearised (GLM) push-forward of a Gaussian over parameters through a model.

f(θ) ≈ f(θ*) + J (θ − θ*), θ ~ N(θ*, Σ)  ⇒  f ~ N(f(θ*), J Σ Jᵀ)
(MacKay 1992; Foong et al. 2019 "'In-between' uncertainty in Bayesian neural
networks"; Immer et al. 2021 "Improving predictions of Bayesian neural nets via local
linearization"). ``posteriors.linearized_forward_diag`` is the diagonal-Σ case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import cho_factor, cho_solve

from .._errors import ConfigError
from .operators import LowRankPlusDiag

__all__ = ["LinearizedForward", "linearized_forward"]


class LinearizedForward(NamedTuple):
    """mean : f(θ*), shape S (the output's shape).
    cov : J Σ Jᵀ, shape (*S, *S); or its diagonal, shape S, when ``diagonal=True``.
    Units: output², for the output f (e.g. logits)."""

    mean: jax.Array
    cov: jax.Array


def _sigma_matvec(
    cov: Any, params, flat: jax.Array, unravel: Callable, precision: bool
) -> Callable[[jax.Array], jax.Array]:
    d = flat.shape[0]
    if isinstance(cov, LowRankPlusDiag):
        if cov.dim != d:
            raise ConfigError(
                f"linearized_forward: the LowRankPlusDiag operator is {cov.dim}-dimensional, params have {d}"
            )
        return cov.solve if precision else cov.matvec
    if callable(cov):
        if precision:
            raise ConfigError(
                "linearized_forward: a callable cov must be the covariance matvec Σv; "
                "for a precision pass a solve, e.g. lambda v: pp.linalg.cg(A, v).solution"
            )
        return lambda g: ravel_pytree(cov(unravel(g)))[0]
    same_tree = jax.tree_util.tree_structure(cov) == jax.tree_util.tree_structure(params) and all(
        jnp.shape(a) == jnp.shape(b)
        for a, b in zip(
            jax.tree_util.tree_leaves(cov), jax.tree_util.tree_leaves(params), strict=True
        )
    )
    if same_tree:
        var = ravel_pytree(cov)[0]
        return (lambda g: g / var) if precision else (lambda g: g * var)
    if hasattr(cov, "shape") and tuple(cov.shape) == (d, d):
        if precision:
            factor = cho_factor(cov, lower=True)
            return lambda g: cho_solve(factor, g)
        return lambda g: cov @ g
    raise ConfigError(
        f"linearized_forward: cov must be a pytree of variances shaped like params, a ({d}, {d}) matrix "
        f"(ravel_pytree order), a LowRankPlusDiag, or a callable Σ-matvec; got {type(cov).__name__} "
        f"with shape {getattr(cov, 'shape', None)}"
    )


def linearized_forward(
    f: Callable,
    params,
    cov,
    *,
    diagonal: bool = False,
    precision: bool = False,
    batch_size: int | None = None,
) -> LinearizedForward:
    """Mean and covariance (or its diagonal) of the linearised model output, J Σ Jᵀ.

    Parameters
    ----------
    f : callable
        ``f(params) -> out``, an array of shape S (P = prod(S) scalars); bind inputs
        with ``functools.partial``.
    params : pytree
        θ*, the linearisation point (D scalars).
    cov : pytree, array, LowRankPlusDiag or callable
        Σ over the ravelled params (``ravel_pytree`` order):
        a pytree shaped like ``params`` = the diagonal of Σ (variances, not sds);
        a (D, D) array = dense Σ; a :class:`LowRankPlusDiag`; or a callable
        ``v -> Σ v`` on pytrees like ``params``.
    diagonal : bool
        Return only diag(J Σ Jᵀ), shape S (one VJP per output, no JVP).
    precision : bool
        ``cov`` is a precision A and Σ = A⁻¹ (applied by Woodbury for LowRankPlusDiag,
        Cholesky for a dense array, 1/· for a diagonal).
    batch_size : int, optional
        Outputs processed together (``jax.lax.map``); memory about ``batch_size * D``.
        None: all P at once.

    Returns
    -------
    LinearizedForward
        ``mean`` (S), ``cov`` (*S, *S) symmetric, or (S) if ``diagonal``.

    Raises
    ------
    ConfigError
        ``cov`` of an unsupported type or wrong dimension.

    Notes
    -----
    Matrix-free: for each output p, g_p = Jᵀ e_p (a VJP), then diag_p = g_pᵀ Σ g_p and
    column p of J Σ Jᵀ = J (Σ g_p) (a JVP). Neither J nor (for diagonal / low-rank Σ)
    Σ is formed. For per-datum (C, C) blocks of a batched model, ``jax.vmap`` this
    function over the data with ``f`` the model on one datum.
    """
    flat, unravel = ravel_pytree(params)
    sig = _sigma_matvec(cov, params, flat, unravel, precision)

    def f_flat(x):
        return jnp.ravel(f(unravel(x)))

    out = f(params)
    z, f_jvp = jax.linearize(f_flat, flat)
    f_vjp = jax.linear_transpose(f_jvp, flat)
    p = z.shape[0]

    def per_output(i):
        g = f_vjp(jax.nn.one_hot(i, p, dtype=z.dtype))[0]
        s = sig(g)
        return jnp.vdot(g, s) if diagonal else f_jvp(s)

    idx = jnp.arange(p)
    res = (
        jax.vmap(per_output)(idx)
        if batch_size is None
        else jax.lax.map(per_output, idx, batch_size=batch_size)
    )
    shape = jnp.shape(out)
    if diagonal:
        return LinearizedForward(out, res.reshape(shape))
    res = 0.5 * (res + res.T)
    return LinearizedForward(out, res.reshape(*shape, *shape))
