"""Storing a fitted approximation in a result (InferenceData / DataTree) and drawing from it again.

An approximation (Laplace's Gaussian, VI's guide) is a NamedTuple class with

* ``kind`` (class attribute): the name stored in ``idata.approximation.attrs["kind"]``;
* ``to_arrays() -> {name: (dims, array)}`` with dims drawn from ``"param"``,
  ``"param_"`` (the second axis of a D x D matrix) and ``"step"``;
* ``from_arrays({name: array}) -> approximation`` (classmethod);
* ``sample_flat(rng_key, num_samples) -> array (num_samples, D)`` on the
  unconstrained space.

``register_approximation`` makes a class reloadable by ``sample_approximation``.
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from .._errors import ConfigError
from . import compat

__all__ = ["approximation_to_dataset", "load_approximation", "register_approximation"]

_KINDS: dict[str, type] = {}


def register_approximation(cls: type) -> type:
    """Class decorator: make ``cls`` reloadable from a stored result by its ``kind``."""
    _KINDS[cls.kind] = cls
    return cls


def approximation_to_dataset(approx, log_density) -> xr.Dataset:
    """The ``approximation`` group: the approximation's arrays, flat-vector labels and layout."""
    data_vars = {name: (dims, np.asarray(arr)) for name, (dims, arr) in approx.to_arrays().items()}
    names = log_density.param_names()
    coords = {"param": names, "param_": names}
    used = {d for dims, _ in data_vars.values() for d in dims}
    coords = {k: v for k, v in coords.items() if k in used}
    attrs = {
        "kind": approx.kind,
        "layout": json.dumps([[n, list(s)] for n, s in log_density.layout]),
        "jacobian": int(log_density.jacobian),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def load_approximation(idata):
    """``(approximation, layout)`` stored in ``idata`` by a Laplace or VI method.

    Raises
    ------
    ConfigError
        If ``idata`` has no ``approximation`` group (e.g. it came from NUTS) or its
        kind is unknown.
    """
    if "approximation" not in compat.group_names(idata):
        raise ConfigError(
            "this result has no 'approximation' group; only Laplace and VI results "
            "store one (MCMC draws cannot be re-sampled this way)"
        )
    ds = compat.get_group(idata, "approximation")
    kind = str(ds.attrs.get("kind"))
    cls = _KINDS.get(kind)
    if cls is None:
        raise ConfigError(f"unknown approximation kind {kind!r}; known kinds: {sorted(_KINDS)}")
    approx = cls.from_arrays({k: np.asarray(v.values) for k, v in ds.data_vars.items()})
    layout = tuple((n, tuple(s)) for n, s in json.loads(ds.attrs["layout"]))
    return approx, layout
