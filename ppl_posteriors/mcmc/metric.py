"""The Euclidean metric that NUTS and HMC kernels run with: BlackJAX's, with fewer M⁻¹ products.

A leapfrog step of BlackJAX's NUTS multiplies by the inverse mass matrix M⁻¹ about ten
times: the kinetic-energy gradient v = M⁻¹p by reverse-mode autodiff of ½ pᵀM⁻¹p (the
product and its transpose), the proposal's energy (again), and each generalised U-turn
check (Betancourt 2013, arXiv:1304.1920) multiplies both ends' momenta, ρ·M⁻¹p₋ and
ρ·M⁻¹p₊, with ρ = Σp - (p₋ + p₊)/2. With a diagonal M⁻¹ that costs nothing; with a dense
or low-rank M⁻¹ (O(D²) or O(D·q) each) it was most of a step on gauss100 (bench/mcmc_b2.py:
24.6 µs per gradient against 5.7 with a diagonal metric). :func:`kernel_metric` keeps
BlackJAX's momentum draws and scaling and changes two things, both exact in exact
arithmetic:

* the kinetic energy K(p) = ½ pᵀM⁻¹p has a custom VJP, ∂K/∂p = M⁻¹p from the forward
  pass's product (one product instead of two; XLA merges it with the energy's);
* the U-turn check uses M⁻¹'s symmetry, ρ·M⁻¹p± = p±·M⁻¹ρ (one product instead of two);

and a low-rank metric whose rank is at least D/2 (nutpie's estimator keeps up to 2·B
directions, so q = D for D ≤ 2B) is applied as the dense D x D matrix that its
adaptation forms once per window (``imm_dense``): one D² product instead of two D·q.

Two XLA:CPU hazards shape the code:

* ``U.T @ x`` is emitted as a loop fusion that absorbs its producer, so with the momentum
  draw as ``x`` every element of the normal draw was recomputed once per element of U
  (~35 µs per transition at D = 100, more than the trajectory on short ones); ``x @ U``
  is a plain dot.
* A *batched* LAPACK call (``vmap`` of ``cholesky``, ``eigh``, ``svd``, ...) hands its
  batch to the CPU client's thread pool and waits; with chains on host devices
  (``chain_layout="per_device"``) every pool thread may be such a waiter, and the
  program deadlocks (seen with 2 devices x 2 chains). The kernels therefore call no
  LAPACK routine: dense factors (:func:`dense_factors`) and the low-rank metric are
  computed chain by chain (``lax.map``) where the adaptation changes them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from blackjax.mcmc.metrics import LowRankInverseMassMatrix, Metric, default_metric
from blackjax.util import generate_gaussian_noise
from jax.flatten_util import ravel_pytree

__all__ = ["dense_factors", "kernel_metric", "low_rank_dense", "low_rank_matvec"]


def low_rank_matvec(sigma, U, lam, p):
    """M⁻¹p for M⁻¹ = diag(σ)(I + U(Λ - I)Uᵀ)diag(σ); σ (D,), U (D, q), lam (q,), p (D,)."""
    q = sigma * p
    return sigma * (q + U @ ((lam - 1.0) * (q @ U)))  # q @ U, not U.T @ q: see kernel_metric


def low_rank_dense(sigma, U, lam):
    """The (D, D) matrix diag(σ)(I + U(Λ - I)Uᵀ)diag(σ) of a low-rank inverse mass matrix."""
    inner = jnp.eye(sigma.shape[0], dtype=sigma.dtype) + (U * (lam - 1.0)) @ U.T
    return sigma[:, None] * inner * sigma[None, :]


def dense_factors(imm):
    """``{"imm_chol": L, "mass_sqrt": L⁻ᵀ}`` of dense inverse mass matrices imm = L Lᵀ (chain, D, D).

    M^(1/2) = L⁻ᵀ draws the momentum and L gives M^(-1/2) (BlackJAX's
    ``_format_covariance(imm, is_inv=True)``). Computed chain by chain (``lax.map``):
    the kernels then call no LAPACK routine (module docstring).
    """

    def one(a):
        chol = jax.scipy.linalg.cholesky(a, lower=True)
        return chol, jax.scipy.linalg.solve_triangular(chol, jnp.eye(a.shape[-1], dtype=a.dtype), lower=True, trans=1)

    chol, mass_sqrt = jax.lax.map(one, imm)
    return {"imm_chol": chol, "mass_sqrt": mass_sqrt}


def _inverse_mass_matvec(tuned: dict):
    """(p (D,) -> M⁻¹p, its operands): the cheapest form of the tuned inverse mass matrix."""
    if "imm_dense" in tuned:
        return (lambda a, p: a @ p), tuned["imm_dense"]
    if "imm_sigma" in tuned:
        return (lambda a, p: low_rank_matvec(*a, p)), (tuned["imm_sigma"], tuned["imm_U"], tuned["imm_lam"])
    imm = tuned["inverse_mass_matrix"]
    return (lambda a, p: a * p if a.ndim == 1 else a @ p), imm


def kernel_metric(tuned: dict) -> Metric:
    """BlackJAX ``Metric`` (for ``inverse_mass_matrix=``) of one chain's tuned parameters.

    ``tuned`` holds ``"inverse_mass_matrix"`` ((D,) diagonal or (D, D) dense), or a
    low-rank M⁻¹ = diag(σ)(I + U(Λ - I)Uᵀ)diag(σ) as ``"imm_sigma"`` (D,), ``"imm_U"``
    (D, q), ``"imm_lam"`` (q,), optionally with its dense form ``"imm_dense"`` (D, D); a
    dense matrix may come with its factors (:func:`dense_factors`; without them BlackJAX
    factors it in the kernel). The same momentum draws, energies, velocities and ``scale``
    as BlackJAX's ``gaussian_euclidean`` / ``gaussian_euclidean_low_rank`` (to round-off,
    ``tests/test_mcmc_metric.py``) with fewer M⁻¹ products (module docstring). Positions
    are flattened with ``ravel_pytree``.

    Raises
    ------
    KeyError
        ``tuned`` holds none of the forms above.
    """
    if "imm_sigma" in tuned:
        base = default_metric(LowRankInverseMassMatrix(tuned["imm_sigma"], tuned["imm_U"], tuned["imm_lam"]))
    elif "mass_sqrt" in tuned:
        base = _dense_metric(tuned["imm_chol"], tuned["mass_sqrt"])
    else:
        base = default_metric(tuned["inverse_mass_matrix"])
    matvec, operands = _inverse_mass_matvec(tuned)

    @jax.custom_vjp
    def kinetic(p, a):
        return 0.5 * jnp.dot(p, matvec(a, p))

    def kinetic_fwd(p, a):
        v = matvec(a, p)
        return 0.5 * jnp.dot(p, v), (v, a)

    def kinetic_bwd(res, ct):
        v, a = res
        return ct * v, jax.tree.map(jnp.zeros_like, a)

    kinetic.defvjp(kinetic_fwd, kinetic_bwd)

    def kinetic_energy(momentum, position=None):
        del position
        return kinetic(ravel_pytree(momentum)[0], operands)

    def check_turning(momentum_left, momentum_right, momentum_sum, position_left=None, position_right=None):
        del position_left, position_right
        left, right, total = (ravel_pytree(m)[0] for m in (momentum_left, momentum_right, momentum_sum))
        w = matvec(operands, total - (right + left) / 2)  # M⁻¹ρ
        return (jnp.dot(left, w) <= 0) | (jnp.dot(right, w) <= 0)

    sample_momentum = base.sample_momentum
    if "imm_sigma" in tuned:
        sigma, U, lam = tuned["imm_sigma"], tuned["imm_U"], tuned["imm_lam"]

        def sample_momentum(rng_key, position):  # p = M^(1/2) ε = diag(1/σ)(I + U(Λ^(-1/2) - I)Uᵀ) ε
            eps, unravel = ravel_pytree(generate_gaussian_noise(rng_key, position))
            return unravel((eps + U @ ((jax.lax.rsqrt(lam) - 1.0) * (eps @ U))) / sigma)

    return Metric(sample_momentum, kinetic_energy, check_turning, base.scale)


def _dense_metric(chol, mass_sqrt) -> Metric:
    """Momentum draws and ``scale`` of a dense M⁻¹ = L Lᵀ from its precomputed factors
    (:func:`dense_factors`); kinetic energy and U-turn check come from :func:`kernel_metric`."""

    def sample_momentum(rng_key, position):
        eps, unravel = ravel_pytree(generate_gaussian_noise(rng_key, position))
        return unravel(mass_sqrt @ eps)

    def scale(position, element, *, inv, trans):
        del position
        e, unravel = ravel_pytree(element)
        left = chol if inv else mass_sqrt  # BlackJAX's factors: L for inv=True, M^(1/2) = L⁻ᵀ otherwise
        return unravel(e @ left if trans else left @ e)

    return Metric(sample_momentum, None, None, scale)
