"""``@pp.model``: attach ArviZ metadata to a NumPyro model without changing it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

__all__ = ["ModelMeta", "model", "model_meta"]


class ModelMeta(NamedTuple):
    """Metadata of a model: ``coords`` (dim name -> labels) and ``dims`` (site -> dim names)."""

    coords: dict[str, list]
    dims: dict[str, list[str]]


_EMPTY = ModelMeta({}, {})


def model(
    fn: Callable | None = None,
    *,
    coords: Mapping[str, Sequence[Any]] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
):
    """Mark a NumPyro model function and attach ArviZ metadata.

    The function stays a plain NumPyro model: calling it, or handing it to
    ``numpyro.infer.MCMC``, behaves exactly as before. The metadata only names the
    axes of the results.

    Parameters
    ----------
    fn : callable, optional
        The model. ``@pp.model`` and ``@pp.model(coords=...)`` both work.
    coords : mapping of str to sequence, optional
        Labels for a dimension, e.g. ``{"school": ["A", "B", ...]}``. Plate names
        are dimension names, so labels for a plate go here under the plate's name.
    dims : mapping of str to sequence of str, optional
        Dimension names for a site's axes, overriding the names taken from plates,
        e.g. ``{"theta": ["school"]}`` for a site drawn with ``.expand([8])``.

    Returns
    -------
    callable
        A wrapper with the same signature and an attribute ``__pp_meta__``.

    Raises
    ------
    ppl_posteriors.ConfigError
        If ``coords`` or ``dims`` have the wrong type.
    """
    from .._errors import ConfigError

    meta_coords = {str(k): list(v) for k, v in (coords or {}).items()}
    meta_dims = {}
    for k, v in (dims or {}).items():
        if isinstance(v, str):
            raise ConfigError(
                f"dims[{k!r}] must be a sequence of dimension names, got the string {v!r}; "
                f"write dims={{{k!r}: [{v!r}]}}"
            )
        meta_dims[str(k)] = [str(d) for d in v]
    meta = ModelMeta(meta_coords, meta_dims)

    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            return f(*args, **kwargs)

        wrapper.__pp_meta__ = meta
        return wrapper

    return decorate(fn) if fn is not None else decorate


def model_meta(fn: Callable) -> ModelMeta:
    """The metadata attached by :func:`model`, or empty metadata for a plain function."""
    return getattr(fn, "__pp_meta__", _EMPTY)
