"""Streaming Laplace transforms: curvature accumulated over minibatches (``posteriors`` style).

JAX counterparts of ``posteriors.laplace.{diag_fisher, dense_fisher, diag_ggn, dense_ggn}``
(normal-computing/posteriors, PyTorch). Each ``build(...)`` returns a :class:`Transform`
of three pure functions (they jit, vmap and run under ``lax.scan``):

* ``init(params) -> state``: the mean (the MAP, found beforehand) and the initial
  precision (``init_prec_diag``: typically the prior precision);
* ``update(state, batch) -> state``: adds the curvature of one minibatch, scaled by
  1/temperature;
* ``sample(rng_key, state, sample_shape=()) -> draws``: draws from N(params, prec⁻¹),
  every leaf ``(*sample_shape, *leaf.shape)``.

Scaling and tempering convention (exact)
----------------------------------------
For a data set of N data streamed as minibatches B_1, ..., B_M (a partition of the N
data, any sizes), after ``init`` and one ``update`` per minibatch the state holds

    prec = init_prec + (1/T) Σ_{m=1}^{M} Σ_{n ∈ B_m} C_n(θ*),

where θ* = ``params``, T = ``temperature`` and C_n the per-datum curvature:

* ``diag_fisher`` / ``dense_fisher``: C_n = g_n g_nᵀ (diag: g_n²), g_n = ∇_θ f_n(θ*), with
  f_n the per-datum value of ``log_posterior`` (empirical Fisher; Martens 2020, sec. 11);
* ``diag_ggn`` / ``dense_ggn``: C_n = J_nᵀ H_n J_n (diag: its diagonal), J_n = ∂z_n/∂θ the
  Jacobian of the forward output of datum n and H_n = -∇²_z log p(y_n | z_n) (GGN;
  Schraudolph 2002, Martens 2020). ``dense_ggn`` takes H over the whole minibatch output,
  which equals Σ_n J_nᵀ H_n J_n when the outer log-likelihood is a sum over the data.

No N/B factor is applied anywhere: each datum's curvature enters exactly once, so one
pass over all N data gives the full-data curvature, whatever the batch sizes (a sum, not
a mean: ``posteriors``' ``normalize=False``). The prior's curvature is NOT in the sum:
pass the log-likelihood (not a per-datum log-posterior) and put the prior precision in
``init_prec_diag`` (e.g. 1/σ² for a Normal(0, σ) prior), so it is counted once. (If, as
in ``posteriors``' examples, ``log_posterior`` includes the prior divided by N per datum,
the Fisher then contains the cross terms of that share; the GGN ignores it.) T = 1 is
the Bayesian posterior; T < 1 sharpens (a "cold" posterior), T > 1 widens. The mean is
never touched by ``update``: find θ* first (e.g. by a stochastic optimiser whose
minibatch objective is the log-prior + (N/B) Σ_{n∈B} log p(y_n | θ), an unbiased estimate
of the log-posterior).

References: Daxberger et al. (2021), "Laplace Redux", NeurIPS; Martens (2020), JMLR 21;
posteriors (normal-computing), ``posteriors/laplace/*.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .._errors import ConfigError
from ..linalg import diag_empirical_fisher, diag_normal_sample, empirical_fisher, ggn
from ..linalg import diag_ggn as _diag_ggn

__all__ = [
    "DenseLaplaceState",
    "DiagLaplaceState",
    "Transform",
    "build_dense_fisher",
    "build_dense_ggn",
    "build_diag_fisher",
    "build_diag_ggn",
    "dense_sample",
    "diag_sample",
]

_tmap = jax.tree_util.tree_map


class Transform(NamedTuple):
    """Pure streaming Laplace transform: ``init(params)``, ``update(state, batch)``,
    ``sample(rng_key, state, sample_shape=())``."""

    init: Callable
    update: Callable
    sample: Callable


class DiagLaplaceState(NamedTuple):
    """N(params, diag(prec_diag)⁻¹).

    Attributes
    ----------
    params : pytree
        Mean θ* (D scalars in all).
    prec_diag : pytree like params
        Diagonal of the precision, units 1/param².
    step : int array, ()
        Number of ``update`` calls so far.
    """

    params: Any
    prec_diag: Any
    step: jax.Array


class DenseLaplaceState(NamedTuple):
    """N(params, prec⁻¹).

    Attributes
    ----------
    params : pytree
        Mean θ* (D scalars in all).
    prec : array, (D, D)
        Precision in the order of ``jax.flatten_util.ravel_pytree(params)``.
    step : int array, ()
        Number of ``update`` calls so far.
    """

    params: Any
    prec: jax.Array
    step: jax.Array


def _check_temperature(temperature) -> float:
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ConfigError(f"temperature must be a number > 0 (1.0 is the Bayesian posterior); got {temperature!r}")
    return float(temperature)


def _is_scalar(x) -> bool:
    return isinstance(x, (int, float)) or (hasattr(x, "ndim") and jnp.ndim(x) == 0)


def _diag_init(init_prec_diag):
    def init(params) -> DiagLaplaceState:
        """State at mean ``params`` with precision diagonal ``init_prec_diag`` (scalar or
        pytree like params)."""
        if _is_scalar(init_prec_diag):
            prec = _tmap(lambda x: jnp.full(jnp.shape(x), init_prec_diag, jnp.result_type(x)), params)
        else:
            prec = _tmap(lambda x, p: jnp.broadcast_to(jnp.asarray(p, jnp.result_type(x)), jnp.shape(x)),
                         params, init_prec_diag)
        return DiagLaplaceState(params, prec, jnp.zeros((), jnp.int32))

    return init


def _dense_init(init_prec):
    def init(params) -> DenseLaplaceState:
        """State at mean ``params`` with precision ``init_prec`` (a scalar s means s·I, a
        (D,) vector a diagonal, or a (D, D) matrix)."""
        flat, _ = ravel_pytree(params)
        d = flat.shape[0]
        p = jnp.asarray(init_prec, flat.dtype)
        if p.ndim == 0:
            p = p * jnp.eye(d, dtype=flat.dtype)
        elif p.ndim == 1:
            p = jnp.diag(p)
        if p.shape != (d, d):
            raise ConfigError(f"init_prec must be a scalar, a ({d},) diagonal or a ({d}, {d}) matrix; got shape {p.shape}")
        return DenseLaplaceState(params, p, jnp.zeros((), jnp.int32))

    return init


def diag_sample(rng_key, state: DiagLaplaceState, sample_shape: tuple[int, ...] = ()):
    """Draws from N(params, diag(prec_diag)⁻¹); each leaf ``(*sample_shape, *leaf.shape)``.

    A zero precision entry gives infinite draws: add the prior precision in ``init``.
    """
    sd = _tmap(lambda p: 1.0 / jnp.sqrt(p), state.prec_diag)
    return diag_normal_sample(rng_key, state.params, sd, tuple(sample_shape))


def dense_sample(rng_key, state: DenseLaplaceState, sample_shape: tuple[int, ...] = ()):
    """Draws from N(params, prec⁻¹): θ* + L⁻ᵀ ε, prec = L Lᵀ (Cholesky), ε ~ N(0, I).

    Each leaf ``(*sample_shape, *leaf.shape)``. A precision that is not positive definite
    gives NaN draws (never a silently clipped matrix).
    """
    flat, unravel = ravel_pytree(state.params)
    sample_shape = tuple(sample_shape)
    chol = jnp.linalg.cholesky(0.5 * (state.prec + state.prec.T))
    eps = jax.random.normal(rng_key, (*sample_shape, flat.shape[0]), flat.dtype).reshape(-1, flat.shape[0])
    x = jax.scipy.linalg.solve_triangular(chol, eps.T, lower=True, trans="T").T + flat
    out = jax.vmap(unravel)(x)
    return _tmap(lambda v: v.reshape(*sample_shape, *v.shape[1:]), out)


def _one(datum):
    """A datum as a batch of one (a leading axis of length 1 on every leaf)."""
    return _tmap(lambda x: x[None], datum)


def _fisher_per_datum(log_posterior, per_sample, has_aux):
    """f(params, datum) -> scalar: one datum's value of ``log_posterior``."""

    def f(params, datum):
        out = log_posterior(params, _one(datum))
        return jnp.sum(out[0] if has_aux else out)  # (1,) with per_sample, () without

    return f


