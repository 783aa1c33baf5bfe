"""How the Laplace precision is stored, inverted, sampled and its log-det taken.

q(z) = N(m, A⁻¹) on the chosen coordinates ``index`` (d of the D flat unconstrained
coordinates); the other coordinates are held at the mode m. Every class below is a
NamedTuple of arrays (a pytree) with ``sample_flat(key, n) -> (n, D)``,
``log_prob(z (..., D)) -> (...)`` (the density of the d chosen coordinates),
``logdet()`` = log det A, ``cov_spec()`` (for :func:`ppl_posteriors.linalg.linearized_forward`)
and ``to_arrays``/``from_arrays`` (stored in ``idata.approximation``).

* :class:`FullGaussian`: A dense (d, d), Cholesky (``structure="full"``; with
  ``sites=None`` the result keeps :class:`~ppl_posteriors.laplace.gaussian.DenseGaussian`).
* :class:`DiagGaussian`: A = diag(a).
* :class:`LowRankGaussian`: A = U diag(s) Uᵀ + diag(p₀), a
  :class:`~ppl_posteriors.linalg.LowRankPlusDiag` (Woodbury solve, determinant lemma).
* :class:`KronGaussian`: Kronecker-factored blocks A_W = (A_in ⊗ B_out) + δ I for
  the K-FAC layers (eigendecompositions of both factors: exact inverse, log-det and
  draws), and diag(a) for every other coordinate.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from ..linalg import LowRankPlusDiag
from ..results.approximation import register_approximation

__all__ = ["DiagGaussian", "FullGaussian", "KronBlock", "KronGaussian", "LowRankGaussian"]

_LOG2PI = math.log(2 * math.pi)


def _embed(mean, index, x):
    """(n, d) -> (n, D) with the other coordinates at the mean."""
    return jnp.broadcast_to(mean, x.shape[:-1] + mean.shape).at[..., index].set(x)


@register_approximation
class FullGaussian(NamedTuple):
    """mean (D,); index (d,) int; precision (d, d); cholesky (d, d) lower."""

    mean: jax.Array
    index: jax.Array
    precision: jax.Array
    cholesky: jax.Array
    kind = "laplace_full"

    def sample_flat(self, rng_key, n):
        eps = jax.random.normal(rng_key, (n, self.index.shape[0]), self.mean.dtype)
        x = self.mean[self.index] + solve_triangular(self.cholesky.T, eps.T, lower=False).T
        return _embed(self.mean, self.index, x)

    def logdet(self):
        return 2 * jnp.sum(jnp.log(jnp.diag(self.cholesky)))

    def log_prob(self, z):
        w = (z[..., self.index] - self.mean[self.index]) @ self.cholesky
        return -0.5 * self.index.shape[0] * _LOG2PI + 0.5 * self.logdet() - 0.5 * jnp.sum(w * w, -1)

    def cov_spec(self):
        return self.precision, True

    def to_arrays(self):
        return {"mean": (("param",), self.mean), "index": (("sub",), self.index),
                "precision": (("sub", "sub_"), self.precision)}

    @classmethod
    def from_arrays(cls, a):
        p = jnp.asarray(a["precision"])
        return cls(jnp.asarray(a["mean"]), jnp.asarray(a["index"]), p, jnp.linalg.cholesky(p))


@register_approximation
class DiagGaussian(NamedTuple):
    """mean (D,); index (d,) int; prec (d,) > 0 (units 1/position²)."""

    mean: jax.Array
    index: jax.Array
    prec: jax.Array
    kind = "laplace_diag"

    def sample_flat(self, rng_key, n):
        eps = jax.random.normal(rng_key, (n, self.index.shape[0]), self.mean.dtype)
        return _embed(self.mean, self.index, self.mean[self.index] + eps / jnp.sqrt(self.prec))

    def logdet(self):
        return jnp.sum(jnp.log(self.prec))

    def log_prob(self, z):
        r = z[..., self.index] - self.mean[self.index]
        return -0.5 * self.index.shape[0] * _LOG2PI + 0.5 * self.logdet() - 0.5 * jnp.sum(r * r * self.prec, -1)

    def cov_spec(self):
        return 1.0 / self.prec, False

    def to_arrays(self):
        return {"mean": (("param",), self.mean), "index": (("sub",), self.index), "prec": (("sub",), self.prec)}

    @classmethod
    def from_arrays(cls, a):
        return cls(*(jnp.asarray(a[k]) for k in ("mean", "index", "prec")))


@register_approximation
class LowRankGaussian(NamedTuple):
    """mean (D,); index (d,) int; op: A = U diag(s) Uᵀ + diag(d) (LowRankPlusDiag, U (d, k))."""

    mean: jax.Array
    index: jax.Array
    op: LowRankPlusDiag
    kind = "laplace_lowrank"

    def sample_flat(self, rng_key, n):
        x = self.mean[self.index] + self.op.sample(rng_key, (n,), inverse=True)
        return _embed(self.mean, self.index, x)

    def logdet(self):
        return self.op.logdet()

    def log_prob(self, z):
        return self.op.normal_log_prob(z[..., self.index], self.mean[self.index], precision=True)

    def cov_spec(self):
        return self.op, True

    def to_arrays(self):
        return {"mean": (("param",), self.mean), "index": (("sub",), self.index),
                "U": (("sub", "rank"), self.op.U), "s": (("rank",), self.op.s), "d": (("sub",), self.op.d)}

    @classmethod
    def from_arrays(cls, a):
        op = LowRankPlusDiag(*(jnp.asarray(a[k]) for k in ("U", "s", "d")))
        return cls(jnp.asarray(a["mean"]), jnp.asarray(a["index"]), op)


class KronBlock(NamedTuple):
    """A (n_in·n_out) block over ``index`` (row-major W (n_in, n_out)):
    (Q_a ⊗ Q_b) diag(λ_a ⊗ λ_b + δ) (Q_a ⊗ Q_b)ᵀ."""

    index: jax.Array
    qa: jax.Array
    la: jax.Array
    qb: jax.Array
    lb: jax.Array
    delta: jax.Array

    def eig(self):
        return self.la[:, None] * self.lb[None, :] + self.delta  # (n_in, n_out)


@register_approximation
class KronGaussian(NamedTuple):
    """mean (D,); index (d,) int: the chosen coordinates; blocks: K-FAC blocks; rest_index (r,),
    rest_prec (r,): diagonal precision of the chosen coordinates outside every block."""

    mean: jax.Array
    index: jax.Array
    blocks: tuple
    rest_index: jax.Array
    rest_prec: jax.Array
    kind = "laplace_kron"

    def sample_flat(self, rng_key, n):
        keys = jax.random.split(rng_key, len(self.blocks) + 1)
        z = jnp.broadcast_to(self.mean, (n,) + self.mean.shape)
        for k, b in zip(keys[1:], self.blocks, strict=True):
            eps = jax.random.normal(k, (n, b.qa.shape[0], b.qb.shape[0]), self.mean.dtype)
            w = b.qa @ (eps / jnp.sqrt(b.eig())) @ b.qb.T
            z = z.at[:, b.index].add(w.reshape(n, -1))
        eps = jax.random.normal(keys[0], (n, self.rest_index.shape[0]), self.mean.dtype)
        return z.at[:, self.rest_index].add(eps / jnp.sqrt(self.rest_prec))

    def logdet(self):
        return sum(jnp.sum(jnp.log(b.eig())) for b in self.blocks) + jnp.sum(jnp.log(self.rest_prec))

    def log_prob(self, z):
        quad = 0.0
        for b in self.blocks:
            r = (z[..., b.index] - self.mean[b.index]).reshape(z.shape[:-1] + (b.qa.shape[0], b.qb.shape[0]))
            rot = jnp.einsum("ai,...ab,bj->...ij", b.qa, r, b.qb)  # Q_aᵀ R Q_b
            quad = quad + jnp.sum(rot**2 * b.eig(), (-2, -1))
        r = z[..., self.rest_index] - self.mean[self.rest_index]
        quad = quad + jnp.sum(r * r * self.rest_prec, -1)
        return -0.5 * self.index.shape[0] * _LOG2PI + 0.5 * self.logdet() - 0.5 * quad

    def cov_matvec(self, v):
        """Σ v on the d chosen coordinates (ordered as ``index``)."""
        pos = jnp.zeros_like(self.mean).at[self.index].set(v)
        out = jnp.zeros_like(self.mean)
        for b in self.blocks:
            r = pos[b.index].reshape(b.qa.shape[0], b.qb.shape[0])
            out = out.at[b.index].set((b.qa @ ((b.qa.T @ r @ b.qb) / b.eig()) @ b.qb.T).reshape(-1))
        out = out.at[self.rest_index].set(pos[self.rest_index] / self.rest_prec)
        return out[self.index]

    def cov_spec(self):
        return self.cov_matvec, False

    def to_arrays(self):
        out = {"mean": (("param",), self.mean), "index": (("sub",), self.index),
               "rest_index": (("rest",), self.rest_index), "rest_prec": (("rest",), self.rest_prec)}
        for i, b in enumerate(self.blocks):
            out.update({
                f"kron{i}_index": ((f"kron{i}",), b.index),
                f"kron{i}_qa": ((f"kron{i}_in", f"kron{i}_in_"), b.qa), f"kron{i}_la": ((f"kron{i}_in",), b.la),
                f"kron{i}_qb": ((f"kron{i}_out", f"kron{i}_out_"), b.qb), f"kron{i}_lb": ((f"kron{i}_out",), b.lb),
                f"kron{i}_delta": ((), b.delta),
            })
        return out

    @classmethod
    def from_arrays(cls, a):
        n = len([k for k in a if k.endswith("_delta")])
        blocks = tuple(KronBlock(*(jnp.asarray(a[f"kron{i}_{f}"]) for f in ("index", "qa", "la", "qb", "lb", "delta")))
                       for i in range(n))
        return cls(jnp.asarray(a["mean"]), jnp.asarray(a["index"]), blocks,
                   jnp.asarray(a["rest_index"]), jnp.asarray(a["rest_prec"]))
