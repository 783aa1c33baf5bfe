"""Where MCMC chains start: uniform draws, Pathfinder, or a previous Laplace / VI result.

Three ways, chosen by the sampler options ``init`` and ``init_from``
(:class:`~ppl_posteriors.mcmc.base.Sampler`):

* ``init="uniform"`` (default): Stan's uniform(-r, r) draws on the unconstrained
  space (:func:`~ppl_posteriors.density.init.draw_initial_positions`).
* ``init="pathfinder"``: multi-path Pathfinder (Zhang, Carpenter, Gelman & Vehtari
  2022, JMLR 23(306), Algorithms 1-2, as ``blackjax.vi.multipathfinder``): L-BFGS from
  ``max(4, num_chains)`` uniform starts, each path's best normal approximation
  N(μ, H⁻¹) along its optimisation path (H⁻¹ = diag(α) + β γ βᵀ, the L-BFGS inverse
  Hessian), 25 draws from each, and the chains' starts drawn from that pool without
  replacement with importance weights p/q (Gumbel top-k). Each chain's first inverse
  mass matrix is its path's H⁻¹ (its diagonal, or dense with ``mass_matrix="dense"``).
  A chain whose draw is not finite falls back to its uniform start.
  The paths and the iterations along each path run one after another (``lax.map``)
  rather than vmapped as in BlackJAX's ``multi_approximate``: there every factorisation
  (the inverse of the L-BFGS R factor, the QR and Cholesky of the draws) is one LAPACK
  call batched over paths x iterations, and jaxlib 0.10 hands such a batch to the
  XLA:CPU thread pool and blocks a pool thread until it is done; two of them at once on
  a 2-thread pool deadlock (eight schools with 8 chains hung every time, 4 chains about
  3 runs in 4; see docs/runtime.md). One matrix per call never waits on the pool.
* ``init_from=result``: a Laplace or VI result (its ``approximation`` group):
  the chains start at draws from the stored approximation and the first inverse mass
  matrix is its covariance (exact where the approximation has ``covariance()``, else
  estimated from max(1000, 10·D) of its draws), diagonal or dense as the sampler's
  mass matrix. The arrays are computed on the host and passed to the compiled program
  as arguments, so a second result of the same model reuses the program.

The first inverse mass matrix only starts the warmup: Stan's windows replace it at
the end of the first slow window, nutpie's after three draws.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.optimizers.lbfgs import bfgs_sample, lbfgs_inverse_hessian_factors, minimize_lbfgs

from .._errors import ConfigError
from ..density.init import draw_initial_positions

__all__ = ["INITS", "check_init", "pathfinder_starts", "program_config", "starting_points", "warm_start"]

INITS = ("uniform", "pathfinder")
PATHFINDER_MAXITER = 100  # L-BFGS iterations per path
PATHFINDER_DRAWS = 25  # draws per path (ELBO estimate and the pool of starts)
PATHFINDER_MAXCOR = 10  # L-BFGS history size (BlackJAX's default)


def check_init(cfg) -> None:
    """Validate ``init`` and ``init_from`` of a sampler config; raises ConfigError."""
    cfg._choice("init", INITS)
    if cfg.init_from is None:
        return
    if cfg.init != "uniform":
        raise ConfigError(
            f"{type(cfg).__name__}: init={cfg.init!r} and init_from are alternatives; "
            "drop init_from to start from Pathfinder, or drop init to start from the result"
        )
    from ..results import compat

    try:
        groups = compat.group_names(cfg.init_from)
    except Exception:
        groups = []
    if "approximation" not in groups:
        raise ConfigError(
            f"{type(cfg).__name__}(init_from=...) needs a Laplace or VI result of this model "
            "(one with an 'approximation' group, as pp.infer(model, method=pp.Laplace()) returns); "
            f"got {type(cfg.init_from).__name__}"
        )


def program_config(cfg):
    """The config that keys the compiled program: ``init_from`` replaced by a marker
    (its arrays are program arguments), so another result does not recompile."""
    if cfg.init_from is None:
        return "self"
    key = copy.copy(cfg)
    object.__setattr__(key, "init_from", "a previous result")  # not re-validated: a key only
    return key


def _dense(cfg) -> bool:
    return getattr(cfg, "mass_matrix", "diag") == "dense"


def warm_start(cfg, rt, rng_key):
    """Host-side arrays of ``init_from``: ``{"x": (chain, D), "imm": (chain, D) or
    (chain, D, D)}``, or None without ``init_from``.

    Raises
    ------
    ConfigError
        The result belongs to another model (other latent sites or shapes), or its
        approximation cannot be drawn from or has a non-positive covariance.
    """
    if cfg.init_from is None:
        return None
    from ..results.approximation import load_approximation

    approx, layout = load_approximation(cfg.init_from)
    ld = rt.log_density
    if tuple(layout) != tuple(ld.layout):
        raise ConfigError(
            f"init_from: the stored result's latent sites {[n for n, _ in layout]} and shapes differ "
            f"from this model's {[n for n, _ in ld.layout]}"
        )
    k_x, k_cov = jax.random.split(jax.random.fold_in(rng_key, 0x1517))
    x = np.asarray(approx.sample_flat(k_x, cfg.num_chains), dtype=float)
    if hasattr(approx, "covariance"):
        cov = np.asarray(approx.covariance(), dtype=float)
    else:
        draws = np.asarray(approx.sample_flat(k_cov, max(1000, 10 * ld.dim)), dtype=float)
        cov = np.atleast_2d(np.cov(draws, rowvar=False))
    diag = np.diagonal(cov)
    if not (np.all(np.isfinite(cov)) and np.all(diag > 0)):
        raise ConfigError(
            "init_from: the stored approximation's covariance is not finite and positive; "
            "refit it (e.g. Laplace at a converged mode) or start from init='pathfinder'"
        )
    imm = cov if _dense(cfg) else diag
    dtype = jnp.result_type(float)
    imm = np.broadcast_to(imm, (cfg.num_chains,) + imm.shape)
    return {"x": jnp.asarray(x, dtype), "imm": jnp.asarray(imm, dtype)}


def _finite(flat_logdensity_fn, x):
    lp, g = jax.vmap(jax.value_and_grad(flat_logdensity_fn))(x)
    return jnp.isfinite(lp) & jnp.all(jnp.isfinite(g), axis=-1)


def _pathfinder_path(flat_logdensity_fn, key_approx, key_draw, x0):
    """One Pathfinder path, as ``blackjax.vi.pathfinder.approximate`` and ``sample``.

    L-BFGS from ``x0`` (D,), then at each iteration l the normal approximation
    N(x_l + H_l⁻¹ g_l, H_l⁻¹) with H_l⁻¹ = diag(α_l) + β_l γ_l β_lᵀ (Zhang et al. 2022,
    Algorithms 1, 3 and 4), its ELBO from PATHFINDER_DRAWS draws, and finally
    PATHFINDER_DRAWS draws from the iteration with the largest ELBO. The iterations run
    in ``lax.map`` so every LAPACK call factors one matrix (module docstring).

    Returns draws (K, D), their log p and log q (K,), and the best α (D,), β (D, 2m),
    γ (2m, 2m).
    """
    m, n_it = PATHFINDER_MAXCOR, PATHFINDER_MAXITER + 1
    (_, status), hist = minimize_lbfgs(
        lambda x: -flat_logdensity_fn(x), x0, maxiter=PATHFINDER_MAXITER, maxcor=m
    )
    keep = hist.update_mask[1:]
    s = jnp.pad(jnp.where(keep, jnp.diff(hist.x, axis=0), 0.0), ((m, 0), (0, 0)))
    z = jnp.pad(jnp.where(keep, jnp.diff(hist.g, axis=0), 0.0), ((m, 0), (0, 0)))

    def factors(i):  # the last m updates before iteration i (zeros before the first)
        S = jax.lax.dynamic_slice_in_dim(s, i, m)
        Z = jax.lax.dynamic_slice_in_dim(z, i, m)
        return lbfgs_inverse_hessian_factors(S.T, Z.T, hist.alpha[i])

    def draws(key, i, beta, gamma):
        phi, logq = bfgs_sample(
            key, PATHFINDER_DRAWS, hist.x[i], hist.g[i], hist.alpha[i], beta, gamma
        )
        return phi, jax.vmap(flat_logdensity_fn)(phi), logq

    def elbo(a):
        i, key = a
        beta, gamma = factors(i)
        _, logp, logq = draws(key, i, beta, gamma)
        return jnp.mean(logp - logq)

    elbos = jax.lax.map(elbo, (jnp.arange(n_it), jax.random.split(key_approx, n_it)))
    live = (jnp.arange(n_it) < status.iter_num) & jnp.isfinite(elbos)
    best = jnp.argmax(jnp.where(live, elbos, -jnp.inf))
    beta, gamma = factors(best)
    phi, logp, logq = draws(key_draw, best, beta, gamma)
    return phi, logp, logq, hist.alpha[best], beta, gamma


def pathfinder_starts(flat_logdensity_fn, rng_key, num_chains: int, x_uniform, dense: bool):
    """Multi-path Pathfinder starts (see the module docstring), traceable.

    Parameters
    ----------
    flat_logdensity_fn : callable
        (D,) -> log density on the unconstrained space.
    x_uniform : array (P, D)
        Finite uniform starts of the P >= num_chains L-BFGS paths; row c is chain c's fallback.

    Returns
    -------
    x : (num_chains, D)
    imm : (num_chains, D) or (num_chains, D, D)
        Each chain's path's L-BFGS inverse Hessian (diagonal or dense); ones / identity
        where it is not finite and positive.
    """
    k_path, k_pick = jax.random.split(rng_key)
    k_approx, k_draw = jax.random.split(k_path)  # the keys of multi_approximate
    paths = x_uniform.shape[0]
    samples, logp, logq, alpha, beta, gamma = jax.lax.map(
        lambda a: _pathfinder_path(flat_logdensity_fn, *a),
        (jax.random.split(k_approx, paths), jax.random.split(k_draw, paths), x_uniform),
    )
    draws_per_path, dim = samples.shape[1:]
    logw = (logp - logq).reshape(-1)
    logw = jnp.where(jnp.isfinite(logw), logw, -jnp.inf)
    pool = samples.reshape(-1, dim)
    _, idx = jax.lax.top_k(logw + jax.random.gumbel(k_pick, logw.shape, logw.dtype), num_chains)
    x = pool[idx]
    good = jnp.isfinite(logw[idx]) & jnp.all(jnp.isfinite(x), axis=-1)
    x = jnp.where(good[:, None], x, x_uniform[:num_chains])

    # alpha (P, D), beta (P, D, 2m), gamma (P, 2m, 2m): each path's best H⁻¹ factors
    if dense:
        imm = jax.vmap(lambda a, b, g: jnp.diag(a) + b @ g @ b.T)(alpha, beta, gamma)
        diag = jnp.diagonal(imm, axis1=-2, axis2=-1)
        eye = jnp.eye(dim, dtype=imm.dtype)
        sane = jnp.all(jnp.isfinite(imm), axis=(-2, -1)) & jnp.all(diag > 0, axis=-1)
        imm = jnp.where(sane[:, None, None], imm, eye)
        fallback = jnp.broadcast_to(eye, (num_chains, dim, dim))
    else:
        imm = alpha + jnp.einsum("pdi,pij,pdj->pd", beta, gamma, beta)
        sane = jnp.all(jnp.isfinite(imm) & (imm > 0), axis=-1)
        imm = jnp.where(sane[:, None], imm, 1.0)
        fallback = jnp.ones((num_chains, dim), imm.dtype)
    imm_chain = imm[idx // draws_per_path]
    mask = good.reshape((num_chains,) + (1,) * (imm_chain.ndim - 1))
    return x, jnp.where(mask, imm_chain, fallback)


def starting_points(cfg, ld, rng_key, warm):
    """Inside the program: ``(x0 (chain, D), ok (chain,), imm0 or None)``.

    ``ok`` says whether each start has a finite log density and gradient; ``imm0``
    is the first inverse mass matrix for the adaptation (None: its own default).
    """
    n, d = cfg.num_chains, ld.dim
    f = ld.flat_logdensity_fn
    k_uniform, k_rest = jax.random.split(rng_key)
    if cfg.init == "pathfinder" and warm is None:
        paths = max(4, n)
        xu, oku = draw_initial_positions(f, k_uniform, paths, d, cfg.init_radius)
        x, imm0 = pathfinder_starts(f, k_rest, n, xu, _dense(cfg))
        xu, oku = xu[:n], oku[:n]
    else:
        xu, oku = draw_initial_positions(f, k_uniform, n, d, cfg.init_radius)
        if warm is None:
            return xu, oku, None
        x, imm0 = warm["x"].astype(xu.dtype), warm["imm"]
    good = _finite(f, x)
    return jnp.where(good[:, None], x, xu), good | oku, imm0
