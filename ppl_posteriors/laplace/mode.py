"""MAP estimation: multi-start quasi-Newton search, Newton polishing, a stationarity test.

The search is optimistix's BFGS on ``-logdensity_fn`` over the flat unconstrained
vector. BFGS stops on small changes of the iterate and objective, which is not a
statement about the gradient, so the end point is then polished by safeguarded
Newton steps with the exact Hessian H = -∇² log p and judged by the (saddle-free)
Newton decrement

    λ(x) = sqrt(gᵀ |H(x)|⁻¹ g),   g = ∇ log p(x),   |H| = V |Λ| Vᵀ  (H = V Λ Vᵀ),

with eigenvalues below D·eps·max|Λ| in magnitude floored at that level. Where H is
positive definite this is the Newton decrement: the distance from x to the Newton
step's target in posterior standard deviations of the Laplace approximation (λ²/2
estimates log p(x*) - log p(x)), so the test does not depend on the units of the
parametrisation. Where H is indefinite or singular it still measures the distance
to a stationary point, |H| taking the place of H (Dauphin et al. 2014), so a saddle
or a flat direction with zero gradient counts as stationary and its curvature is
judged afterwards, while a non-zero slope along a flat direction does not.

:func:`find_map_multistart` runs :func:`find_map` from several starts (vmapped)
and keeps the best; see its docstring for how "best" is chosen.

References: Nocedal & Wright (2006), Numerical Optimization, ch. 6 (BFGS); Boyd &
Vandenberghe (2004), Convex Optimization, §9.5.1 (Newton decrement); Dauphin et al.
(2014), "Identifying and attacking the saddle point problem", NeurIPS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optimistix as optx

from .curvature import dense_hessian

__all__ = ["MAPResult", "MultiStartResult", "find_map", "find_map_multistart", "stationarity"]


class MAPResult(NamedTuple):
    """Outcome of :func:`find_map` (leaves get a leading (S,) axis when vmapped over starts).

    position : (D,) flat unconstrained end point; logdensity : scalar there; grad : (D,)
    ∇ log p there; precision : (D, D) H = -∇² log p there; cholesky : (D, D) lower
    factor of H (NaN where H is not positive definite); decrement : saddle-free
    Newton decrement λ (posterior sd units; see the module docstring); num_steps :
    BFGS iterations; bfgs_ok : whether BFGS reported success; max_steps_reached :
    whether BFGS stopped at ``max_steps``.
    """

    position: jax.Array
    logdensity: jax.Array
    grad: jax.Array
    precision: jax.Array
    cholesky: jax.Array
    decrement: jax.Array
    num_steps: jax.Array
    bfgs_ok: jax.Array
    max_steps_reached: jax.Array


def stationarity(grad: jax.Array, precision: jax.Array, cholesky: jax.Array | None = None) -> jax.Array:
    """Saddle-free Newton decrement sqrt(gᵀ |H|⁻¹ g) for g (D,), H (D, D); NaN if either is not finite.

    ``cholesky`` (D, D), the lower factor of H (NaN where H is not positive definite), is
    computed when not given. Where it is finite, |H| = H and λ = ||L⁻¹ g|| by one triangular
    solve; only an indefinite or singular H takes the eigendecomposition. Called unbatched
    (e.g. under ``lax.map``) the choice is a real branch, so the common positive definite
    case never runs LAPACK's ``eigh`` -- batched ``eigh`` calls can deadlock XLA:CPU's
    intra-op thread pool on small machines.
    """
    finite = jnp.all(jnp.isfinite(grad)) & jnp.all(jnp.isfinite(precision))
    h = jnp.where(finite, precision, jnp.eye(precision.shape[0], dtype=precision.dtype))
    g = jnp.where(finite, grad, 0.0)
    chol = jnp.linalg.cholesky(h) if cholesky is None else cholesky
    pd = finite & jnp.all(jnp.isfinite(chol))

    def by_cholesky(_):
        safe = jnp.where(pd, chol, jnp.eye(h.shape[0], dtype=h.dtype))
        return jnp.linalg.norm(jax.scipy.linalg.solve_triangular(safe, g, lower=True))

    def by_eigh(_):
        evals, evecs = jnp.linalg.eigh(h)
        absval = jnp.abs(evals)
        floor = h.shape[0] * jnp.finfo(h.dtype).eps * jnp.maximum(jnp.max(absval), jnp.finfo(h.dtype).tiny)
        proj = evecs.T @ g
        return jnp.sqrt(jnp.sum(proj**2 / jnp.maximum(absval, floor)))

    dec = jax.lax.cond(pd, by_cholesky, by_eigh, None)
    return jnp.where(finite, dec, jnp.nan)


def _newton_state(f, x):
    lp, g = jax.value_and_grad(f)(x)
    h = dense_hessian(f, x)
    chol = jnp.linalg.cholesky(h)
    step = jax.scipy.linalg.cho_solve((chol, True), g)
    return lp, g, h, chol, step


def find_map(
    flat_logdensity_fn: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    *,
    max_steps: int = 1000,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    newton_steps: int = 5,
) -> MAPResult:
    """Maximise ``flat_logdensity_fn`` from ``x0`` (D,); pure, jittable and vmappable.

    Parameters
    ----------
    flat_logdensity_fn : callable
        (D,) -> scalar log density.
    x0 : array (D,)
        Starting point.
    max_steps : int
        BFGS iteration limit.
    rtol, atol : float
        BFGS Cauchy termination tolerances (optimistix).
    newton_steps : int
        Number of safeguarded Newton polishing steps after BFGS (each is taken only
        if the Hessian is positive definite and the log density does not decrease).
    """
    f = flat_logdensity_fn
    res = _search(f, x0, max_steps=max_steps, rtol=rtol, atol=atol, newton_steps=newton_steps)
    return res._replace(decrement=stationarity(res.grad, res.precision, res.cholesky))


def _search(f, x0, *, max_steps, rtol, atol, newton_steps) -> MAPResult:
    """BFGS then Newton polishing (the body of :func:`find_map`); ``decrement`` is left NaN."""
    sol = optx.minimise(
        lambda x, _: -f(x), optx.BFGS(rtol=rtol, atol=atol), x0, max_steps=max_steps, throw=False
    )
    x = sol.value

    # safeguarded Newton polishing: one evaluation of the Newton state (value, gradient,
    # Hessian, Cholesky, step) per iteration, at the candidate point, which is accepted
    # unless the density drops by more than round-off or the state is not finite; the
    # Hessian of the model is traced once (a single call site keeps the program small)
    def polish(i, carry):
        x, state, cand = carry
        new = _newton_state(f, cand)
        lp, lp_new = state[0], new[0]
        # near the mode a Newton step raises log p by ~λ²/2, below round-off: there it is
        # accepted when it shrinks the gradient and costs at most a tiny fraction of log p
        eps = jnp.finfo(x.dtype).eps
        slack = 100 * eps * (1 + jnp.abs(lp))
        smaller_grad = jnp.linalg.norm(new[1]) < jnp.linalg.norm(state[1])
        better = (lp_new >= lp - slack) | (smaller_grad & (lp_new >= lp - jnp.sqrt(eps) * (1 + jnp.abs(lp))))
        ok = (i == 0) | (jnp.isfinite(lp_new) & jnp.all(jnp.isfinite(new[4])) & better)
        x, state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), (cand, new), (x, state))
        return x, state, x + state[4]

    d = x.shape[0]
    zeros = (jnp.zeros((), x.dtype), jnp.zeros((d,), x.dtype), jnp.zeros((d, d), x.dtype),
             jnp.zeros((d, d), x.dtype), jnp.zeros((d,), x.dtype))
    x, (lp, g, h, chol, _step), _ = jax.lax.fori_loop(0, newton_steps + 1, polish, (x, zeros, x))
    return MAPResult(
        position=x,
        logdensity=lp,
        grad=g,
        precision=h,
        cholesky=chol,
        decrement=jnp.full((), jnp.nan, x.dtype),
        num_steps=sol.stats["num_steps"],
        bfgs_ok=sol.result == optx.RESULTS.successful,
        max_steps_reached=sol.result == optx.RESULTS.nonlinear_max_steps_reached,
    )


class MultiStartResult(NamedTuple):
    """Outcome of :func:`find_map_multistart`.

    best : MAPResult of the chosen start (unbatched); starts : MAPResult with a
    leading (S,) axis; index : int, the chosen start; tier : (S,) int, 3 = stationary
    with a positive definite Hessian, 2 = stationary, 1 = finite but not stationary,
    0 = not finite (or no finite starting point); at_mode : (S,) bool, stationary and
    within ``same_mode_tol`` of the chosen point (distance sqrt(dᵀ |H| d) with H the
    chosen point's -∇² log p, in posterior sd where H is positive definite).
    """

    best: MAPResult
    starts: MAPResult
    index: jax.Array
    tier: jax.Array
    at_mode: jax.Array


def find_map_multistart(
    flat_logdensity_fn: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    start_ok: jax.Array | None = None,
    *,
    mode_tol: float = 0.01,
    same_mode_tol: float = 0.1,
    **kwargs,
) -> MultiStartResult:
    """:func:`find_map` from each row of ``x0`` (S, D), vmapped; pure and jittable.

    "Best" is chosen lexicographically: first the tier (a start is *stationary* when
    its end point has a finite log density and gradient, BFGS did not stop at
    ``max_steps``, and its decrement λ <= ``mode_tol``; stationary with a positive
    definite Hessian beats stationary, which beats finite, which beats not finite),
    then the highest log density within the tier, then the lowest start index.
    ``start_ok`` (S,) marks starts with a finite log density and gradient (e.g. from
    :func:`ppl_posteriors.density.init.draw_initial_positions`); the others get tier 0.
    ``kwargs`` go to :func:`find_map`.
    """
    opts = {**find_map.__kwdefaults__, **kwargs}
    res = jax.vmap(lambda x: _search(flat_logdensity_fn, x, **opts))(x0)
    # the decrement start by start (lax.map, not vmap): unbatched, stationarity's Cholesky/eigh
    # choice stays a branch, so positive definite end points never run a (batched) eigh
    res = res._replace(decrement=jax.lax.map(lambda a: stationarity(*a), (res.grad, res.precision, res.cholesky)))
    if start_ok is None:
        start_ok = jnp.ones(x0.shape[:1], bool)
    finite = (
        start_ok
        & jnp.isfinite(res.logdensity)
        & jnp.all(jnp.isfinite(res.position), -1)
        & jnp.all(jnp.isfinite(res.grad), -1)
    )
    stationary = finite & ~res.max_steps_reached & (res.decrement <= mode_tol)
    pd = jnp.all(jnp.isfinite(res.cholesky), (-2, -1))
    tier = jnp.where(stationary & pd, 3, jnp.where(stationary, 2, jnp.where(finite, 1, 0)))
    lp = jnp.where(finite, res.logdensity, -jnp.inf)
    # lexicographic (tier, log density, -index): argmax returns the first maximum; when
    # the top tier is 0 every score is -inf and start 0 is chosen
    index = jnp.argmax(jnp.where(tier == jnp.max(tier), lp, -jnp.inf))
    best = jax.tree.map(lambda a: a[index], res)

    h = best.precision
    finite_h = jnp.all(jnp.isfinite(h))
    diff = res.position - best.position  # (S, D)

    def by_cholesky(_):  # H = L Lᵀ: dᵀ H d = ||Lᵀ d||²
        return jnp.linalg.norm(diff @ best.cholesky, axis=-1)

    def by_eigh(_):
        evals, evecs = jnp.linalg.eigh(jnp.where(finite_h, h, jnp.eye(h.shape[0], dtype=h.dtype)))
        return jnp.sqrt(jnp.sum((diff @ evecs) ** 2 * jnp.abs(evals), -1))

    pd_best = finite_h & jnp.all(jnp.isfinite(best.cholesky))
    dist = jax.lax.cond(pd_best, by_cholesky, by_eigh, None)
    at_mode = (tier >= 2) & (tier == tier[index]) & finite_h & (dist <= same_mode_tol)
    return MultiStartResult(best=best, starts=res, index=index, tier=tier, at_mode=at_mode)
