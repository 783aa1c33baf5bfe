"""Run a NumPyro model under effect handlers: the only module that reads NumPyro messages.

Two entry points:

* :func:`trace_model` runs the model once, checks it and returns typed
  :class:`~ppl_posteriors.model.sites.Site` records (structural errors raise
  :class:`~ppl_posteriors.ModelError` here, naming the site and the fix);
* :func:`replay` runs the model with every latent site substituted, either from
  an unconstrained position (the transform to the support is taken at run time
  from the site's own distribution, so supports that depend on other parameters
  are handled, and the log-Jacobian is taken after the run from each site's final,
  scan-stacked message, so every step of a ``numpyro.contrib.control_flow.scan``
  counts, as in NumPyro's ``potential_energy``) or from constrained values. It
  returns one :class:`SiteRecord` per site; :mod:`ppl_posteriors.density` builds
  every pure function of the position on top of it. No handler writes to Python
  state from inside the model, so nothing leaks out of a ``lax.scan`` body.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import Distribution
from numpyro.distributions.distribution import Unit
from numpyro.distributions.transforms import biject_to
from numpyro.distributions.util import sum_rightmost

from .._errors import ConfigError, ModelError
from .decorator import model_meta
from .sites import Site, SiteKind

__all__ = [
    "ModelTrace",
    "SiteRecord",
    "from_constrained",
    "from_unconstrained",
    "replay",
    "trace_model",
    "unconstrain_values",
]


class SiteRecord(NamedTuple):
    """One site of one run of the model.

    ``value`` is constrained; ``fn`` is the site's distribution (None for a
    deterministic site); ``scale`` is the log-density scale set by
    ``numpyro.handlers.scale`` (None if unscaled); ``log_det`` is the scalar
    log |det d value / d z| of a latent site's transform (0 otherwise).
    """

    kind: SiteKind
    value: Any
    fn: Distribution | None
    scale: Any
    log_det: Any


class ModelTrace(NamedTuple):
    """What :func:`trace_model` learns from one run of the model.

    ``sites``: every site in program order. ``init_position``: the unconstrained
    origin, ``{latent site: zeros(unconstrained_shape)}``. ``observed``: the
    observed data as numpy arrays. ``plates``: ``{plate: (size, subsample size)}``
    for every plate (subsample size equals size unless the plate subsamples).
    """

    sites: tuple[Site, ...]
    init_position: dict[str, jax.Array]
    observed: dict[str, np.ndarray]
    plates: dict[str, tuple[int, int]]


class LatentHandler(NamedTuple):
    """How :func:`replay` sets latent sites.

    ``value(name, fn, index)`` returns the constrained value of latent site ``name``
    with distribution ``fn`` (inside ``numpyro.contrib.control_flow.scan``, ``fn`` is
    one step's distribution and ``index`` the traced step number, else None).
    ``position`` is the unconstrained position the values come from (None when the
    values are given constrained); with it, :func:`replay` takes each site's
    log-Jacobian after the run, from the whole (scan-stacked) site.
    """

    value: Callable[[str, Distribution, Any], Any]
    position: dict[str, Any] | None = None


def _transform(name: str, fn: Distribution):
    """The bijection from the unconstrained space onto the support of latent site ``name``."""
    support = fn.support
    try:
        discrete = bool(support.is_discrete)
    except NotImplementedError:  # e.g. constraints.dependent: decided below by biject_to
        discrete = False
    if discrete:
        base = _base_dist(fn)
        wrapped = "" if base is fn else f" (wrapped in {_wrappers(fn)})"
        raise ModelError(
            f"latent site {name!r} has the discrete distribution {type(base).__name__}{wrapped}, "
            f"support {support}; discrete latent sites need enumeration, which is not "
            "supported yet. Marginalise it out by hand (e.g. a mixture with "
            "dist.MixtureSameFamily or a numpyro.factor with logsumexp), or observe it."
        )
    try:
        return biject_to(support)
    except NotImplementedError as e:
        raise ModelError(
            f"latent site {name!r}: no transform to the unconstrained space is known for "
            f"its support {support} ({type(fn).__name__}). Use a distribution with a "
            "standard support (real, positive, interval, simplex, ordered, ...) or "
            "reparameterise the site as a deterministic function of such a site."
        ) from e


def _base_dist(fn: Distribution) -> Distribution:
    """The distribution inside Masked / Independent / Expanded wrappers."""
    while hasattr(fn, "base_dist") and not isinstance(fn, Unit):
        fn = fn.base_dist
    return fn


def _wrappers(fn: Distribution) -> str:
    names = []
    while hasattr(fn, "base_dist") and not isinstance(fn, Unit):
        names.append(type(fn).__name__)
        fn = fn.base_dist
    return " > ".join(names)


def _log_det(t, z, x, fn: Distribution):
    """Scalar log |det J| of ``t`` at ``z`` for a site with distribution ``fn``."""
    ld = t.log_abs_det_jacobian(z, x)
    ld = sum_rightmost(ld, jnp.ndim(ld) - jnp.ndim(x) + len(fn.event_shape))
    return jnp.sum(ld)


def _step_slice(name, fn, t, z, index):
    """Inside a scan body, the step ``index`` of the stacked unconstrained value ``z``."""
    if index is None:
        return z
    expected = len(fn.shape()) - (t.codomain.event_dim - t.domain.event_dim)
    if jnp.ndim(z) == expected + 1:
        return z[index]
    if jnp.ndim(z) == expected:
        return z
    raise ModelError(
        f"latent site {name!r} inside numpyro.contrib.control_flow.scan: its unconstrained "
        f"value has {jnp.ndim(z)} axes where one step needs {expected} (or {expected + 1} "
        "with the time axis). Nested scans and scans over latent sites whose shape changes "
        "between steps are not supported; write the inner loop with a plate or jnp ops."
    )


def from_unconstrained(position: dict[str, Any]) -> LatentHandler:
    """Latent handler that maps ``position[name]`` through the site's support transform."""

    def value(name, fn, index):
        t = _transform(name, fn)
        if name not in position:
            raise ModelError(
                f"latent site {name!r} has no value in the position (sites: {sorted(position)}); "
                "the model's latent sites changed between calls. Sites must not depend on "
                "the values of other sites (no data-dependent control flow in Python)."
            )
        return t(_step_slice(name, fn, t, position[name], index))

    return LatentHandler(value, position)


def from_constrained(values: dict[str, Any]) -> LatentHandler:
    """Latent handler that keeps ``values[name]`` (scan steps are sliced by NumPyro)."""

    def value(name, fn, index):
        return values[name]

    return LatentHandler(value, None)


def _substitute_fn(handler: LatentHandler):
    def sub(msg):
        if msg["type"] != "sample" or msg["is_observed"]:
            return None
        index = msg.get("infer", {}).get("_scan_current_index")
        return handler.value(msg["name"], msg["fn"], index)

    return sub


def _run(model, args, kwargs, handler: LatentHandler, rng_key=None, full_plates=None):
    if full_plates:  # every index of a subsampled plate: the full data, plate scale 1
        model = handlers.substitute(model, data={n: jnp.arange(size) for n, size in full_plates.items()})
    seeded = handlers.seed(model, rng_seed=0 if rng_key is None else rng_key)
    substituted = handlers.substitute(seeded, substitute_fn=_substitute_fn(handler))
    with warnings.catch_warnings():
        if full_plates:  # NumPyro warns that the indices differ from subsample_size: intended
            warnings.filterwarnings("ignore", "subsample_size does not match", UserWarning)
        return handlers.trace(substituted).get_trace(*args, **kwargs)


def _kind(msg) -> SiteKind | None:
    if msg["type"] == "deterministic":
        return SiteKind.DETERMINISTIC
    if msg["type"] != "sample":
        return None
    if not msg["is_observed"]:
        return SiteKind.LATENT
    return SiteKind.FACTOR if isinstance(_base_dist(msg["fn"]), Unit) else SiteKind.OBSERVED


def _site_log_det(name, msg, z):
    """log |det ∂x/∂z| of a whole latent site (every step of a scan) from its final message."""
    fn, x = msg["fn"], msg["value"]
    t = _transform(name, fn)
    z = jnp.reshape(z, t.inverse_shape(jnp.shape(x)))  # scan may insert singleton batch axes
    return _log_det(t, z, x, fn)


def replay(model, args, kwargs, handler: LatentHandler, rng_key=None, full_plates=None) -> dict[str, SiteRecord]:
    """Run the model with every latent site's value given by ``handler``.

    Pure in the values the handler returns, so it traces under ``jit``, ``grad``
    and ``vmap``; latent sites inside ``numpyro.contrib.control_flow.scan`` are
    set step by step and come back stacked along the time axis, and their
    log-Jacobian sums over every step. ``rng_key`` seeds the model (it draws the
    indices of subsampled plates); ``full_plates`` (``{plate: size}``) replaces
    those indices by every index, so the model sees the full data. Returns
    ``{site name: SiteRecord}`` in program order.
    """
    tr = _run(model, args, kwargs, handler, rng_key, full_plates)
    out = {}
    for name, msg in tr.items():
        kind = _kind(msg)
        if kind is None:
            continue
        fn = None if kind is SiteKind.DETERMINISTIC else msg["fn"]
        log_det = 0.0
        if kind is SiteKind.LATENT and handler.position is not None:
            log_det = _site_log_det(name, msg, handler.position[name])
        out[name] = SiteRecord(kind, msg["value"], fn, msg.get("scale"), log_det)
    return out


def unconstrain_values(model, args, kwargs, values: dict[str, Any], full_plates=None) -> dict[str, Any]:
    """``{latent site: constrained value}`` -> the unconstrained position (scan-stacked sites too)."""
    tr = _run(model, args, kwargs, from_constrained(values), full_plates=full_plates)
    return {
        name: _transform(name, msg["fn"]).inv(msg["value"])
        for name, msg in tr.items()
        if _kind(msg) is SiteKind.LATENT
    }


def _dims(name, shape, event_dim, frames, override) -> tuple[str, ...]:
    dims = [f"{name}_dim_{i}" for i in range(len(shape))]
    batch_ndim = len(shape) - event_dim
    for f in frames:
        ax = batch_ndim + f.dim
        if 0 <= ax < batch_ndim:
            dims[ax] = f.name
    if name in override:
        want = override[name]
        if len(want) != len(shape):
            raise ConfigError(
                f"@pp.model(dims={{{name!r}: {want}}}) names {len(want)} dimension(s) but "
                f"site {name!r} has shape {tuple(shape)} ({len(shape)} axes); give one name per axis."
            )
        dims = list(want)
    return tuple(dims)


def _check_coords(name, shape, dims, coords) -> None:
    for axis, dim in enumerate(dims):
        if dim in coords and len(coords[dim]) != shape[axis]:
            raise ConfigError(
                f"@pp.model(coords={{{dim!r}: ...}}) gives {len(coords[dim])} labels but site "
                f"{name!r} has {shape[axis]} entries along {dim!r}; give one label per entry."
            )


def _zeros(name, fn, index):
    t = _transform(name, fn)
    return t(jnp.zeros(t.inverse_shape(fn.shape()), dtype=jnp.result_type(float)))


def trace_model(model, args: tuple, kwargs: dict) -> ModelTrace:
    """Run ``model(*args, **kwargs)`` once and return its typed sites.

    Latent sites are set to the image of the unconstrained origin (zeros), so no
    site is sampled and improper priors (``dist.ImproperUniform``) work.

    Raises
    ------
    ModelError
        A discrete latent site; a latent site whose support has no bijection; NaN
        or inf in observed data; a ``numpyro.param`` site; a latent site inside a
        subsampled plate; a model that raises (the original exception is chained).
    ConfigError
        ``@pp.model(dims=...)`` or ``coords=...`` that do not fit a site's shape.
    """
    if not callable(model):
        raise ModelError(f"the model must be a callable NumPyro model function, got {type(model).__name__}")
    name = getattr(model, "__name__", repr(model))
    try:
        tr = _run(model, args, kwargs, LatentHandler(_zeros))
    except (ModelError, ConfigError):
        raise
    except Exception as e:
        raise ModelError(
            f"the model {name!r} raised {type(e).__name__} while it was traced with the "
            f"given arguments: {e}. Check that the arguments match the model's signature "
            "(infer() passes *args and **kwargs to the model unchanged) and that the model "
            "runs on its own, e.g. with numpyro.handlers.seed(model, 0)(*args, **kwargs)."
        ) from e

    meta = model_meta(model)
    sites, init, observed, plates = [], {}, {}, {}
    for site_name, msg in tr.items():
        if msg["type"] == "param":
            raise ModelError(
                f"site {site_name!r} is a numpyro.param; a Bayesian model has no free "
                "parameters. Give it a prior with numpyro.sample, or pass it as data."
            )
        if msg["type"] == "plate":
            size, subsample_size = msg["args"][:2]
            plates[site_name] = (int(size), int(size if subsample_size is None else subsample_size))
            continue
        kind = _kind(msg)
        if kind is None:
            continue
        value = msg["value"]
        shape = tuple(jnp.shape(value))
        frames = sorted(msg.get("cond_indep_stack", []), key=lambda f: f.dim)
        plates_of = tuple(f.name for f in frames)
        fn = msg.get("fn")
        event_dim = len(fn.event_shape) if kind in (SiteKind.LATENT, SiteKind.OBSERVED) else 0
        dims = _dims(site_name, shape, event_dim, frames, meta.dims)
        support, ushape = None, ()
        if kind is SiteKind.LATENT:
            sub = [p for p in plates_of if plates.get(p, (0, 0))[0] != plates.get(p, (0, 0))[1]]
            if sub:
                raise ModelError(
                    f"latent site {site_name!r} lies inside the subsampled plate {sub[0]!r}: a "
                    "local latent variable per datum cannot be learnt from minibatches by these "
                    "methods. Remove subsample_size from the plate, or make the site global."
                )
            support = fn.support
            ushape = tuple(_transform(site_name, fn).inverse_shape(fn.shape()))
            init[site_name] = jnp.zeros(ushape, dtype=jnp.result_type(float))
        elif kind is SiteKind.OBSERVED:
            arr = np.asarray(value)
            if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
                bad = int(np.size(arr) - np.isfinite(arr).sum())
                raise ModelError(
                    f"observed site {site_name!r} has {bad} NaN or inf value(s) in its data. "
                    "Drop those rows, impute them as latent sites, or mask them with "
                    "numpyro.handlers.mask(mask=...) and finite placeholder values."
                )
            observed[site_name] = arr
        _check_coords(site_name, shape, dims, meta.coords)
        sites.append(Site(site_name, kind, shape, event_dim, support, plates_of, dims, ushape))
    if not any(s.kind is SiteKind.LATENT for s in sites):
        raise ModelError(
            f"the model {name!r} has no latent sample site, so there is no posterior to "
            "approximate. Did you pass the observed data as a latent (obs=None)?"
        )
    return ModelTrace(tuple(sites), init, observed, plates)
