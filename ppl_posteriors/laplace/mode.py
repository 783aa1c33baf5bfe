"""MAP estimation: multi-start quasi-Newton search, Newton polishing, a stationarity test.

Two variants: dense (:func:`find_map`) and matrix-free (:func:`find_map_matrix_free`).

The dense search is optimistix's BFGS on ``-logdensity_fn`` over the flat unconstrained
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

:func:`find_map_matrix_free` is the same search without a D x D array (memory O(D), for
the structures other than "full"): L-BFGS, Newton-CG polishing with Hessian-vector
products (CG stopped at a direction of non-positive curvature), λ = sqrt(gᵀ s) from the
CG solve H s = g, and Lanczos checks of the end point (a random-start probe for negative
curvature; the saddle-free λ by Lanczos quadrature where H is not found positive definite).

:func:`find_map_multistart` runs either from several starts (vmapped) and keeps the best;
see its docstring for how "best" is chosen.

References: Nocedal & Wright (2006), Numerical Optimization, ch. 6 (BFGS), ch. 7 (L-BFGS,
§7.2; Newton-CG, §7.1, Algorithm 7.1); Golub & Meurant (2010), Matrices, Moments and
Quadrature with Applications, ch. 6-7 (Lanczos quadrature of vᵀ f(H) v); Boyd &
Vandenberghe (2004), Convex Optimization, §9.5.1 (Newton decrement); Dauphin et al.
(2014), "Identifying and attacking the saddle point problem", NeurIPS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optimistix as optx

from .._errors import ConfigError
from ..linalg import lanczos
from .curvature import dense_hessian

__all__ = [
    "MAPResult",
    "MatrixFreeMAPResult",
    "MultiStartResult",
    "find_map",
    "find_map_matrix_free",
    "find_map_multistart",
    "stationarity",
]


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


def _polish(state_fn, x, newton_steps):
    """Safeguarded Newton polishing from ``x``: ``(x, state)`` after ``newton_steps`` steps.

    ``state_fn(z)`` is the Newton state at z, a tuple (log p, gradient, ..., step) whose last
    entry is the Newton step (NaN where no step is to be taken); it is evaluated once per
    iteration, at the candidate point, which is accepted unless the density drops by more
    than round-off or the state is not finite (one call site: the model's second derivatives
    are traced once, which keeps the program small)."""

    def polish(i, carry):
        x, state, cand = carry
        new = state_fn(cand)
        lp, lp_new = state[0], new[0]
        # near the mode a Newton step raises log p by ~λ²/2, below round-off: there it is
        # accepted when it shrinks the gradient and costs at most a tiny fraction of log p
        eps = jnp.finfo(x.dtype).eps
        slack = 100 * eps * (1 + jnp.abs(lp))
        smaller_grad = jnp.linalg.norm(new[1]) < jnp.linalg.norm(state[1])
        better = (lp_new >= lp - slack) | (smaller_grad & (lp_new >= lp - jnp.sqrt(eps) * (1 + jnp.abs(lp))))
        ok = (i == 0) | (jnp.isfinite(lp_new) & jnp.all(jnp.isfinite(new[-1])) & better)
        x, state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), (cand, new), (x, state))
        return x, state, x + state[-1]

    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(state_fn, x))
    x, state, _ = jax.lax.fori_loop(0, newton_steps + 1, polish, (x, zeros, x))
    return x, state


def find_map(
    flat_logdensity_fn: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    *,
    max_steps: int = 1000,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    newton_steps: int = 5,
) -> MAPResult:
    """Maximise ``flat_logdensity_fn`` from ``x0`` (D,); pure and jittable (several starts:
    :func:`find_map_multistart`, which keeps the LAPACK calls unbatched).

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
    found = _bfgs(flat_logdensity_fn, x0, max_steps=max_steps, rtol=rtol, atol=atol)
    return _polished(flat_logdensity_fn, found, newton_steps)


def _bfgs(f, x0, *, max_steps, rtol, atol):
    """The BFGS part of :func:`find_map`: (end point, steps, converged, hit max_steps); vmappable."""
    sol = optx.minimise(
        lambda x, _: -f(x), optx.BFGS(rtol=rtol, atol=atol), x0, max_steps=max_steps, throw=False
    )
    return (sol.value, sol.stats["num_steps"], sol.result == optx.RESULTS.successful,
            sol.result == optx.RESULTS.nonlinear_max_steps_reached)


