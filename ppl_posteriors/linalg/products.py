"""Curvature products and matrices on pytrees: Hessian, empirical Fisher and GGN.

JAX counterparts of ``posteriors.utils`` (normal-computing/posteriors, PyTorch), with
the same argument names and return conventions, plus matrix-free diagonals.

Notation (Martens 2020, "New insights and perspectives on the natural gradient
method", JMLR 21):

* parameters θ, a pytree with D scalars in all; ``ravel`` is
  :func:`jax.flatten_util.ravel_pytree`, whose order defines every dense (D, D) result;
* Hessian H(θ) = ∇²f(θ) of a scalar f;
* empirical Fisher F(θ) = Jᵀ J, J = ∂f/∂θ (N, D) the Jacobian of a per-datum
  output vector f(θ) (N,) (typically per-datum log-likelihoods);
* generalised Gauss-Newton G(θ) = J_fᵀ H_l(z) J_f, z = f(θ) the forward output
  (P scalars), J_f its (P, D) Jacobian and H_l(z) = ∇²l(z) (P, P) the Hessian of the
  scalar loss l at z. G equals the Fisher when l is the negative log-likelihood of an
  exponential family in its natural parameter.

Everything is a pure function of arrays: it jits, vmaps and differentiates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .._errors import ConfigError

__all__ = [
    "diag_empirical_fisher",
    "diag_ggn",
    "empirical_fisher",
    "fvp",
    "ggn",
    "ggnvp",
    "hvp",
    "per_samplify",
]


def _leading_dim(tree) -> int:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves or jnp.ndim(leaves[0]) == 0:
        raise ConfigError(
            "normalize=True needs an output with a leading (batch) axis; got a scalar output"
        )
    return leaves[0].shape[0]


def _scale(tree, c):
    return jax.tree_util.tree_map(lambda x: x * c, tree)


def hvp(f: Callable, primals: tuple, tangents: tuple, has_aux: bool = False):
    """Hessian-vector product H(θ) v of a scalar function, by forward-over-reverse.

    Parameters
    ----------
    f : callable
        ``f(*primals) -> scalar`` (``(scalar, aux)`` if ``has_aux``). Differentiated
        with respect to its first argument; extra primals are passed through the JVP.
    primals : tuple
        Point θ, e.g. ``(params,)``; a pytree of D scalars.
    tangents : tuple
        Vector v, same structure, shapes and dtypes as ``primals``.
    has_aux : bool
        Whether ``f`` returns ``(value, aux)``.

    Returns
    -------
    (grad, hvp) or (grad, hvp, aux)
        ``grad`` = ∇f(θ) and ``hvp`` = ∇²f(θ) v, both shaped like ``primals[0]``.

    Notes
    -----
    ``jax.jvp(jax.grad(f), primals, tangents)`` (Pearlmutter 1994); costs about two
    gradient evaluations. Same API as ``posteriors.hvp``.
    """
    return jax.jvp(jax.grad(f, has_aux=has_aux), primals, tangents, has_aux=has_aux)


def fvp(
    f: Callable, primals: tuple, tangents: tuple, has_aux: bool = False, normalize: bool = False
):
    """Empirical-Fisher-vector product F(θ) v = Jᵀ (J v).

    Parameters
    ----------
    f : callable
        ``f(*primals) -> out`` with ``out`` a pytree of arrays (typically the (N,)
        per-datum log-likelihoods); J = ∂ out / ∂ primals.
    primals, tangents : tuple
        Point θ and vector v (same structure).
    has_aux : bool
        Whether ``f`` returns ``(out, aux)``.
    normalize : bool
        Divide by N, the leading dimension of the first leaf of ``out``.

    Returns
    -------
    (out, fvp) or (out, fvp, aux)
        ``fvp`` shaped like ``primals[0]`` (a tuple over primals if there are several).

    Notes
    -----
    One linearisation (``jax.linearize``) and its transpose: a JVP and a VJP, no
    Jacobian. Same API as ``posteriors.fvp`` (Martens 2020, section 11).
    """
    lin = jax.linearize(f, *primals, has_aux=has_aux)
    out, f_jvp = lin[0], lin[1]
    jv = f_jvp(*tangents)
    fv = jax.linear_transpose(f_jvp, *primals)(jv)
    fv = fv[0] if len(primals) == 1 else fv
    if normalize:
        fv = _scale(fv, 1.0 / _leading_dim(out))
    return (out, fv, lin[2]) if has_aux else (out, fv)


def ggnvp(
    forward: Callable,
    loss: Callable,
    primals: tuple,
    tangents: tuple,
    forward_has_aux: bool = False,
    loss_has_aux: bool = False,
    normalize: bool = False,
):
    """Generalised-Gauss-Newton-vector product G(θ) v = J_fᵀ H_l(z) J_f v.

    Parameters
    ----------
    forward : callable
        ``forward(*primals) -> z`` (a pytree of arrays; ``(z, aux)`` if ``forward_has_aux``).
    loss : callable
        ``loss(z) -> scalar`` (``(scalar, aux)`` if ``loss_has_aux``).
    primals, tangents : tuple
        Point θ and vector v (same structure).
    normalize : bool
        Divide by the leading dimension of the first leaf of z (the batch size).

    Returns
    -------
    ((z, ∇l(z)), Gv) [+ forward aux] [+ loss aux]
        ``Gv`` shaped like ``primals[0]``.

    Notes
    -----
    A JVP of ``forward``, an HVP of ``loss`` at z and the transposed JVP (a VJP):
    H_l is never formed. Same API as ``posteriors.ggnvp`` (Schraudolph 2002;
    Martens 2020).
    """
    lin = jax.linearize(forward, *primals, has_aux=forward_has_aux)
    z, f_jvp = lin[0], lin[1]
    jv = f_jvp(*tangents)
    h_out = hvp(loss, (z,), (jv,), has_aux=loss_has_aux)
    hjv = h_out[1]
    if normalize:
        hjv = _scale(hjv, 1.0 / _leading_dim(z))
    gv = jax.linear_transpose(f_jvp, *primals)(hjv)
    gv = gv[0] if len(primals) == 1 else gv
    aux = ((lin[2],) if forward_has_aux else ()) + ((h_out[2],) if loss_has_aux else ())
    return ((z, h_out[0]), gv, *aux)


def _select(args, argnums):
    return args[argnums] if isinstance(argnums, int) else tuple(args[i] for i in argnums)


def _replace(args, argnums, new):
    args = list(args)
    if isinstance(argnums, int):
        args[argnums] = new
    else:
        for i, a in zip(argnums, new, strict=True):
            args[i] = a
    return tuple(args)


def _flat_jacobian(fn_flat: Callable, x: jax.Array) -> jax.Array:
    """(P, D) Jacobian of a flat-to-flat function: reverse mode if P <= D, else forward."""
    p = jax.eval_shape(fn_flat, x).shape[0]
    return (jax.jacrev if p <= x.shape[0] else jax.jacfwd)(fn_flat)(x)


def empirical_fisher(
    f: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False, normalize: bool = False
) -> Callable:
    """Dense empirical Fisher F = Jᵀ J over the ravelled ``args[argnums]``.

    Parameters
    ----------
    f : callable
        ``f(*args) -> out``; ``out`` (N,) per-datum values (any pytree, ravelled to N).
    argnums : int or sequence of int
        Which arguments to differentiate; their ravelled concatenation has D scalars.
    has_aux, normalize : bool
        ``f`` returns ``(out, aux)``; divide by N.

    Returns
    -------
    callable
        ``(*args) -> F`` (D, D) symmetric PSD (``(F, aux)`` if ``has_aux``), in the
        order of ``ravel_pytree(args[argnums])``.

    Notes
    -----
    F = Σ_n ∇f_n ∇f_nᵀ (Martens 2020, section 11). Forms the (N, D) Jacobian; for the
    diagonal alone use :func:`diag_empirical_fisher`.
    """

    def fisher(*args):
        flat, unravel = ravel_pytree(_select(args, argnums))

        def fn_flat(x):
            out = f(*_replace(args, argnums, unravel(x)))
            return ravel_pytree(out[0] if has_aux else out)[0]

        jac = _flat_jacobian(fn_flat, flat)
        fis = jac.T @ jac
        if normalize:
            fis = fis / jac.shape[0]
        if has_aux:
            return fis, f(*args)[1]
        return fis

    return fisher


def ggn(
    forward: Callable,
    loss: Callable,
    argnums: int | Sequence[int] = 0,
    forward_has_aux: bool = False,
    loss_has_aux: bool = False,
    normalize: bool = False,
) -> Callable:
    """Dense generalised Gauss-Newton matrix G = J_fᵀ H_l(z) J_f.

    Parameters
    ----------
    forward : callable
        ``forward(*args) -> z`` (pytree; P scalars in all).
    loss : callable
        ``loss(z) -> scalar``.
    argnums : int or sequence of int
        Which arguments of ``forward`` are θ (D scalars once ravelled).
    forward_has_aux, loss_has_aux, normalize : bool
        As in :func:`ggnvp`.

    Returns
    -------
    callable
        ``(*args) -> G`` (D, D) symmetric, in the order of ``ravel_pytree(args[argnums])``;
        followed by the aux outputs if requested.

    Notes
    -----
    J_f (P, D) by reverse or forward mode (whichever is smaller), then H_l J_f by D
    Hessian-vector products of the loss (the (P, P) H_l is never formed), then
    G = J_fᵀ (H_l J_f), symmetrised. PSD when l is convex in z.
    """

    def internal(*args):
        flat, unravel = ravel_pytree(_select(args, argnums))

        def fwd(x):
            out = forward(*_replace(args, argnums, unravel(x)))
            return out if forward_has_aux else (out, None)

        z, faux = fwd(flat)
        zf, unravel_z = ravel_pytree(z)
        jac = _flat_jacobian(lambda x: ravel_pytree(fwd(x)[0])[0], flat)  # (P, D)

        def loss_flat(zz):
            out = loss(unravel_z(zz))
            return out[0] if loss_has_aux else out

        hj = jax.vmap(lambda col: hvp(loss_flat, (zf,), (col,))[1], in_axes=1, out_axes=1)(jac)
        g = jac.T @ hj
        g = 0.5 * (g + g.T)
        if normalize:
            g = g / _leading_dim(z)
        aux = ((faux,) if forward_has_aux else ()) + ((loss(z)[1],) if loss_has_aux else ())
        return (g, *aux) if aux else g

    return internal


def _sum_over_data(per_datum: Callable, batch, batch_size: int | None):
    """Σ_n per_datum(batch[n]) over the leading axis, vmapped in chunks of ``batch_size``."""
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ConfigError("batch must hold at least one array with a leading data axis")
    n = leaves[0].shape[0]
    if any(jnp.ndim(x) == 0 or x.shape[0] != n for x in leaves):
        raise ConfigError(
            f"every leaf of batch needs the same leading data axis (N={n}); got shapes "
            f"{[jnp.shape(x) for x in leaves]}"
        )

    def chunk_sum(chunk):
        return jax.tree_util.tree_map(lambda x: x.sum(0), jax.vmap(per_datum)(chunk))

    if batch_size is None or batch_size >= n:
        return chunk_sum(batch)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer or None; got {batch_size}")
    n_chunks, rem = divmod(n, batch_size)
    head = jax.tree_util.tree_map(
        lambda x: x[: n_chunks * batch_size].reshape(n_chunks, batch_size, *x.shape[1:]), batch
    )
    first = chunk_sum(jax.tree_util.tree_map(lambda x: x[0], head))

    def body(acc, chunk):
        return jax.tree_util.tree_map(jnp.add, acc, chunk_sum(chunk)), None

    total, _ = jax.lax.scan(body, first, jax.tree_util.tree_map(lambda x: x[1:], head))
    if rem:
        tail = chunk_sum(jax.tree_util.tree_map(lambda x: x[n_chunks * batch_size :], batch))
        total = jax.tree_util.tree_map(jnp.add, total, tail)
    return total


def diag_ggn(
    forward: Callable, loss: Callable, normalize: bool = False, batch_size: int | None = None
) -> Callable:
    """Exact diagonal of the GGN, Σ_n diag(J_nᵀ H_n J_n), matrix-free.

    Parameters
    ----------
    forward : callable
        ``forward(params, datum) -> z_n``: the model output for ONE datum (any pytree,
        C scalars in all). ``datum`` is ``batch`` indexed at n along every leaf.
    loss : callable
        ``loss(z_n, datum) -> scalar``: that datum's loss (e.g. its negative
        log-likelihood in the output parameters z_n).
    normalize : bool
        Divide by N (the batch size).
    batch_size : int or None
        Data processed together; peak memory is about ``batch_size * C * D`` scalars.
        ``None``: all N at once.

    Returns
    -------
    callable
        ``(params, batch) -> diag`` shaped like ``params``: diag[i] = G_ii, units
        1/param². ``batch`` is a pytree whose leaves share a leading axis N.

    Notes
    -----
    H_n = ∇²_z loss (C, C) is factored as H_n = Q_n Λ_n Q_nᵀ (``eigh``), i.e.
    H_n = L_n S_n L_nᵀ with L_n = Q_n |Λ_n|^{1/2} and signs S_n, so

        diag(G) = Σ_n Σ_c λ_{n,c} (J_nᵀ q_{n,c})²,

    the row sums of squares of L_nᵀ J_n: C vector-Jacobian products per datum
    (vmapped), never J itself (BackPACK, Dangel et al. 2020, "BackPACK: packing more
    into backprop", ICLR). Exact also when H_n is indefinite. Differs from
    ``posteriors.diag_ggn`` (which forms J and H for a batched forward) in taking the
    forward and loss per datum, which is what makes the exact matrix-free form possible.
    """

    def per_datum(params, datum):
        z, vjp_fn = jax.vjp(lambda p: forward(p, datum), params)
        zf, unravel_z = ravel_pytree(z)
        h = jax.hessian(lambda zz: loss(unravel_z(zz), datum))(zf)
        lam, q = jnp.linalg.eigh(0.5 * (h + h.T))
        rows = jax.vmap(lambda qc: vjp_fn(unravel_z(qc))[0])(q.T)  # leaves (C, *leaf.shape)
        return jax.tree_util.tree_map(lambda r: jnp.tensordot(lam, r * r, axes=1), rows)

    def internal(params, batch):
        total = _sum_over_data(lambda d: per_datum(params, d), batch, batch_size)
        if normalize:
            total = _scale(total, 1.0 / jax.tree_util.tree_leaves(batch)[0].shape[0])
        return total

    return internal


def diag_empirical_fisher(
    f: Callable, normalize: bool = False, batch_size: int | None = None
) -> Callable:
    """Diagonal of the empirical Fisher, Σ_n (∇f_n)², from per-datum gradients.

    Parameters
    ----------
    f : callable
        ``f(params, datum) -> scalar``: one datum's log-likelihood (or loss; the sign
        does not matter).
    normalize : bool
        Divide by N.
    batch_size : int or None
        Data whose gradients are held at once (memory ``batch_size * D``); None: all.

    Returns
    -------
    callable
        ``(params, batch) -> diag`` shaped like ``params`` (units 1/param²).

    Notes
    -----
    Per-datum gradients by ``vmap(grad)``, squared and summed (Martens 2020, sec. 11).
    """

    def internal(params, batch):
        per = lambda d: jax.tree_util.tree_map(jnp.square, jax.grad(f)(params, d))  # noqa: E731
        total = _sum_over_data(per, batch, batch_size)
        if normalize:
            total = _scale(total, 1.0 / jax.tree_util.tree_leaves(batch)[0].shape[0])
        return total

    return internal


def per_samplify(f: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Turn ``f(params, batch)`` into one output per datum of ``batch``.

    Parameters
    ----------
    f : callable
        ``f(params, batch)`` for a batch whose leaves share a leading axis.

    Returns
    -------
    callable
        ``(params, batch) -> out`` with a leading axis N: out[n] = f(params, batch[n:n+1]).

    Notes
    -----
    ``jax.vmap`` over the data, each datum given a leading axis of length 1 so that
    ``f`` sees a batch of one (as ``posteriors.per_samplify``).
    """

    @wraps(f)
    def per_sample(params, batch):
        return jax.vmap(lambda b: f(params, jax.tree_util.tree_map(lambda x: x[None], b)))(batch)

    return per_sample
