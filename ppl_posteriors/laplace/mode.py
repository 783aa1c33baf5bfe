"""MAP estimation: quasi-Newton search, then Newton polishing with a convergence test.

The search is optimistix's BFGS on ``-logdensity_fn`` over the flat unconstrained
vector. BFGS stops on small changes of the iterate and objective, which is not a
statement about the gradient, so the mode is then polished by safeguarded Newton
steps with the exact Hessian H = -∇² log p and accepted only if the Newton
decrement

    λ(x) = sqrt(g(x)ᵀ H(x)⁻¹ g(x)),   g = ∇ log p,

is below ``mode_tol``. λ is the distance from x to the Newton step's target in
posterior standard deviations of the Laplace approximation (λ²/2 estimates
log p(x*) - log p(x)), so the test does not depend on the parametrisation's units.

References: Nocedal & Wright (2006), Numerical Optimization, ch. 6 (BFGS) and
Boyd & Vandenberghe (2004), Convex Optimization, §9.5.1 (Newton decrement).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optimistix as optx

from .curvature import dense_hessian

__all__ = ["MAPResult", "find_map"]


class MAPResult(NamedTuple):
    """Outcome of :func:`find_map`.

    position : (D,) flat unconstrained mode; logdensity : scalar at the mode;
    precision : (D, D) H = -∇² log p at the mode; cholesky : (D, D) lower factor of
    H (NaN where H is not positive definite); decrement : Newton decrement λ at the
    mode (posterior sd units); num_steps : BFGS iterations; bfgs_ok : whether BFGS
    reported success.
    """

    position: jax.Array
    logdensity: jax.Array
    precision: jax.Array
    cholesky: jax.Array
    decrement: jax.Array
    num_steps: jax.Array
    bfgs_ok: jax.Array


def _newton_state(f, x):
    lp, g = jax.value_and_grad(f)(x)
    h = dense_hessian(f, x)
    chol = jnp.linalg.cholesky(h)
    step = jax.scipy.linalg.cho_solve((chol, True), g)
    return lp, h, chol, step, jnp.sqrt(jnp.maximum(g @ step, 0.0))


def find_map(
    flat_logdensity_fn: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    *,
    max_steps: int = 1000,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    newton_steps: int = 5,
) -> MAPResult:
    """Maximise ``flat_logdensity_fn`` from ``x0`` (D,); pure and jittable.

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
    sol = optx.minimise(
        lambda x, _: -f(x), optx.BFGS(rtol=rtol, atol=atol), x0, max_steps=max_steps, throw=False
    )
    x = sol.value

    d = x.shape[0]
    zeros = (jnp.zeros((), x.dtype), jnp.zeros((d, d), x.dtype), jnp.zeros((d, d), x.dtype),
             jnp.zeros((d,), x.dtype), jnp.zeros((), x.dtype))

    def polish(i, carry):
        # the Hessian is traced once: iteration i evaluates the state at x and, unless it
        # is the last one, takes the Newton step when it is safe
        x, _ = carry
        state = _newton_state(f, x)
        lp, _h, chol, step, _dec = state
        x_new = x + step
        # accept unless the density drops by more than round-off
        slack = 100 * jnp.finfo(x.dtype).eps * (1 + jnp.abs(lp))
        ok = jnp.all(jnp.isfinite(chol)) & jnp.all(jnp.isfinite(x_new)) & (f(x_new) >= lp - slack)
        return jnp.where(ok & (i < newton_steps), x_new, x), (x, state)

    _, (x, (lp, h, chol, _step, dec)) = jax.lax.fori_loop(
        0, newton_steps + 1, polish, (x, (x, zeros))
    )
    return MAPResult(
        position=x,
        logdensity=lp,
        precision=h,
        cholesky=chol,
        decrement=dec,
        num_steps=sol.stats["num_steps"],
        bfgs_ok=sol.result == optx.RESULTS.successful,
    )