def _polished(f, found, newton_steps) -> MAPResult:
    """Newton polishing from a :func:`_bfgs` end point, and the decrement. Its Cholesky
    factors and ``eigh`` are LAPACK calls: call it unbatched (``lax.map`` over starts),
    never under ``vmap`` (see :func:`stationarity`; docs/runtime.md, "Known problem")."""
    x, num_steps, bfgs_ok, max_steps_reached = found
    x, (lp, g, h, chol, _step) = _polish(lambda z: _newton_state(f, z), x, newton_steps)
    return MAPResult(
        position=x,
        logdensity=lp,
        grad=g,
        precision=h,
        cholesky=chol,
        decrement=stationarity(g, h, chol),
        num_steps=num_steps,
        bfgs_ok=bfgs_ok,
        max_steps_reached=max_steps_reached,
    )


# ---------------------------------------------------------------------------------------
# matrix-free variant: L-BFGS, Newton-CG polishing, Lanczos certificates (no D x D array)


class MatrixFreeMAPResult(NamedTuple):
    """Outcome of :func:`find_map_matrix_free` (a leading (S,) axis when vmapped over starts).

    No field is D x D. position : (D,); logdensity : scalar; grad : (D,) ∇ log p; decrement :
    Newton decrement λ (posterior sd; ``sqrt(gᵀ H⁻¹ g)`` from the CG solve where ``pd``, else
    the Lanczos estimate of ``sqrt(gᵀ |H|⁻¹ g)``; see :func:`find_map_matrix_free`);
    num_steps : L-BFGS iterations; bfgs_ok : whether L-BFGS reported success;
    max_steps_reached : whether L-BFGS stopped at ``max_steps``; pd : bool, H = -∇² log p
    judged positive definite (CG converged without meeting pᵀHp <= 0, and the smallest Ritz
    value of the random-start Lanczos probe is > 0); cg_converged : the last CG solve reached
    its tolerance; negative_curvature : it met a direction with pᵀHp <= 0; cg_steps : its
    iterations; min_curvature, max_curvature : smallest and largest Ritz value (units of H)
    found by the Lanczos runs at the end point; direction : (D,) unit Ritz vector of
    ``min_curvature`` (names the offending parameters in a message).
    """

    position: jax.Array
    logdensity: jax.Array
    grad: jax.Array
    decrement: jax.Array
    num_steps: jax.Array
    bfgs_ok: jax.Array
    max_steps_reached: jax.Array
    pd: jax.Array
    cg_converged: jax.Array
    negative_curvature: jax.Array
    cg_steps: jax.Array
    min_curvature: jax.Array
    max_curvature: jax.Array
    direction: jax.Array


def _hvp_at(f, x):
    """``(log p, g, v -> H v)`` at x, H = -∇² log p, by forward-over-reverse (``jax.linearize``
    of ``jax.value_and_grad``: the linearisation is stored once, each product is one JVP)."""
    (lp, g), lin = jax.linearize(jax.value_and_grad(f), x)
    return lp, g, lambda v: -lin(v)[1]


def _newton_cg(hvp, g, rtol, max_steps):
    """Solve H s = g by CG, stopping where a search direction has pᵀHp <= 0.

    Nocedal & Wright (2006), Algorithm 7.1 (line-search Newton-CG, inner loop): CG from s = 0
    on the Newton system until ‖H s - g‖ <= rtol ‖g‖, a direction of non-positive curvature
    (then s is the last iterate, or 0 at the first step), or ``max_steps``. Returns
    ``(s, converged, negative_curvature, steps)``; ``converged`` uses the recomputed residual.
    """
    tol2 = jnp.square(rtol) * jnp.vdot(g, g)
    zero = jnp.zeros_like(g)
    init = (zero, g, g, jnp.vdot(g, g), jnp.zeros((), jnp.int32), jnp.zeros((), bool))

    def cond(c):
        _, _, _, rr, k, neg = c
        return (rr > tol2) & (k < max_steps) & ~neg

    def body(c):
        s, r, p, rr, k, _ = c
        hp = hvp(p)
        php = jnp.vdot(p, hp)
        neg = ~(php > 0)  # also stops on NaN
        alpha = rr / jnp.where(neg, 1.0, php)
        s_new, r_new = s + alpha * p, r - alpha * hp
        rr_new = jnp.vdot(r_new, r_new)
        p_new = r_new + (rr_new / rr) * p
        keep = lambda a, b: jnp.where(neg, a, b)  # noqa: E731
        return keep(s, s_new), keep(r, r_new), keep(p, p_new), keep(rr, rr_new), k + 1, neg

    s, _, _, _, k, neg = jax.lax.while_loop(cond, body, init)
    res = g - hvp(s)
    converged = ~neg & (jnp.vdot(res, res) <= tol2)
    return s, converged, neg, k


