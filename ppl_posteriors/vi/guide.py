"""The guide protocol: a variational family as pure functions on the flat unconstrained space.

A :class:`Guide` is the *guide* axis of VI = guide × objective × estimator (DESIGN.md).
Its parameters φ are any pytree of float arrays (an optax-compatible pytree); draws
z have shape (n, D) on the flat unconstrained space of
:class:`~ppl_posteriors.density.LogDensity` (``ld.ravel`` / ``ld.unravel``).

Objectives (:mod:`.objectives`) need only log p and log q of the draws; estimators
(:mod:`.estimators`) choose where gradients flow, for which they call
``sample_and_log_prob`` (reparametrised draws z = T_φ(ε)) and ``log_prob`` (with
``stop_gradient`` on φ for sticking-the-landing and DReG, or with z held fixed for the
score-function estimator).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

__all__ = ["Guide"]


class Guide(NamedTuple):
    """A variational family q_φ on R^D.

    Attributes
    ----------
    name : str
        Short name ("meanfield", "fullrank", "lowrank", "flow:maf", ...).
    init : callable
        ``init(rng_key, loc) -> params``: parameters of a guide centred near ``loc`` (D,).
    sample_and_log_prob : callable
        ``sample_and_log_prob(rng_key, params, n) -> (z, log_q)``, z (n, D) reparametrised
        (differentiable in ``params``), log_q (n,) in nats.
    log_prob : callable or None
        ``log_prob(params, z) -> (n,)`` for z (n, D); None when q's density at a given
        point is intractable (a flow without an analytic inverse), which rules out the
        score, STL and DReG estimators.
    entropy : callable or None
        ``entropy(params) -> scalar`` H[q] in closed form (Gaussian guides); the pathwise
        ELBO then uses it instead of the Monte Carlo -E[log q] (lower variance).
    approximation : callable
        ``approximation(params) -> fitted approximation`` (a registered class of
        :mod:`ppl_posteriors.results.approximation`: ``sample_flat``, ``to_arrays``...).
    moments : callable or None
        ``moments(params) -> (mean (D,), var (D,))``: q's mean and marginal variances in
        closed form (Gaussian guides); with ``entropy`` it gives KL(q‖N(m, diag s²))
        in closed form (generalized VI, :mod:`.gvi`).
    from_approximation : callable or None
        ``from_approximation(approx) -> params`` or None if ``approx`` (a stored fitted
        approximation) is not of this guide: the inverse of ``approximation``, for
        warm starts (``init_from``).
    init_laplace : callable or None
        ``init_laplace(rng_key, mode, precision) -> params``: a guide started from the
        Laplace approximation N(mode (D,), precision⁻¹ (D, D)) (``init="laplace"``, see
        :mod:`.resume`); None: the guide is only centred at the mode.
    """

    name: str
    init: Callable[[jax.Array, jax.Array], Any]
    sample_and_log_prob: Callable[[jax.Array, Any, int], tuple[jax.Array, jax.Array]]
    log_prob: Callable[[Any, jax.Array], jax.Array] | None
    entropy: Callable[[Any], jax.Array] | None
    approximation: Callable[[Any], Any]
    moments: Callable[[Any], tuple[jax.Array, jax.Array]] | None = None
    from_approximation: Callable[[Any], Any] | None = None
    init_laplace: Callable[[jax.Array, jax.Array, jax.Array], Any] | None = None
