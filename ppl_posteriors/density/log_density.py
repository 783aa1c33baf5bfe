"""The log density of a NumPyro model on the unconstrained space, as pure JAX functions.

For latent sites θ = T(z) with T the bijection onto each site's support,

    logdensity_fn(z) = Σ_latent log p(θ_s | ·) + Σ_factor f + Σ_observed log p(y_s | ·)
                       + [jacobian] Σ_latent log |det ∂T(z_s)/∂z_s|,

each term multiplied by the site's ``numpyro.handlers.scale``. This is the same
target as NumPyro's ``potential_energy`` (negated) and Stan's ``log_prob`` with
``jacobian=True``; with ``jacobian=False`` it is the log density of θ evaluated
at T(z), whose maximiser is the mode in the constrained space.

Positions are dicts ``{latent site: array of its unconstrained shape}``, so they
plug straight into BlackJAX and optax; :meth:`LogDensity.ravel` and
:meth:`LogDensity.unravel` give the flat-vector view (sites in sorted order, as
``jax.flatten_util.ravel_pytree`` orders a dict).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import Distribution, Independent

from ..model.sites import Site

__all__ = ["LogDensity", "ModelSplit", "Position"]

Position = dict[str, jax.Array]


class ModelSplit(NamedTuple):
    """The log density split into prior and likelihood, for GGN and Fisher curvature.

    ``logdensity_fn(z) == log_prior(z) + Σ_s scale_s · Σ observed_dists(z)[s].log_prob(observed[s])``

    Attributes
    ----------
    observed_dists : callable
        position -> ``{observed site: NumPyro Distribution}``; distributions are
        pytrees, so ``jax.linearize`` of this map gives the Jacobian J of the
        likelihood's parameters in z.
    log_prior : callable
        position -> scalar: latent sites' log densities, factor sites and the
        log-Jacobian (if ``jacobian=True``).
    observed : dict
        ``{observed site: data array}``.
    scales : dict
        ``{observed site: scale or None}`` from ``numpyro.handlers.scale``.
    """

    observed_dists: Callable[[Position], dict[str, Distribution]]
    log_prior: Callable[[Position], jax.Array]
    observed: dict[str, jax.Array]
    scales: dict[str, Any]

    def log_likelihood(self, position: Position) -> jax.Array:
        """Σ over observed sites of scale · log p(y | z): a scalar."""
        dists = self.observed_dists(position)
        total = 0.0
        for name, d in dists.items():
            lp = jnp.sum(d.log_prob(self.observed[name]))
            scale = self.scales[name]
            total = total + (lp if scale is None else scale * lp)
        return total


class LogDensity(NamedTuple):
    """Pure functions of the unconstrained position derived once from a model's trace.

    Attributes
    ----------
    logdensity_fn : callable
        position -> scalar log density (see module docstring), differentiable.
    posterior_logdensity_fn : callable
        The unnormalised posterior density of the unconstrained position, Jacobian
        always included (equal to ``logdensity_fn`` when ``jacobian=True``); the
        target of importance weights and of MCMC.
    init_position : dict
        The unconstrained origin: zeros of each latent site's unconstrained shape.
    constrain : callable
        position -> ``{latent and deterministic site: constrained value}``.
    unconstrain : callable
        ``{latent site: constrained value}`` -> position.
    pointwise_loglik : callable
        position -> ``{observed site: log p(y_i | z)}``, one value per datum: the
        site's ``Independent`` wrappers are removed, so a ``Normal(...).to_event(1)``
        site of shape (N,) gives N values.
    split : ModelSplit
        Prior / likelihood split (for GGN and Fisher curvature).
    sites : tuple of Site
        Every site of the model, in program order.
    layout : tuple of (str, tuple)
        ``(site, unconstrained shape)`` in the order of the flat vector.
    jacobian : bool
        Whether ``logdensity_fn`` includes the log-Jacobian of the transforms.
    site_terms_fn : callable or None
        position -> ``{site: scalar term}``; use :meth:`site_terms`.
    minibatch_logdensity_fn : callable
        (position, rng_key) -> scalar: ``logdensity_fn`` with the indices of
        subsampled plates drawn from ``rng_key`` and their likelihood scaled by N/B
        (an unbiased estimate of ``logdensity_fn`` on the full data). Equal to
        ``logdensity_fn`` for a model without subsampled plates.
    subsample_plates : dict
        ``{plate: (size N, subsample size B)}`` of the plates that subsample.
    """

    logdensity_fn: Callable[[Position], jax.Array]
    posterior_logdensity_fn: Callable[[Position], jax.Array]
    init_position: Position
    constrain: Callable[[Position], dict[str, jax.Array]]
    unconstrain: Callable[[dict[str, jax.Array]], Position]
    pointwise_loglik: Callable[[Position], dict[str, jax.Array]]
    split: ModelSplit
    sites: tuple[Site, ...]
    layout: tuple[tuple[str, tuple[int, ...]], ...]
    jacobian: bool
    site_terms_fn: Callable[[Position], dict[str, jax.Array]] | None = None
    minibatch_logdensity_fn: Callable[[Position, jax.Array], jax.Array] | None = None
    subsample_plates: dict[str, tuple[int, int]] | None = None

    @property
    def dim(self) -> int:
        """Dimension D of the unconstrained space."""
        return sum(math.prod(shape) for _, shape in self.layout)

    def ravel(self, position: Position) -> jax.Array:
        """Position (leaves with any leading batch axes) -> array (..., D)."""
        parts = []
        for name, shape in self.layout:
            leaf = jnp.asarray(position[name])
            batch = leaf.shape[: leaf.ndim - len(shape)]
            parts.append(leaf.reshape(batch + (-1,)))
        return jnp.concatenate(parts, axis=-1)

    def unravel(self, x: jax.Array) -> Position:
        """Array (..., D) -> position with the same leading axes."""
        x = jnp.asarray(x)
        batch, out, i = x.shape[:-1], {}, 0
        for name, shape in self.layout:
            n = math.prod(shape)
            out[name] = x[..., i : i + n].reshape(batch + shape)
            i += n
        return out

    def flat_logdensity_fn(self, x: jax.Array) -> jax.Array:
        """``logdensity_fn`` on the flat vector: (D,) -> scalar."""
        return self.logdensity_fn(self.unravel(x))

    def param_names(self) -> list[str]:
        """Labels of the flat vector's entries: ``"mu"``, ``"theta[3]"``, ``"L[1,0]"``."""
        names = []
        for name, shape in self.layout:
            if shape == ():
                names.append(name)
            else:
                for idx in np.ndindex(*shape):
                    names.append(f"{name}[{','.join(map(str, idx))}]")
        return names

    def site_terms(self, position: Position) -> dict[str, jax.Array]:
        """Each site's scalar contribution to ``logdensity_fn(position)``.

        ``{site: term}`` for every latent, observed and factor site, in program
        order: the site's summed log density times its ``numpyro.handlers.scale``,
        plus (latent sites, when ``jacobian=True``) its scaled log-Jacobian, so the
        terms sum to ``logdensity_fn(position)``. Pure and jittable; used to name the
        site whose term is not finite.
        """
        if self.site_terms_fn is None:
            raise ValueError("this LogDensity was built without site_terms_fn; use build_log_density")
        return self.site_terms_fn(position)

    def require_full_data(self, method: str) -> None:
        """Raise ModelError if the model subsamples a plate, for a ``method`` that
        needs the full data (a minibatch estimate of the density would bias it)."""
        from .._errors import ModelError

        for name, (size, sub) in (self.subsample_plates or {}).items():
            raise ModelError(
                f"plate {name!r} subsamples {sub} of {size} items, but {method} needs the full "
                "data (a minibatch estimate of the density biases its result). Remove "
                "subsample_size from the plate, or use a method that takes minibatches "
                "(pp.MeanFieldVI)."
            )

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)


def _elementwise(fn: Distribution, value) -> jax.Array:
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn.log_prob(value)


def _scaled(lp, scale):
    return lp if scale is None else scale * lp