def _newton_cg_state(f, x, cg_rtol, cg_max_steps):
    """Newton state for :func:`_polish`: (log p, g, gᵀs, converged, negative, steps, step), the
    step the CG iterate s ≈ H⁻¹ g -- where CG stopped early (negative curvature or
    ``cg_max_steps``) the truncated iterate, an ascent direction of log p (N&W 2006, Alg. 7.1),
    which the acceptance rule of :func:`_polish` then judges."""
    lp, g, hvp = _hvp_at(f, x)
    s, conv, neg, k = _newton_cg(hvp, g, cg_rtol, cg_max_steps)
    return lp, g, jnp.vdot(g, s), conv, neg, k, s


def _abs_form(hvp, v, m, power):
    """Lanczos (Gauss) quadrature of vᵀ |H|^power v and the extreme Ritz pairs of H.

    m steps from v/‖v‖ with full reorthogonalisation (:func:`ppl_posteriors.linalg.lanczos`):
    vᵀ f(H) v ≈ ‖v‖² Σ_i (s_{1i})² f(θ_i) with θ_i, s_i the eigenpairs of the tridiagonal T_m
    (Golub & Meurant, "Matrices, Moments and Quadrature", 2010, ch. 6), f(t) = |t|^power with
    |θ| floored at D·eps·max|θ| (as :func:`stationarity`). Exact once the Krylov space is
    invariant (m = D, or fewer steps for special v). Returns (value, θ_min, θ_max, u_min).
    Runs ``eigh`` on the m x m T_m: call it unbatched (``lax.map``), never under ``vmap``.
    """
    d = v.shape[0]
    vnorm = jnp.linalg.norm(v)
    v0 = jnp.where(vnorm > 0, v, jnp.zeros_like(v).at[0].set(1.0))
    lz = lanczos(hvp, v0, m, m)
    theta, u = lz.eigenvalues, lz.eigenvectors  # (m,) descending, (m, D)
    w = jnp.square(u @ (v0 / jnp.linalg.norm(v0)))
    absval = jnp.abs(theta)
    floor = d * jnp.finfo(v.dtype).eps * jnp.maximum(jnp.max(absval), jnp.finfo(v.dtype).tiny)
    value = jnp.square(vnorm) * jnp.sum(w * jnp.maximum(absval, floor) ** power)
    return value, theta[-1], theta[0], u[-1]


def _certify(f, res, *, lanczos_steps, probe_key):
    """Unbatched end-of-search checks of one start: positive definiteness and the decrement.

    A Lanczos run of min(D, lanczos_steps) Hessian-vector products from a random vector
    probes H beyond the Krylov space of g that CG explored (a saddle reached along its
    stable manifold has g ⊥ the negative directions, so CG alone cannot see them). H counts
    as positive definite when the last CG solve converged without meeting pᵀHp <= 0 and the
    probe's smallest Ritz value is > 0; the decrement is then sqrt(gᵀ s) of that solve.
    Otherwise (``lax.cond``: only then) a second Lanczos run from g gives the saddle-free
    decrement sqrt(gᵀ |H|⁻¹ g) by quadrature (:func:`_abs_form`)."""
    x, g = res.position, res.grad
    d = x.shape[0]
    m = min(d, lanczos_steps)
    finite = jnp.isfinite(res.logdensity) & jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(g))
    xs, gs = jnp.where(finite, x, 0.0), jnp.where(finite, g, 0.0)
    _, _, hvp = _hvp_at(f, xs)
    probe = lanczos(hvp, jax.random.normal(probe_key, (d,), x.dtype), m, m)
    tmin, tmax, umin = probe.eigenvalues[-1], probe.eigenvalues[0], probe.eigenvectors[-1]
    pd = finite & res.cg_converged & ~res.negative_curvature & (tmin > 0)

    def by_cg(_):
        return jnp.sqrt(jnp.maximum(res.decrement, 0.0)), tmin, tmax, umin

    def by_lanczos(_):
        val, t2min, t2max, u2 = _abs_form(hvp, gs, m, -1.0)
        first = tmin <= t2min
        return jnp.sqrt(val), jnp.minimum(tmin, t2min), jnp.maximum(tmax, t2max), jnp.where(first, umin, u2)

    dec, tmin, tmax, umin = jax.lax.cond(pd, by_cg, by_lanczos, None)
    nan = jnp.full((), jnp.nan, x.dtype)
    return res._replace(
        decrement=jnp.where(finite, dec, nan), pd=pd,
        min_curvature=jnp.where(finite, tmin, nan), max_curvature=jnp.where(finite, tmax, nan),
        direction=umin,
    )


