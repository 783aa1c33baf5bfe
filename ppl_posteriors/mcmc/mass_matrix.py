"""Mass-matrix adaptations that read the gradients: nutpie's diagonal and low rank plus diagonal.

Both are :class:`~.adaptation.Adaptation` s of the "in the loop" form, driven by the
one chain loop like Stan's :func:`~.adaptation.window_adaptation`, per chain
(vmapped), with BlackJAX's dual averaging of the step size (Hoffman & Gelman 2014,
Alg. 5; ``blackjax.adaptation.step_size.dual_averaging_adaptation``). They need the
log-density gradient at each draw: the sampler state's ``logdensity_grad`` (NUTS,
HMC, MALA, Barker), else one extra gradient per draw.

* :func:`nutpie_adaptation` -- the diagonal M⁻¹_ii = sqrt(Var(x_i) / Var(∂_i log p)),
  which minimises the Fisher divergence between the target and its affine
  whitening among diagonal preconditioners (Seyboldt et al., "Preconditioning
  Hamiltonian Monte Carlo by minimizing Fisher divergence", nutpie; nuts-rs
  ``mass_matrix/adapt.rs``, ``adapt_strategy.rs``), with nutpie's warmup.
* :func:`low_rank_adaptation` -- M⁻¹ = diag(σ)(I + U(Λ - I)Uᵀ)diag(σ), the same
  estimator plus the eigen-directions of the draw and gradient covariances
  (Algorithm 1 of that paper; :func:`fisher_low_rank_metric`, nuts-rs's selection:
  every direction of both subspaces outside [1/2, 2]), in BlackJAX's
  ``fisher_low_rank`` metric core's buffer on nutpie's growing windows
  (``build_growing_window_schedule``), re-estimated chain by chain (``lax.map``: no
  batched LAPACK call, see :mod:`.metric`); the kernels apply it at O(D·q) per
  leapfrog step, or as its D x D matrix when q ≥ D/2 (:func:`.metric.kernel_metric`).

:func:`adaptation_for` picks the adaptation of a ``mass_matrix`` option;
:func:`.metric.kernel_metric` turns tuned parameters into the kernels' metric.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.low_rank_adaptation import build_growing_window_schedule
from blackjax.adaptation.metric_recipes import REGISTRY, seed_low_rank_sigma_from_grad
from blackjax.adaptation.step_size import dual_averaging_adaptation
from blackjax.adaptation.window_adaptation import build_schedule
from blackjax.mcmc.metrics import LowRankInverseMassMatrix
from jax.flatten_util import ravel_pytree

from .adaptation import Adaptation, window_adaptation
from .metric import low_rank_dense

__all__ = [
    "AUTO_LOW_RANK_DIMS", "MASS_MATRICES", "adaptation_for", "fisher_low_rank_metric",
    "low_rank_adaptation", "nutpie_adaptation", "resolve_mass_matrix",
]

MASS_MATRICES = ("auto", "diag", "dense", "low_rank", "nutpie")
#: ``mass_matrix="auto"`` (NUTS's default) is "low_rank" for D in this range, else "diag". On
#: B2 (bench/mcmc_b2.py, same run, quiet machine, 2026-12-02) low_rank gave 2.04x diag's bulk
#: ESS/s on logreg (D = 31) and 2.28x on gauss100 (D = 100), and tied on eight schools
#: (D = 10: 1.01x, one more divergence), so small models keep the simpler diagonal. The
#: upper bound is a guard, not a measurement: the metric costs O(D·q) per leapfrog step (q
#: up to min(D, 2·buffer)), growing like D² where diag is O(D). nutpie's gradient-based
#: diagonal ("nutpie") was not made the small-D default: on the 12 posteriordb posteriors with
#: D <= 13 (2 seeds each, 2026-12-02) it gained bulk ESS per gradient on 10 of 12 but per CPU
#: second on only 7 (0.75x-1.8x of diag; eight schools non-centred 0.92x), and gp_pois_regr
#: diverged 161-185 times against diag's 10-13
AUTO_LOW_RANK_DIMS = (20, 1000)
_LO, _HI = 1e-20, 1e20  # nutpie's clamp of the diagonal (nuts-rs LOWER_LIMIT / UPPER_LIMIT)


def resolve_mass_matrix(kind: str, dim: int) -> str:
    """The mass matrix that ``kind`` means for a model with ``dim`` unconstrained parameters:
    ``"auto"`` is "low_rank" for ``AUTO_LOW_RANK_DIMS[0] <= dim <= AUTO_LOW_RANK_DIMS[1]``,
    else "diag"; any other kind is itself."""
    if kind != "auto":
        return kind
    lo, hi = AUTO_LOW_RANK_DIMS
    return "low_rank" if lo <= dim <= hi else "diag"


def adaptation_for(kind: str, num_warmup: int, target_accept: float, logdensity_fn) -> Adaptation:
    """The warmup of ``mass_matrix=kind`` (one of :data:`MASS_MATRICES` but "auto", which
    :func:`resolve_mass_matrix` turns into one of the others)."""
    if kind in ("diag", "dense"):
        return window_adaptation(num_warmup, target_accept, kind == "dense")
    if kind == "nutpie":
        return nutpie_adaptation(num_warmup, target_accept, logdensity_fn)
    if kind == "low_rank":
        return low_rank_adaptation(num_warmup, target_accept, logdensity_fn)
    raise ValueError(f"unknown mass matrix {kind!r}")


def _flat_grads(states, logdensity_fn):
    """(chain, D) positions and log-density gradients of a batch of sampler states."""
    flat = jax.vmap(lambda p: ravel_pytree(p)[0])
    if hasattr(states, "logdensity_grad"):
        grads = states.logdensity_grad
    else:  # one more gradient per draw
        grads = jax.vmap(jax.grad(logdensity_fn))(states.position)
    return flat(states.position), flat(grads)


def _grad_diag(g):
    """nutpie's first metric 1/|∂ log p| at the start; 1 where the gradient is ~0 or not finite."""
    a = jnp.abs(g)
    return jnp.where((a > 1e-10) & jnp.isfinite(a), 1.0 / jnp.clip(a, _LO, _HI), 1.0)


