"""Low-rank-plus-diagonal symmetric positive-definite operator.

A = U diag(s) Uᵀ + diag(d),  U (D, k), s (k,) ≥ 0, d (D,) > 0.

One type for every place the project stores such a matrix: a Laplace precision
(top-k Lanczos eigenpairs of the curvature plus the prior precision), a low-rank VI
guide's covariance, a low-rank (inverse) mass matrix. All operations cost O(D k²) or
less and never form a (D, D) array (except :meth:`LowRankPlusDiag.to_dense`).

With W = D^{-1/2} U S^{1/2} (D, k), A = D^{1/2} (I + W Wᵀ) D^{1/2}, and

* Woodbury: A⁻¹ = D⁻¹ − D^{-1/2} W C⁻¹ Wᵀ D^{-1/2}, capacitance C = I_k + Wᵀ W
  (Woodbury 1950; Higham, "Accuracy and stability of numerical algorithms", 2002);
* determinant lemma: log det A = Σ log d_i + log det C;
* square roots from the thin SVD W = Q Σ Vᵀ:
  A^{1/2} = D^{1/2} (I + Q diag(√(1+σ²) − 1) Qᵀ) and
  A^{-1/2} = D^{-1/2} (I + Q diag(1/√(1+σ²) − 1) Qᵀ), symmetric middle factors, so
  A^{1/2} A^{1/2 T} = A and A^{-1/2} A^{-1/2 T} = A⁻¹ exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve

__all__ = ["LowRankPlusDiag"]


class LowRankPlusDiag(NamedTuple):
    """A = U diag(s) Uᵀ + diag(d) on flat vectors of length D.

    Attributes
    ----------
    U : (D, k)
        Low-rank factor (need not be orthonormal).
    s : (k,)
        Non-negative weights (e.g. Lanczos eigenvalues); a negative s gives NaNs.
    d : (D,)
        Positive diagonal (e.g. prior precision).

    It is a pytree (a NamedTuple of arrays): pass it through ``jit``/``vmap``. Vectors
    are flat (D,); for a parameter pytree use ``jax.flatten_util.ravel_pytree``.
    Methods take one vector; ``jax.vmap`` them for many.
    """

    U: jax.Array
    s: jax.Array
    d: jax.Array

    @property
    def dim(self) -> int:
        return self.d.shape[0]

    def _w(self) -> jax.Array:
        return self.U * jnp.sqrt(self.s)[None, :] / jnp.sqrt(self.d)[:, None]

    def _capacitance_cholesky(self):
        w = self._w()
        c = jnp.eye(w.shape[1], dtype=w.dtype) + w.T @ w
        return w, jnp.linalg.cholesky(c)

    def matvec(self, v: jax.Array) -> jax.Array:
        """A v, v (D,) -> (D,)."""
        return self.U @ (self.s * (self.U.T @ v)) + self.d * v

    def solve(self, v: jax.Array) -> jax.Array:
        """A⁻¹ v by the Woodbury identity, v (D,) -> (D,); O(D k²)."""
        w, chol = self._capacitance_cholesky()
        vs = v / jnp.sqrt(self.d)
        return (vs - w @ cho_solve((chol, True), w.T @ vs)) / jnp.sqrt(self.d)

    def logdet(self) -> jax.Array:
        """log det A (matrix determinant lemma), a scalar."""
        _, chol = self._capacitance_cholesky()
        return jnp.sum(jnp.log(self.d)) + 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))

    def diagonal(self) -> jax.Array:
        """diag(A), (D,)."""
        return self.d + jnp.sum(self.U * self.U * self.s[None, :], axis=1)

    def inverse_diagonal(self) -> jax.Array:
        """diag(A⁻¹), (D,) (e.g. marginal variances when A is a precision); O(D k²)."""
        w, chol = self._capacitance_cholesky()
        m = jax.scipy.linalg.solve_triangular(chol, w.T, lower=True)  # (k, D): L_C⁻¹ Wᵀ
        return (1.0 - jnp.sum(m * m, axis=0)) / self.d

    def to_dense(self) -> jax.Array:
        """The (D, D) matrix (for tests and small D only)."""
        return (self.U * self.s[None, :]) @ self.U.T + jnp.diag(self.d)

    def _sqrt_middle(self, power: float, v: jax.Array) -> jax.Array:
        q, sig, _ = jnp.linalg.svd(self._w(), full_matrices=False)
        coef = (1.0 + sig * sig) ** power - 1.0
        return v + q @ (coef * (q.T @ v))

    def sqrt_matvec(self, eps: jax.Array) -> jax.Array:
        """A^{1/2} ε with A^{1/2} (A^{1/2})ᵀ = A, eps (D,) -> (D,)."""
        return jnp.sqrt(self.d) * self._sqrt_middle(0.5, eps)

    def inv_sqrt_matvec(self, eps: jax.Array) -> jax.Array:
        """A^{-1/2} ε with A^{-1/2} (A^{-1/2})ᵀ = A⁻¹, eps (D,) -> (D,)."""
        return self._sqrt_middle(-0.5, eps) / jnp.sqrt(self.d)

    def sample(
        self, rng_key: jax.Array, sample_shape: tuple[int, ...] = (), inverse: bool = False
    ) -> jax.Array:
        """Zero-mean Gaussian draws, (*sample_shape, D).

        ``inverse=False``: N(0, A) (A a covariance: low-rank VI guide, momentum of a
        mass matrix A). ``inverse=True``: N(0, A⁻¹) (A a precision: Laplace).
        One thin SVD of W (O(D k²)), then O(D k) per draw.
        """
        eps = jax.random.normal(rng_key, (*sample_shape, self.dim), self.d.dtype).reshape(
            -1, self.dim
        )
        q, sig, _ = jnp.linalg.svd(self._w(), full_matrices=False)
        power = -0.5 if inverse else 0.5
        coef = (1.0 + sig * sig) ** power - 1.0
        mid = eps + ((eps @ q) * coef) @ q.T
        out = mid / jnp.sqrt(self.d) if inverse else mid * jnp.sqrt(self.d)
        return out.reshape(*sample_shape, self.dim)

    def normal_log_prob(self, x: jax.Array, mean: jax.Array, precision: bool = True) -> jax.Array:
        """log N(x; mean, A⁻¹) if ``precision`` else log N(x; mean, A); x (..., D) -> (...)."""
        diff = x - mean
        if precision:
            quad = jnp.sum(
                diff * jax.vmap(self.matvec)(diff.reshape(-1, self.dim)).reshape(diff.shape), -1
            )
            return -0.5 * (self.dim * math.log(2 * math.pi) - self.logdet() + quad)
        quad = jnp.sum(
            diff * jax.vmap(self.solve)(diff.reshape(-1, self.dim)).reshape(diff.shape), -1
        )
        return -0.5 * (self.dim * math.log(2 * math.pi) + self.logdet() + quad)