def find_map_matrix_free(
    flat_logdensity_fn: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    *,
    max_steps: int = 1000,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    newton_steps: int = 5,
    cg_rtol: float | None = None,
    cg_max_steps: int = 1000,
    lanczos_steps: int = 32,
    history_length: int = 10,
    probe_key: jax.Array | None = None,
) -> MatrixFreeMAPResult:
    """Maximise ``flat_logdensity_fn`` from ``x0`` (D,) without forming a D x D matrix.

    Memory O(D·(history_length + lanczos_steps)) plus the model's linearisation; pure and
    jittable (vmap it through :func:`find_map_multistart` with ``solver="matrix_free"``,
    which keeps the Lanczos checks out of the vmap).

    1. L-BFGS (optimistix ``LBFGS``; Nocedal & Wright 2006, §7.2) on ``-flat_logdensity_fn``.
    2. ``newton_steps`` safeguarded Newton-CG steps (N&W 2006, §7.1, Algorithm 7.1): the
       step s solves H s = g (H = -∇² log p, g = ∇ log p) by conjugate gradients on
       Hessian-vector products (``jax.linearize`` of ``jax.grad``: forward over reverse),
       stopped at ``‖Hs - g‖ <= cg_rtol ‖g‖``, at ``cg_max_steps`` or at a direction with
       pᵀHp <= 0 (then the truncated CG iterate is the step, as in Algorithm 7.1), taken
       under the same acceptance rule as :func:`find_map`.
    3. At the end point: the Newton decrement λ = sqrt(gᵀ H⁻¹ g) = sqrt(gᵀ s) of the last
       CG solve when H is judged positive definite (that solve converged without negative
       curvature, and a Lanczos probe of min(D, lanczos_steps) steps from a random vector
       finds no Ritz value <= 0). Otherwise the *saddle-free* decrement sqrt(gᵀ |H|⁻¹ g) of
       :func:`find_map` is estimated by Lanczos quadrature from g (same floor on |λ_i|),
       exact when min(D, lanczos_steps) = D: so an indefinite or unconverged end point is
       stationary when this estimate is <= ``mode_tol``, and it is never "positive
       definite". For D > lanczos_steps positive definiteness is tested only on the Krylov
       spaces of g and of the probe (no matrix-free method can certify it in general).

    Parameters
    ----------
    flat_logdensity_fn : callable
        (D,) -> scalar log density.
    x0 : array (D,)
        Starting point.
    max_steps, rtol, atol : int, float, float
        L-BFGS iteration limit and Cauchy termination tolerances (optimistix).
    newton_steps : int
        Newton-CG polishing steps after L-BFGS.
    cg_rtol : float or None
        Relative residual of the CG solves; None: sqrt(machine eps) (1.5e-8 in float64).
    cg_max_steps : int
        CG iterations per solve (each one Hessian-vector product).
    lanczos_steps : int
        Krylov dimension of the end-point checks (min(D, lanczos_steps) products each).
    history_length : int
        L-BFGS memory.
    probe_key : PRNG key or None
        The probe's random start (None: ``jax.random.key(0)``).

    Returns
    -------
    MatrixFreeMAPResult
    """
    f = flat_logdensity_fn
    res = _search_matrix_free(f, x0, max_steps=max_steps, rtol=rtol, atol=atol, newton_steps=newton_steps,
                              cg_rtol=cg_rtol, cg_max_steps=cg_max_steps, history_length=history_length)
    key = jax.random.key(0) if probe_key is None else probe_key
    return _certify(f, res, lanczos_steps=lanczos_steps, probe_key=key)