# -- nutpie's diagonal --------------------------------------------------------------
class _Moments(NamedTuple):
    """Welford sums of draws and gradients: count, means and sums of squared deviations (D,)."""

    n: jax.Array
    mean_x: jax.Array
    m2_x: jax.Array
    mean_g: jax.Array
    m2_g: jax.Array

    @staticmethod
    def empty(d, dtype):
        z = jnp.zeros((d,), dtype)
        return _Moments(jnp.zeros((), jnp.int32), z, z, z, z)

    def add(self, x, g):
        n = self.n + 1
        dx, dg = x - self.mean_x, g - self.mean_g
        mx, mg = self.mean_x + dx / n, self.mean_g + dg / n
        return _Moments(n, mx, self.m2_x + dx * (x - mx), mg, self.m2_g + dg * (g - mg))


class NutpieState(NamedTuple):
    """Per-chain state of :func:`nutpie_adaptation` (leading chain axis when batched)."""

    da: tuple
    step_size: jax.Array
    imm: jax.Array  # (D,)
    fg: _Moments  # the estimate in use
    bg: _Moments  # the next window's, started at the last switch
    changed: jax.Array  # the metric has been estimated from draws


def nutpie_schedule(num_warmup: int, early_window: float = 0.3, step_size_window: float = 0.15):
    """(early_end, final_start): draws before ``early_end`` switch estimators every 10
    draws, later ones every 80; from ``final_start`` on only the step size adapts
    (nuts-rs ``AdaptOptions`` defaults)."""
    return int(early_window * num_warmup), num_warmup - int(step_size_window * num_warmup)


