"""Typed records of a model's sites, made once in :mod:`ppl_posteriors.model.trace`."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

__all__ = ["Site", "SiteKind"]


class SiteKind(enum.Enum):
    """What a NumPyro site is to the posterior: a latent parameter, observed data, a
    deterministic function of the latents, or an extra log-density term (factor)."""

    LATENT = "latent"  # unobserved sample site: a parameter of the posterior
    OBSERVED = "observed"  # sample site with obs=: contributes the likelihood
    DETERMINISTIC = "deterministic"  # numpyro.deterministic: recomputed for every draw
    FACTOR = "factor"  # numpyro.factor: an extra log-density term


class Site(NamedTuple):
    """One site of a traced model.

    Attributes
    ----------
    name : str
        The NumPyro site name.
    kind : SiteKind
    shape : tuple[int, ...]
        Shape of the value, batch + event (constrained space).
    event_dim : int
        Number of trailing event dimensions of the value.
    support : numpyro constraint or None
        Support of a LATENT site (None otherwise).
    plates : tuple[str, ...]
        Names of the enclosing plates, outermost first.
    dims : tuple[str, ...]
        One name per axis of the value: the plate name where a plate indexes that
        axis, else ``"{name}_dim_{i}"``, unless ``@pp.model(dims=...)`` overrides it.
        These become ArviZ dims.
    unconstrained_shape : tuple[int, ...]
        Shape of a LATENT site on the unconstrained space (``()`` for other kinds).
    """

    name: str
    kind: SiteKind
    shape: tuple[int, ...]
    event_dim: int
    support: Any
    plates: tuple[str, ...]
    dims: tuple[str, ...]
    unconstrained_shape: tuple[int, ...] = ()
