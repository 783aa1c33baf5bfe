"""Matrix-free solvers on pytrees: preconditioned conjugate gradients and Lanczos.

Both take the operator as a matrix-vector product ``A(v)`` on a pytree (or a flat
vector) and never form it, so they serve any curvature of ``linalg.products``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .._errors import ConfigError

__all__ = ["CGResult", "LanczosResult", "cg", "lanczos"]

_tmap = jax.tree_util.tree_map


def _vdot(x, y) -> jax.Array:
    return sum(
        jnp.vdot(a, b)
        for a, b in zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y), strict=True)
    )


def _axpy(a, x, y):  # a * x + y
    return _tmap(lambda xi, yi: a * xi + yi, x, y)


class CGResult(NamedTuple):
    """Outcome of :func:`cg`.

    solution : pytree like ``b``
        x with (A + damping·I) x ≈ b.
    num_steps : int array ()
        CG iterations taken (each one matrix-vector product).
    converged : bool array ()
        ``residual_norm <= max(rtol * ‖b‖₂, atol)``.
    residual_norm : float array ()
        ‖b − (A + damping·I) x‖₂ of the returned x (recomputed, not the recurrence).
    """

    solution: Any
    num_steps: jax.Array
    converged: jax.Array
    residual_norm: jax.Array


def _cg_loop(matvec, b, x0, precond, rtol, atol, max_steps):
    bnorm2 = _vdot(b, b)
    tol2 = jnp.maximum(jnp.square(rtol) * bnorm2, jnp.square(atol))
    r0 = _tmap(jnp.subtract, b, matvec(x0))
    z0 = precond(r0)
    init = (x0, r0, z0, _vdot(r0, z0), _vdot(r0, r0), jnp.zeros((), jnp.int32))

    def cond(state):
        _, _, _, gamma, rr, k = state
        return (rr > tol2) & (k < max_steps) & (gamma > 0)

    def body(state):
        x, r, p, gamma, _, k = state
        ap = matvec(p)
        alpha = gamma / _vdot(p, ap)
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, ap, r)
        z = precond(r)
        gamma_new = _vdot(r, z)
        p = _axpy(gamma_new / gamma, p, z)
        return x, r, p, gamma_new, _vdot(r, r), k + 1

    x, _, _, _, _, k = jax.lax.while_loop(cond, body, init)
    res = _tmap(jnp.subtract, b, matvec(x))
    rnorm2 = _vdot(res, res)
    return x, (k, rnorm2 <= tol2, jnp.sqrt(rnorm2))


def cg(
    A: Callable,
    b,
    x0=None,
    *,
    damping: float | jax.Array = 0.0,
    preconditioner: Callable | None = None,
    rtol: float = 1e-5,
    atol: float = 0.0,
    max_steps: int | None = None,
) -> CGResult:
    """Solve (A + damping·I) x = b by preconditioned conjugate gradients.

    Parameters
    ----------
    A : callable
        ``A(v) -> Av`` for v shaped like ``b``; symmetric positive (semi-)definite.
    b : pytree of arrays
        Right-hand side (D scalars in all).
    x0 : pytree like b, optional
        Starting guess (default zeros).
    damping : float or array ()
        λ ≥ 0 added to the diagonal (Tikhonov / prior precision); makes a PSD A definite.
    preconditioner : callable, optional
        ``M(r) ≈ (A + λI)⁻¹ r``, symmetric positive definite (e.g. the inverse of a
        diagonal curvature). Default: identity.
    rtol, atol : float
        Stop when ‖r‖₂ ≤ max(rtol·‖b‖₂, atol), r the un-preconditioned residual
        (SciPy's non-legacy criterion, as ``posteriors.cg`` and ``jax.scipy.sparse.linalg.cg``).
    max_steps : int, optional
        Iteration cap; default 10·D (SciPy's).

    Returns
    -------
    CGResult
        ``solution``, ``num_steps``, ``converged`` and ``residual_norm``. A solve that
        hit ``max_steps`` (or broke down on an indefinite operator) reports
        ``converged=False``; nothing is hidden.

    Raises
    ------
    ConfigError
        Negative tolerances, both tolerances zero without ``max_steps``, or
        ``max_steps < 1``.

    Notes
    -----
    Hestenes & Stiefel (1952); preconditioned form as in Saad, "Iterative methods
    for sparse linear systems", Alg. 9.1. Wrapped in ``jax.lax.custom_linear_solve``
    (symmetric), so ``solution`` is differentiable in ``b`` and in whatever ``A``
    closes over by implicit differentiation, without unrolling the loop. We write the
    loop rather than call ``lineax.CG`` because lineax's stopping rule is elementwise
    (|r_i| ≤ atol + rtol·|b_i|), which never holds with ``atol=0`` when b has zero
    entries (e.g. a unit vector), and it does not return the residual.
    """
    if rtol < 0 or atol < 0:
        raise ConfigError(f"cg: rtol and atol must be >= 0; got rtol={rtol}, atol={atol}")
    if rtol == 0 and atol == 0 and max_steps is None:
        raise ConfigError("cg: rtol=atol=0 never stops; give a positive rtol or atol, or max_steps")
    size = sum(x.size for x in jax.tree_util.tree_leaves(b))
    max_steps = 10 * size if max_steps is None else int(max_steps)
    if max_steps < 1:
        raise ConfigError(f"cg: max_steps must be >= 1; got {max_steps}")
    if x0 is None:
        x0 = _tmap(jnp.zeros_like, b)
    precond = preconditioner if preconditioner is not None else (lambda r: r)

    def matvec(v):
        return _axpy(damping, v, A(v))

    def solve(mv, rhs):
        return _cg_loop(mv, rhs, x0, precond, rtol, atol, max_steps)

    def transpose_solve(mv, rhs):  # symmetric operator; start from zero for the cotangent
        return _cg_loop(mv, rhs, _tmap(jnp.zeros_like, rhs), precond, rtol, atol, max_steps)

    x, (k, conv, rnorm) = jax.lax.custom_linear_solve(
        matvec, b, solve, transpose_solve, symmetric=True, has_aux=True
    )
    return CGResult(x, k, conv, rnorm)


class LanczosResult(NamedTuple):
    """Outcome of :func:`lanczos`.

    eigenvalues : (k,)
        The k largest Ritz values, descending (units of A).
    eigenvectors : pytree like ``v0`` with a leading axis k
        Orthonormal Ritz vectors; for a flat ``v0`` (D,) this is a (k, D) array
        (``eigenvectors.T`` is the usual (D, k) U).
    residual_norms : (k,)
        ‖A u_i − θ_i u_i‖₂ = |β_m s_{m,i}|: a posteriori error bound on each pair
        (the eigenvalue error is at most this).
    """

    eigenvalues: jax.Array
    eigenvectors: Any
    residual_norms: jax.Array


def lanczos(
    matvec: Callable,
    v0,
    k: int,
    num_iterations: int | None = None,
    rng_key: jax.Array | None = None,
) -> LanczosResult:
    """Top-k eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

    Parameters
    ----------
    matvec : callable
        ``matvec(v) -> Av`` for v shaped like ``v0``; A symmetric (D, D).
    v0 : pytree of arrays or (D,) array
        Starting vector (nonzero; a random one is best). Fixes the structure of the
        vectors and of the returned eigenvectors.
    k : int
        Number of eigenpairs (the largest algebraic eigenvalues), 1 ≤ k ≤ num_iterations.
    num_iterations : int, optional
        Krylov dimension m (matrix-vector products), k ≤ m ≤ D; default
        ``min(D, 2k + 20)``. Memory m·D; cost m matvecs + O(m²D) for reorthogonalisation.
        Larger m sharpens the top-k pairs (see ``residual_norms``).
    rng_key : PRNG key, optional
        Draws a fresh direction if the Krylov space becomes invariant (A of rank < m);
        default ``jax.random.key(0)``.

    Returns
    -------
    LanczosResult
        ``eigenvalues`` (k,), descending; ``eigenvectors`` (leading axis k);
        ``residual_norms`` (k,).

    Raises
    ------
    ConfigError
        k < 1, or not k ≤ num_iterations ≤ D.

    Notes
    -----
    Lanczos (1950); full reorthogonalisation (classical Gram-Schmidt applied twice per
    step) keeps the basis orthogonal to round-off, so no spurious copies of converged
    eigenvalues appear (Golub & Van Loan, "Matrix Computations", sec. 10.3). The
    tridiagonal T_m = Vᵀ A V is diagonalised with ``eigh``; Ritz vectors are V s_i.
    """
    flat0, unravel = ravel_pytree(v0)
    d = flat0.shape[0]
    k = int(k)
    m = min(d, 2 * k + 20) if num_iterations is None else int(num_iterations)
    if k < 1 or not (k <= m <= d):
        raise ConfigError(
            f"lanczos: need 1 <= k <= num_iterations <= D; got k={k}, num_iterations={m}, D={d}"
        )
    key = jax.random.key(0) if rng_key is None else rng_key
    dtype = flat0.dtype

    def mv(x):
        return ravel_pytree(matvec(unravel(x)))[0]

    def reorth(w, basis, upto):
        mask = (jnp.arange(m + 1) <= upto).astype(dtype)
        for _ in range(2):
            w = w - basis.T @ ((basis @ w) * mask)
        return w

    basis = jnp.zeros((m + 1, d), dtype).at[0].set(flat0 / jnp.linalg.norm(flat0))
    eps = jnp.finfo(dtype).eps

    def body(j, carry):
        basis, alphas, betas, anorm = carry
        v = basis[j]
        w = mv(v)
        alpha = jnp.vdot(v, w)
        w = reorth(w, basis, j)
        beta = jnp.linalg.norm(w)
        anorm = jnp.maximum(anorm, jnp.abs(alpha) + beta)
        breakdown = beta <= jnp.sqrt(eps) * anorm
        fresh = reorth(jax.random.normal(jax.random.fold_in(key, j), (d,), dtype), basis, j)
        w = jnp.where(
            breakdown, fresh / jnp.linalg.norm(fresh), w / jnp.where(breakdown, 1.0, beta)
        )
        beta = jnp.where(breakdown, 0.0, beta)
        return basis.at[j + 1].set(w), alphas.at[j].set(alpha), betas.at[j].set(beta), anorm

    init = (basis, jnp.zeros(m, dtype), jnp.zeros(m, dtype), jnp.zeros((), dtype))
    basis, alphas, betas, _ = jax.lax.fori_loop(0, m, body, init)
    t = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    theta, s = jnp.linalg.eigh(t)  # ascending
    theta, s = theta[::-1][:k], s[:, ::-1][:, :k]
    vecs = s.T @ basis[:m]  # (k, D)
    resid = jnp.abs(betas[-1] * s[-1])
    return LanczosResult(theta, jax.vmap(unravel)(vecs), resid)