def nutpie_adaptation(
    num_warmup: int,
    target_accept: float,
    logdensity_fn,
    initial_step_size: float = 1.0,
    early_switch: int = 10,
    switch: int = 80,
) -> Adaptation:
    """nutpie's warmup of a diagonal inverse mass matrix from draw and gradient variances.

    M⁻¹_ii = sqrt(Var(x_i) / Var(∂_i log p(x))) (the diagonal that minimises the
    Fisher divergence of the whitened target; exact for a Gaussian with diagonal
    covariance, where Var(∂_i log p) = 1 / Var(x_i)). Schedule (nuts-rs defaults):

    * start: M⁻¹_ii = 1 / |∂_i log p(x₀)| (a diagonal Hessian guess at the start);
    * the first 85% of warmup: every draw enters a foreground and a background
      Welford estimate; the metric is recomputed from the foreground after every draw
      (once it holds 3 draws); when the background holds ``early_switch`` draws (first
      30% of warmup) or ``switch`` draws (later) it becomes the foreground and a new
      background starts, unless the next switch would fall into the last 15%. The
      step size's dual averaging restarts once, when the metric first changes;
    * the last 15%: the metric is fixed, only the step size adapts; sampling uses the
      dual-averaging average.

    Regularisation as nutpie: entries clamped to [1e-20, 1e20], zero gradient
    variance floored at 1e-10 · Var(x) scale, non-finite estimates keep the previous
    value. Tuned parameters: ``{"step_size": (chain,), "inverse_mass_matrix": (chain, D)}``.
    """
    da_init, da_update, da_final = dual_averaging_adaptation(target_accept)
    early_end, final_start = nutpie_schedule(num_warmup)

    def init_one(x, g, imm):
        m = _Moments.empty(x.shape[0], x.dtype).add(x, g)
        step = jnp.asarray(initial_step_size, x.dtype)
        return NutpieState(da_init(step), step, imm, m, m, jnp.zeros((), bool))

    def as_tuned(a):
        return {"step_size": a.step_size, "inverse_mass_matrix": a.imm}

    def make_init(imm0):
        def init(rng_key, positions, init_states, tick):
            n = jax.tree.leaves(positions)[0].shape[0]
            x = jax.vmap(lambda p: ravel_pytree(p)[0])(positions)
            states = init_states(positions, {"step_size": jnp.ones((n,), x.dtype), "inverse_mass_matrix": jnp.ones_like(x)})
            x, g = _flat_grads(states, logdensity_fn)
            imm = _grad_diag(g) if imm0 is None else imm0
            return states, jax.vmap(init_one)(x, g, imm), jnp.zeros((n,), jnp.int32)

        return init

    def update_one(a, i, x, g, acc):
        def metric_phase(a):
            fg, bg = a.fg.add(x, g), a.bg.add(x, g)
            sf = jnp.where(i < early_end, early_switch, switch)
            swap = (bg.n >= sf) & (sf + i <= final_start)
            fg = jax.tree.map(lambda b, f: jnp.where(swap, b, f), bg, fg)
            bg = jax.tree.map(lambda e, b: jnp.where(swap, e, b), _Moments.empty(x.shape[0], x.dtype), bg)
            ready = fg.n >= 3
            ratio = fg.m2_x / jnp.maximum(fg.m2_g, 1e-10 * jnp.maximum(fg.m2_x, 1e-30))
            est = jnp.clip(jnp.sqrt(ratio), _LO, _HI)
            imm = jnp.where(ready & jnp.isfinite(est) & (est > 0), est, a.imm)
            first = ready & ~a.changed
            da = jax.tree.map(lambda r, u: jnp.where(first, r, u), da_init(a.step_size), da_update(a.da, acc))
            return NutpieState(da, a.step_size, imm, fg, bg, a.changed | ready)

        def step_phase(a):
            return a._replace(da=da_update(a.da, acc))

        a = jax.lax.cond(i < final_start, metric_phase, step_phase, a)
        return a._replace(step_size=jnp.exp(a.da.log_step_size).astype(a.step_size.dtype))

    def update(astate, i, states, stats):
        x, g = _flat_grads(states, logdensity_fn)
        acc = stats.get("acceptance_rate")
        if acc is None:
            acc = jnp.full(astate.step_size.shape, target_accept, astate.step_size.dtype)
        return jax.vmap(update_one, in_axes=(0, None, 0, 0, 0))(astate, i, x, g, acc)

    def final(astate):
        return {"step_size": jax.vmap(da_final)(astate.da).astype(astate.step_size.dtype), "inverse_mass_matrix": astate.imm}

    def with_metric(imm0):
        return Adaptation(num_warmup, make_init(_diag_of(imm0)), update, as_tuned, final, with_metric)

    return Adaptation(num_warmup, make_init(None), update, as_tuned, final, with_metric)


def _diag_of(imm):
    """(chain, D) diagonal of a batch of inverse mass matrices, diagonal or dense."""
    return imm if imm.ndim == 2 else jnp.diagonal(imm, axis1=-2, axis2=-1)


# -- low rank plus diagonal ---------------------------------------------------------
def _pd_floor(vals):
    """eps·max|vals|: smaller eigenvalues of an SPD matrix are round-off (BlackJAX's floor)."""
    return jnp.finfo(vals.dtype).eps * jnp.maximum(jnp.max(jnp.abs(vals)), jnp.finfo(vals.dtype).tiny)