def _search_matrix_free(f, x0, *, max_steps, rtol, atol, newton_steps, cg_rtol, cg_max_steps, history_length):
    """L-BFGS then Newton-CG polishing (vmappable: no ``eigh``); ``decrement`` holds gᵀs, the
    other checks are left for :func:`_certify`."""
    sol = optx.minimise(
        lambda x, _: -f(x), optx.LBFGS(rtol=rtol, atol=atol, history_length=history_length), x0,
        max_steps=max_steps, throw=False,
    )
    x = sol.value
    rtol_cg = jnp.sqrt(jnp.finfo(x.dtype).eps) if cg_rtol is None else cg_rtol
    x, (lp, g, gs, conv, neg, k, _step) = _polish(lambda z: _newton_cg_state(f, z, rtol_cg, cg_max_steps),
                                                  x, newton_steps)
    nan = jnp.full((), jnp.nan, x.dtype)
    return MatrixFreeMAPResult(
        position=x, logdensity=lp, grad=g, decrement=gs, num_steps=sol.stats["num_steps"],
        bfgs_ok=sol.result == optx.RESULTS.successful,
        max_steps_reached=sol.result == optx.RESULTS.nonlinear_max_steps_reached,
        pd=jnp.zeros((), bool), cg_converged=conv, negative_curvature=neg, cg_steps=k,
        min_curvature=nan, max_curvature=nan, direction=jnp.zeros_like(x),
    )