def build_diag_fisher(log_posterior: Callable, per_sample: bool = False, init_prec_diag=0.0, *,
                      has_aux: bool = False, temperature: float = 1.0,
                      batch_size: int | None = None) -> Transform:
    """Streaming diagonal empirical-Fisher Laplace (``posteriors.laplace.diag_fisher.build``).

    Parameters
    ----------
    log_posterior : callable
        ``log_posterior(params, batch)``: the log-likelihood of a minibatch (scalar, a sum
        over its data) or, with ``per_sample=True``, a (B,) vector of per-datum values
        (``(value, aux)`` if ``has_aux``). ``batch`` is a pytree whose leaves share a
        leading axis B. Called on batches of one (B = 1).
    per_sample : bool
        Whether ``log_posterior`` returns one value per datum (see above).
    init_prec_diag : float or pytree like params
        Initial precision diagonal, typically the prior precision (1/param²).
    has_aux : bool
        ``log_posterior`` returns ``(value, aux)``; aux is dropped.
    temperature : float, default 1.0
        T > 0: the curvature is added as (1/T)·Σ_n g_n² (see the module docstring).
    batch_size : int or None
        Data whose gradients are held at once within a minibatch (memory ~ batch_size·D).

    Returns
    -------
    Transform
        ``init(params) -> DiagLaplaceState``; ``update(state, batch)`` adds
        (1/T) Σ_{n∈batch} (∇_θ f_n(params))²; ``sample(rng_key, state, sample_shape)``.

    Raises
    ------
    ConfigError
        ``temperature`` not > 0; a batch without a common leading axis.

    Notes
    -----
    Per-datum gradients by ``vmap(grad)`` (:func:`ppl_posteriors.linalg.diag_empirical_fisher`).
    """
    inv_t = 1.0 / _check_temperature(temperature)
    diag_fn = diag_empirical_fisher(_fisher_per_datum(log_posterior, per_sample, has_aux), batch_size=batch_size)

    def update(state: DiagLaplaceState, batch) -> DiagLaplaceState:
        inc = diag_fn(state.params, batch)
        prec = _tmap(lambda p, c: p + inv_t * c, state.prec_diag, inc)
        return DiagLaplaceState(state.params, prec, state.step + 1)

    return Transform(_diag_init(init_prec_diag), update, diag_sample)