def _geometric_mean_inv(a, b):
    """A # B⁻¹ for SPD A, B (q, q): the SPD Σ with Σ B Σ = A (AIRM geometric mean).

    With A = L Lᵀ (Cholesky), A # B⁻¹ = L (L⁻¹B⁻¹L⁻ᵀ)^½ Lᵀ = L (LᵀBL)^(-½) Lᵀ: one Cholesky
    and one ``eigh``, no inverse (BlackJAX's ``_spd_mean(A, inv(B))`` takes an inverse and
    two ``eigh``; the same matrix in exact arithmetic). Eigenvalues of LᵀBL are floored
    at :func:`_pd_floor`.
    """
    chol = jnp.linalg.cholesky(a)
    vals, vecs = jnp.linalg.eigh(chol.T @ b @ chol)
    w = (chol @ vecs) * jnp.maximum(vals, _pd_floor(vals))[None, :] ** -0.25  # W Wᵀ = L (LᵀBL)^(-½) Lᵀ
    return w @ w.T


def fisher_low_rank_metric(draws, grads, n, rank: int | None = None, gamma: float = 1e-5, cutoff: float = 2.0):
    """nutpie's low-rank plus diagonal estimate from the first ``n`` rows of a buffer.

    Seyboldt et al., "Preconditioning Hamiltonian Monte Carlo by minimizing Fisher
    divergence", Algorithm 1; nuts-rs ``low_rank.rs`` ``estimate_mass_matrix``:
    σ = (Var x / Var ∂log p)^(1/4) (population variances); X = (x - x̄)/σ,
    A = (g - ḡ)σ; Q = orth[top-k right singular vectors of X, of A] (D, q),
    k = min(``rank``, B, D) (``rank=None``: all of them, as nuts-rs, whose thin SVDs are
    not truncated: with B ≥ D/2 draws Q spans the whole space and the metric is the
    dense Fisher optimum), q = min(2k, D); C_x = QᵀXᵀXQ/γ + I, C_a = QᵀAᵀAQ/γ + I;
    Σ = C_x # C_a⁻¹ (SPD geometric mean, :func:`_geometric_mean_inv`); Σ = V Λ Vᵀ.
    Returns U = QV (D, q) and Λ with every eigenvalue in [1/c, c] set to 1 -- all q
    eigen-directions outside that band are kept, as nutpie does (BlackJAX 1.7's
    ``_compute_low_rank_metric`` keeps only the ``rank`` largest |λ - 1|, which are
    the large-variance directions: the small ones, which bound the step size, are
    dropped). Computed in float64 under x64.

    Parameters
    ----------
    draws, grads : (B, D) buffers; rows at or past ``n`` are masked out.
    n : int scalar, valid rows.

    Returns
    -------
    sigma (D,), U (D, q), lam (q,), in the buffers' dtype.
    """
    dtype = draws.dtype
    cd = jnp.float64 if jax.config.jax_enable_x64 else dtype
    x, g = draws.astype(cd), grads.astype(cd)
    b, d = x.shape
    mask = (jnp.arange(b) < n).astype(cd)[:, None]
    n_safe = jnp.maximum(n, 2).astype(cd)
    dx = mask * (x - (mask * x).sum(0) / n_safe)
    dg = mask * (g - (mask * g).sum(0) / n_safe)
    var_x, var_g = (dx**2).sum(0) / n_safe, (dg**2).sum(0) / n_safe
    sigma = jnp.clip(jnp.power(jnp.clip(var_x / jnp.maximum(var_g, 1e-10), 0.0, None), 0.25), _LO, _HI)
    xs, gs = dx / sigma, dg * sigma
    k = min(b, d) if rank is None else min(rank, b, d)
    if k == d:  # each subspace is all of R^D: Q = I (the geometric mean is basis-equivariant)
        px, pg = xs, gs
    else:
        ux = jnp.linalg.svd(xs, full_matrices=False)[2][:k].T
        ug = jnp.linalg.svd(gs, full_matrices=False)[2][:k].T
        q, _ = jnp.linalg.qr(jnp.concatenate([ux, ug], axis=1))
        px, pg = xs @ q, gs @ q  # (B, q)
    eye = jnp.eye(px.shape[1], dtype=cd)
    cx, cg = px.T @ px / gamma + eye, pg.T @ pg / gamma + eye
    vals, vecs = jnp.linalg.eigh(_geometric_mean_inv(cx, cg))
    vals = jnp.maximum(vals, _pd_floor(vals))
    lam = jnp.where((vals < 1.0 / cutoff) | (vals > cutoff), vals, 1.0)
    u = vecs if k == d else q @ vecs
    return sigma.astype(dtype), u.astype(dtype), lam.astype(dtype)


