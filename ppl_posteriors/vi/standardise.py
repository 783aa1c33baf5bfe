"""The standardised parametrisation of ``init="laplace"`` for the Gaussian guides.

With the Laplace approximation N(m₀, H⁻¹) at the mode (:mod:`.resume`) and L = chol(H⁻¹),
the guide's parameters are written in the Laplace frame:

* full-rank: μ = m₀ + L μ̃, scale_tril = L L̃ (q is the law of m₀ + L u, u ~ N(μ̃, L̃ L̃ᵀ));
* mean-field: μ = m₀ + L μ̃, σ = a ⊙ exp(ω̃) with a_i = H_ii^(-1/2) (q stays mean-field:
  only its mean is written in the full frame).

The fit starts at μ̃ = 0, L̃ = I, ω̃ = 0: at the Laplace approximation (mean-field: at its
reverse-KL optimum for a Gaussian, σ_i = H_ii^(-1/2)). Near a Gaussian posterior the
gradient in μ̃ is Lᵀ H L (μ̃ - μ̃*) ≈ μ̃ - μ̃*, so the fit is well conditioned whatever
the scales and correlations of the model's parameters, and Adam's steps are steps in
posterior standard deviations (whitening, i.e. preconditioning with a curvature
estimate; in raw coordinates a mean-field mean converges like a Jacobi iteration on H,
slowly when the parameters are correlated). The fitted parameters are mapped back to z (``unwhiten``), so the
result stores an ordinary guide; its stored optimiser state refers to u and is not
resumed (``init_from`` then restarts the optimiser from the stored guide).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .fullrank import FullRankParams, scale_tril
from .guide import Guide
from .meanfield import MeanFieldParams

__all__ = ["FAMILIES", "standardise"]

FAMILIES = ("fullrank", "meanfield")


def _frames(h, ok, d, dtype):
    """(L (D, D) = chol(H⁻¹), a (D,) = H_ii^(-1/2)); the identity where not ``ok``."""
    eye = jnp.eye(d, dtype=dtype)
    safe = jnp.where(ok, h, eye)
    cov = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(safe), True), eye)
    return jnp.where(ok, jnp.linalg.cholesky(0.5 * (cov + cov.T)), eye), jnp.where(ok, jnp.diag(safe) ** -0.5, 1.0)


def standardise(guide: Guide, mode, h, ok, init_scale: float):
    """``(guide_u, params0, unwhiten)`` for the full-rank or mean-field ``guide``, with the
    Laplace frame (``mode`` (D,), ``h`` = H (D, D)); where not ``ok`` (H not positive
    definite) the frame is the identity at ``mode`` and q starts with sd ``init_scale``.
    ``guide_u`` takes the standardised parameters; ``unwhiten`` maps them to ``guide``'s."""
    d, dtype = mode.shape[0], mode.dtype
    tril, a = _frames(h, ok, d, dtype)
    log_s0 = jnp.where(ok, 0.0, jnp.log(init_scale)).astype(dtype)
    zeros = jnp.zeros(d, dtype)

    if guide.name == "meanfield":
        def unwhiten(p):
            return MeanFieldParams(mode + tril @ p.loc, jnp.log(a) + p.log_scale)

        params0 = MeanFieldParams(zeros, jnp.full((d,), log_s0, dtype))
    else:
        def unwhiten(p):
            t = tril @ scale_tril(p)
            return FullRankParams(mode + tril @ p.loc, jnp.tril(t, -1) + jnp.diag(jnp.log(jnp.diag(t))))

        params0 = FullRankParams(zeros, jnp.diag(jnp.full((d,), log_s0, dtype)))

    g = guide._replace(
        sample_and_log_prob=lambda key, p, n: guide.sample_and_log_prob(key, unwhiten(p), n),
        log_prob=lambda p, z: guide.log_prob(unwhiten(p), z),
        entropy=lambda p: guide.entropy(unwhiten(p)),
    )
    return g, params0, unwhiten