class MultiStartResult(NamedTuple):
    """Outcome of :func:`find_map_multistart`.

    best : MAPResult (``solver="matrix_free"``: MatrixFreeMAPResult) of the chosen start
    (unbatched); starts : the same with a leading (S,) axis; index : int, the chosen start;
    tier : (S,) int, 3 = stationary with a positive definite Hessian, 2 = stationary,
    1 = finite but not stationary, 0 = not finite (or no finite starting point); at_mode :
    (S,) bool, stationary and within ``same_mode_tol`` of the chosen point (distance
    sqrt(dᵀ |H| d) with H the chosen point's -∇² log p, in posterior sd where H is positive
    definite; matrix-free: dᵀ H d by Hessian-vector products, or the Lanczos quadrature of
    dᵀ |H| d where H is not found positive definite).
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
    solver: str = "dense",
    **kwargs,
) -> MultiStartResult:
    """:func:`find_map` (or :func:`find_map_matrix_free`) from each row of ``x0`` (S, D), vmapped; pure and jittable.

    "Best" is chosen lexicographically: first the tier (a start is *stationary* when
    its end point has a finite log density and gradient, BFGS did not stop at
    ``max_steps``, and its decrement λ <= ``mode_tol``; stationary with a positive
    definite Hessian beats stationary, which beats finite, which beats not finite),
    then the highest log density within the tier, then the lowest start index.
    ``start_ok`` (S,) marks starts with a finite log density and gradient (e.g. from
    :func:`ppl_posteriors.density.init.draw_initial_positions`); the others get tier 0.
    ``solver``: "dense" (:func:`find_map`: BFGS, dense Newton, Cholesky; ``best`` and
    ``starts`` are :class:`MAPResult`) or "matrix_free" (:func:`find_map_matrix_free`:
    L-BFGS, Newton-CG, Lanczos checks; :class:`MatrixFreeMAPResult`, nothing D x D; "positive
    definite" and λ as defined there). ``kwargs`` go to that function.

    Raises
    ------
    ConfigError
        ``solver`` is not "dense" or "matrix_free".
    """
    f = flat_logdensity_fn
    if solver == "dense":
        opts = {**find_map.__kwdefaults__, **kwargs}
        newton_steps = opts.pop("newton_steps")
        found = jax.vmap(lambda x: _bfgs(f, x, **opts))(x0)
        # Newton polishing and the decrement start by start (lax.map, not vmap): every
        # Cholesky factors one matrix, and stationarity's Cholesky/eigh choice stays a
        # branch, so positive definite end points never run eigh (see _polished)
        res = jax.lax.map(lambda b: _polished(f, b, newton_steps), found)
        pd = jnp.all(jnp.isfinite(res.cholesky), (-2, -1))
        distance = _dense_distance
    elif solver == "matrix_free":
        opts = {**find_map_matrix_free.__kwdefaults__, **kwargs}
        key = opts.pop("probe_key")
        key = jax.random.key(0) if key is None else key
        m = opts.pop("lanczos_steps")
        res = jax.vmap(lambda x: _search_matrix_free(f, x, **opts))(x0)
        # Lanczos (eigh of T_m) start by start, unbatched, as the dense decrement above
        res = jax.lax.map(lambda r: _certify(f, r, lanczos_steps=m, probe_key=key), res)
        pd = res.pd
        distance = lambda best, diff: _matrix_free_distance(f, best, diff, m)  # noqa: E731
    else:
        raise ConfigError(f"find_map_multistart(solver={solver!r}): use 'dense' or 'matrix_free'")
    if start_ok is None:
        start_ok = jnp.ones(x0.shape[:1], bool)
    finite = (
        start_ok
        & jnp.isfinite(res.logdensity)
        & jnp.all(jnp.isfinite(res.position), -1)
        & jnp.all(jnp.isfinite(res.grad), -1)
    )
    stationary = finite & ~res.max_steps_reached & (res.decrement <= mode_tol)
    tier = jnp.where(stationary & pd, 3, jnp.where(stationary, 2, jnp.where(finite, 1, 0)))
    lp = jnp.where(finite, res.logdensity, -jnp.inf)
    # lexicographic (tier, log density, -index): argmax returns the first maximum; when
    # the top tier is 0 every score is -inf and start 0 is chosen
    index = jnp.argmax(jnp.where(tier == jnp.max(tier), lp, -jnp.inf))
    best = jax.tree.map(lambda a: a[index], res)
    dist = distance(best, res.position - best.position)  # (S,), NaN where H is not finite
    at_mode = (tier >= 2) & (tier == tier[index]) & (dist <= same_mode_tol)
    return MultiStartResult(best=best, starts=res, index=index, tier=tier, at_mode=at_mode)


def _dense_distance(best: MAPResult, diff: jax.Array) -> jax.Array:
    """sqrt(dᵀ |H| d) for the rows d of ``diff`` (S, D), H the chosen point's precision."""
    h = best.precision
    finite_h = jnp.all(jnp.isfinite(h))

    def by_cholesky(_):  # H = L Lᵀ: dᵀ H d = ||Lᵀ d||²
        return jnp.linalg.norm(diff @ best.cholesky, axis=-1)

    def by_eigh(_):
        evals, evecs = jnp.linalg.eigh(jnp.where(finite_h, h, jnp.eye(h.shape[0], dtype=h.dtype)))
        return jnp.sqrt(jnp.sum((diff @ evecs) ** 2 * jnp.abs(evals), -1))

    pd_best = finite_h & jnp.all(jnp.isfinite(best.cholesky))
    dist = jax.lax.cond(pd_best, by_cholesky, by_eigh, None)
    return jnp.where(finite_h, dist, jnp.nan)


def _matrix_free_distance(f, best: MatrixFreeMAPResult, diff: jax.Array, m: int) -> jax.Array:
    """sqrt(dᵀ |H| d) matrix-free: dᵀ H d by Hessian-vector products where H is judged positive
    definite, else the Lanczos quadrature of :func:`_abs_form` for each row (unbatched)."""
    finite = jnp.isfinite(best.logdensity) & jnp.all(jnp.isfinite(best.position))
    _, _, hvp = _hvp_at(f, jnp.where(finite, best.position, 0.0))
    diff = jnp.where(jnp.isfinite(diff), diff, 0.0)

    def by_hvp(_):
        return jnp.sqrt(jnp.maximum(jnp.sum(diff * jax.vmap(hvp)(diff), -1), 0.0))

    def by_lanczos(_):
        return jnp.sqrt(jax.lax.map(lambda d: _abs_form(hvp, d, min(d.shape[0], m), 1.0)[0], diff))

    dist = jax.lax.cond(best.pd, by_hvp, by_lanczos, None)
    return jnp.where(finite, dist, jnp.nan)