class LowRankState(NamedTuple):
    """Per-chain state of :func:`low_rank_adaptation`: dual averaging, step size, BlackJAX's core state."""

    da: tuple
    step_size: jax.Array
    core: tuple
    dense: jax.Array | None = None  # (D, D) M⁻¹ where q ≥ D/2 (:func:`.metric.kernel_metric`)


def low_rank_adaptation(
    num_warmup: int,
    target_accept: float,
    logdensity_fn,
    max_rank: int | None = None,
    initial_step_size: float = 1.0,
    schedule: str = "nutpie",
) -> Adaptation:
    """nutpie's low-rank plus diagonal inverse mass matrix, from BlackJAX's pieces.

    M⁻¹ = diag(σ)(I + U(Λ - I)Uᵀ)diag(σ): σ from the draw and gradient variances as in
    :func:`nutpie_adaptation`, then the eigenvectors U (D, q) and eigenvalues Λ of the
    SPD geometric mean of the whitened draw covariance and inverse gradient covariance
    on the span of both sets' top right singular vectors (regularised by γ = 1e-5,
    eigenvalues within [1/2, 2] set to 1): :func:`fisher_low_rank_metric` (Seyboldt
    et al., Algorithm 1, as nuts-rs computes it). ``max_rank=None`` (nutpie: its thin
    SVDs are not truncated) uses every singular vector, q = min(2·min(B, D), D) with B
    the buffer rows, so on a model with D ≤ 2B the metric is the dense Fisher optimum
    (kernel cost O(D²) per leapfrog step, like a dense metric); an integer caps k per
    subspace (q = min(2k, D), O(D·q) per step). Buffer, windows and host are
    BlackJAX's ``fisher_low_rank`` core's ("reset" policy). Window
    schedule: BlackJAX's ``build_growing_window_schedule`` (nutpie's: windows of 10
    draws over the first 30% of warmup, then 80 growing by 1.5x, step size only in
    the last 15%); the metric is recomputed from each window's draws at its end and the
    step size's dual averaging then restarts from its average (Stan's and BlackJAX's
    staged host); ``schedule="stan"`` uses Stan's windows instead (fewer, longer: ~5
    recomputations instead of ~33, each an eigendecomposition per chain). The start metric is σ² = 1/|∂ log p(x₀)| (``seed_low_rank_sigma_from_grad``).
    BlackJAX warns that the estimator is fragile in float32; enable x64 for it.

    BlackJAX's own ``window_adaptation_low_rank(...).run`` runs as one scan; driving its
    metric core from the chain loop keeps the progress bar and one compiled transition.

    Tuned parameters: ``{"step_size": (chain,), "imm_sigma": (chain, D), "imm_U":
    (chain, D, q), "imm_lam": (chain, q)}``; :func:`.metric.kernel_metric` rebuilds the metric.
    """
    da_init, da_update, da_final = dual_averaging_adaptation(target_accept)
    with jax.ensure_compile_time_eval():  # a constant, also when called inside a trace
        windows = build_growing_window_schedule if schedule == "nutpie" else build_schedule
        schedule_np = np.asarray(windows(num_warmup), dtype=np.int32).reshape(num_warmup, 2)
    ends = np.flatnonzero(schedule_np[:, 1])
    buffer_size = int(max(np.diff(np.concatenate([[-1], ends])).max(initial=1), 1))
    schedule = jnp.asarray(schedule_np)

    def core_for(d):
        recipe = dataclasses.replace(REGISTRY["fisher_low_rank"], max_rank=min(max_rank or d, d))
        core = recipe.build_core(buffer_size=buffer_size)
        k = min(buffer_size, d) if max_rank is None else min(max_rank, buffer_size, d)
        q = min(2 * k, d)

        def init(d):  # U (D, q), q = min(2·rank, D): nutpie keeps both subspaces' directions
            c = core.init(d)
            imm = c.inverse_mass_matrix
            return c._replace(inverse_mass_matrix=imm._replace(U=jnp.zeros((d, q), imm.U.dtype), lam=jnp.ones((q,), imm.lam.dtype)))

        def final(c):
            sigma, U, lam = fisher_low_rank_metric(c.draws_buffer, c.grads_buffer, c.buffer_idx, k)
            return c._replace(inverse_mass_matrix=LowRankInverseMassMatrix(sigma, U, lam))

        return core._replace(init=init, final=final)

    def dense_of(imm):  # one D² product per leapfrog step beats two D·q ones when 2q ≥ D
        return low_rank_dense(imm.sigma, imm.U, imm.lam) if 2 * imm.U.shape[-1] >= imm.U.shape[-2] else None

    def as_tuned(step_size, imm, dense=None):
        tuned = {"step_size": step_size, "imm_sigma": imm.sigma, "imm_U": imm.U, "imm_lam": imm.lam}
        return tuned if dense is None else {**tuned, "imm_dense": dense}

    def make_init(imm0):
        def init(rng_key, positions, init_states, tick):
            n = jax.tree.leaves(positions)[0].shape[0]
            x = jax.vmap(lambda p: ravel_pytree(p)[0])(positions)
            d = x.shape[1]
            core = core_for(d)
            provisional = as_tuned(jnp.ones((n,), x.dtype), core.init(d).inverse_mass_matrix)
            provisional = {k: (v if k == "step_size" else jnp.broadcast_to(v, (n,) + v.shape)) for k, v in provisional.items()}
            states = init_states(positions, provisional)
            _, g = _flat_grads(states, logdensity_fn)

            def one(g, diag0):
                c = seed_low_rank_sigma_from_grad(core.init(d), g)
                if diag0 is not None:
                    c = c._replace(inverse_mass_matrix=c.inverse_mass_matrix._replace(sigma=jnp.sqrt(diag0)))
                step = jnp.asarray(initial_step_size, x.dtype)
                return LowRankState(da_init(step), step, c, dense_of(c.inverse_mass_matrix))

            diag0 = None if imm0 is None else _diag_of(imm0)
            astate = jax.vmap(one)(g, diag0) if diag0 is not None else jax.vmap(lambda g: one(g, None))(g)
            return states, astate, jnp.zeros((n,), jnp.int32)

        return init

    def record_one(a, slow, end, x, g, acc):
        # core.update's write, done in place on every step (a row past buffer_idx is
        # masked out by the estimator); dual averaging restarts from its average at a window end
        c = a.core
        row = c.buffer_idx % c.draws_buffer.shape[0]
        c = c._replace(
            draws_buffer=jax.lax.dynamic_update_index_in_dim(c.draws_buffer, x.astype(c.draws_buffer.dtype), row, 0),
            grads_buffer=jax.lax.dynamic_update_index_in_dim(c.grads_buffer, g.astype(c.grads_buffer.dtype), row, 0),
            buffer_idx=c.buffer_idx + slow.astype(jnp.asarray(c.buffer_idx).dtype),
        )
        da = da_update(a.da, acc)
        da = jax.tree.map(lambda r, u: jnp.where(end, r, u), da_init(da_final(da)), da)
        return a._replace(da=da, step_size=jnp.exp(da.log_step_size).astype(a.step_size.dtype), core=c)

    def update(astate, i, states, stats):
        x, g = _flat_grads(states, logdensity_fn)
        core = core_for(x.shape[1])
        stage = schedule[jnp.clip(i, 0, max(num_warmup - 1, 0))]
        slow, end = stage[0] == 1, stage[1] == 1
        acc = stats.get("acceptance_rate")
        if acc is None:
            acc = jnp.full(astate.step_size.shape, target_accept, astate.step_size.dtype)
        a = jax.vmap(lambda a, x, g, acc: record_one(a, slow, end, x, g, acc))(astate, x, g, acc)

        def new_metric(c):  # chain by chain: see the module docstring (batched LAPACK calls)
            return jax.lax.map(lambda c: (lambda imm: (imm, dense_of(imm)))(core.final(c).inverse_mass_matrix), c)

        # core.final's metric under a cond whose predicate is not batched (the window
        # schedule is shared) and whose outputs are small: the (buffer, D) buffers only go in
        imm, dense = jax.lax.cond(end, new_metric, lambda c: (c.inverse_mass_matrix, a.dense), a.core)
        core_state = a.core._replace(inverse_mass_matrix=imm, buffer_idx=jnp.where(end, 0, a.core.buffer_idx))
        return a._replace(core=core_state, dense=dense)

    def tuned(astate):
        return as_tuned(astate.step_size, astate.core.inverse_mass_matrix, astate.dense)

    def final(astate):
        step = jax.vmap(da_final)(astate.da).astype(astate.step_size.dtype)
        return as_tuned(step, astate.core.inverse_mass_matrix, astate.dense)

    def with_metric(imm0):
        return Adaptation(num_warmup, make_init(imm0), update, tuned, final, with_metric)

    return Adaptation(num_warmup, make_init(None), update, tuned, final, with_metric)