def build_dense_fisher(log_posterior: Callable, per_sample: bool = False, init_prec=0.0, *,
                       has_aux: bool = False, temperature: float = 1.0) -> Transform:
    """Streaming dense empirical-Fisher Laplace (``posteriors.laplace.dense_fisher.build``).

    Parameters
    ----------
    log_posterior, per_sample, has_aux, temperature
        As in :func:`build_diag_fisher`.
    init_prec : float, (D,) or (D, D) array
        Initial precision (s means s·I), typically the prior precision, in the order of
        ``ravel_pytree(params)``.

    Returns
    -------
    Transform
        ``init(params) -> DenseLaplaceState``; ``update(state, batch)`` adds
        (1/T) Jᵀ J with J (B, D) the per-datum gradients of the minibatch
        (:func:`ppl_posteriors.linalg.empirical_fisher`); ``sample`` by Cholesky.

    Raises
    ------
    ConfigError
        ``temperature`` not > 0; ``init_prec`` of the wrong shape (at ``init``).
    """
    inv_t = 1.0 / _check_temperature(temperature)
    per = _fisher_per_datum(log_posterior, per_sample, has_aux)
    per_batch = jax.vmap(per, in_axes=(None, 0))  # (params, batch) -> (B,)

    def update(state: DenseLaplaceState, batch) -> DenseLaplaceState:
        fis = empirical_fisher(lambda p: per_batch(p, batch))(state.params)
        return DenseLaplaceState(state.params, state.prec + inv_t * fis, state.step + 1)

    return Transform(_dense_init(init_prec), update, dense_sample)


def _ggn_fns(forward, outer_log_likelihood, per_sample, forward_has_aux):
    def fwd(params, batch):
        out = forward(params, batch)
        return out[0] if forward_has_aux else out

    if per_sample:
        return fwd, lambda z, datum: -outer_log_likelihood(z, datum)
    # batched functions, applied to a batch of one
    return (lambda params, datum: fwd(params, _one(datum)),
            lambda z, datum: -outer_log_likelihood(z, _one(datum)))


def build_diag_ggn(forward: Callable, outer_log_likelihood: Callable, init_prec_diag=0.0, *,
                   per_sample: bool = False, forward_has_aux: bool = False, temperature: float = 1.0,
                   batch_size: int | None = None) -> Transform:
    """Streaming exact diagonal GGN Laplace (``posteriors.laplace.diag_ggn.build``).

    Parameters
    ----------
    forward : callable
        ``forward(params, batch) -> z``: the model output (e.g. logits, a Normal mean),
        not reduced over the batch (``(z, aux)`` if ``forward_has_aux``). With
        ``per_sample=True``, ``forward(params, datum) -> z_n`` for ONE datum (no batch axis).
    outer_log_likelihood : callable
        ``outer_log_likelihood(z, batch) -> scalar``: log p(y | z) summed over the batch
        (per datum with ``per_sample=True``). It must be a sum over the data: the
        diagonal is taken per datum, on batches of one.
    init_prec_diag : float or pytree like params
        Initial precision diagonal, typically the prior precision.
    temperature, batch_size
        As in :func:`build_diag_fisher` (batch_size: data per chunk; memory ~ batch_size·C·D).

    Returns
    -------
    Transform
        ``update(state, batch)`` adds (1/T) Σ_n diag(J_nᵀ H_n J_n), H_n = -∇²_z log p(y_n | z_n),
        exactly and without forming J (:func:`ppl_posteriors.linalg.diag_ggn`:
        C vector-Jacobian products per datum).

    Raises
    ------
    ConfigError
        ``temperature`` not > 0.

    Notes
    -----
    ``posteriors`` forms J and H of the batched forward; here the forward and loss are
    taken per datum (batches of one), which is what makes the exact matrix-free diagonal
    possible (BackPACK; Dangel et al. 2020).
    """
    inv_t = 1.0 / _check_temperature(temperature)
    fwd, loss = _ggn_fns(forward, outer_log_likelihood, per_sample, forward_has_aux)
    diag_fn = _diag_ggn(fwd, loss, batch_size=batch_size)

    def update(state: DiagLaplaceState, batch) -> DiagLaplaceState:
        inc = diag_fn(state.params, batch)
        prec = _tmap(lambda p, c: p + inv_t * c, state.prec_diag, inc)
        return DiagLaplaceState(state.params, prec, state.step + 1)

    return Transform(_diag_init(init_prec_diag), update, diag_sample)


def build_dense_ggn(forward: Callable, outer_log_likelihood: Callable, init_prec=0.0, *,
                    forward_has_aux: bool = False, temperature: float = 1.0) -> Transform:
    """Streaming dense GGN Laplace (``posteriors.laplace.dense_ggn.build``).

    Parameters
    ----------
    forward : callable
        ``forward(params, batch) -> z`` (``(z, aux)`` if ``forward_has_aux``), P scalars.
    outer_log_likelihood : callable
        ``outer_log_likelihood(z, batch) -> scalar``: log p(y | z) of the minibatch.
    init_prec : float, (D,) or (D, D) array
        Initial precision (s means s·I), typically the prior precision.
    temperature : float
        As in :func:`build_diag_fisher`.

    Returns
    -------
    Transform
        ``update(state, batch)`` adds (1/T) J_fᵀ H J_f, H = -∇²_z outer_log_likelihood
        (:func:`ppl_posteriors.linalg.ggn`: J_f (P, D), then D loss-HVPs; H never formed).

    Raises
    ------
    ConfigError
        ``temperature`` not > 0; ``init_prec`` of the wrong shape (at ``init``).
    """
    inv_t = 1.0 / _check_temperature(temperature)

    def update(state: DenseLaplaceState, batch) -> DenseLaplaceState:
        g = ggn(lambda p: forward(p, batch), lambda z: -outer_log_likelihood(z, batch),
                forward_has_aux=forward_has_aux)(state.params)
        g = g[0] if forward_has_aux else g
        return DenseLaplaceState(state.params, state.prec + inv_t * g, state.step + 1)

    return Transform(_dense_init(init_prec), update, dense_sample)


class _Family:
    """``pp.laplace.diag_fisher.build(...)``-style namespace."""

    def __init__(self, build, state, sample):
        self.build, self.State, self.sample = build, state, sample


diag_fisher = _Family(build_diag_fisher, DiagLaplaceState, diag_sample)
dense_fisher = _Family(build_dense_fisher, DenseLaplaceState, dense_sample)
diag_ggn = _Family(build_diag_ggn, DiagLaplaceState, diag_sample)
dense_ggn = _Family(build_dense_ggn, DenseLaplaceState, dense_sample)
