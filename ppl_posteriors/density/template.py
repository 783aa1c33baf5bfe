"""Models traced once, then bound to their data: :class:`ModelTemplate` and its cache.

``build_log_density(model, args, kwargs)`` splits the arguments into array
arguments and static ones (:mod:`ppl_posteriors.model.args`), traces the model
once per (model, static arguments, array shapes and dtypes, ``jacobian``, x64) --
the :class:`ModelTemplate`, kept in an in-process cache -- and binds the arrays.
Inside a jitted program the arrays are tracers, so compiled code takes the data as
arguments and is reused for new data of the same shapes.
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp

from ..model.args import ArgSpec, merge_args, split_args
from ..model.sites import SiteKind
from ..model.trace import from_unconstrained, replay, trace_model, unconstrain_values
from .log_density import LogDensity, ModelSplit, _elementwise, _scaled

__all__ = ["ModelTemplate", "build_log_density", "clear_templates", "log_density", "model_template"]

_TEMPLATES: dict = {}
_LOCK = threading.Lock()


def model_template(model, args: tuple, kwargs: dict, jacobian: bool = True, check_data: bool = True):
    """``(template, arrays)`` for ``model(*args, **kwargs)``: the cached
    :class:`ModelTemplate` (traced on a miss) and the array arguments as ``jax.Array``.
    ``check_data=False`` skips the NaN check of the observed data on a cache hit (the
    caller checks them itself).

    Raises
    ------
    ModelError, ConfigError
        From tracing (first call) and from :func:`~ppl_posteriors.model.args.split_args`;
        NaN or inf in the observed data of this call.
    """
    arrays, spec = split_args(args, kwargs)
    key = (model, spec, bool(jacobian), bool(jax.config.jax_enable_x64))
    with _LOCK:
        template = _TEMPLATES.get(key)
    if template is None:
        template = ModelTemplate(model, spec, arrays, jacobian)
        with _LOCK:
            _TEMPLATES[key] = template
    elif check_data:
        template.check_observed(arrays)
    return template, arrays


def clear_templates() -> None:
    """Forget every traced model (the next call traces again)."""
    with _LOCK:
        _TEMPLATES.clear()


class ModelTemplate:
    """A model traced once for one (model, static arguments, array shapes, jacobian).

    Holds everything about the model that does not depend on the values of its
    array arguments -- sites, layout, plates -- and turns the arrays into a
    :class:`LogDensity` with :meth:`bind`. Inside a jitted program the arrays are
    tracers, so the program takes the data as arguments (``runtime`` caches
    templates and the programs built on them).

    Attributes
    ----------
    model : callable
    spec : ArgSpec
        Static arguments and the shapes and dtypes of the array arguments.
    jacobian : bool
    trace : ModelTrace
        Sites, initial position and plates (``trace.observed`` is the data of the
        first call; use :meth:`observed` for the data of a call).
    """

    def __init__(self, model, spec: ArgSpec, arrays, jacobian: bool):
        self.model, self.spec, self.jacobian = model, spec, bool(jacobian)
        args, kwargs = merge_args(spec, arrays)
        self.trace = trace_model(model, args, kwargs)
        self.sites = self.trace.sites
        latent = [s for s in self.sites if s.kind is SiteKind.LATENT]
        self.layout = tuple(sorted((s.name, s.unconstrained_shape) for s in latent))
        self.observed_names = tuple(s.name for s in self.sites if s.kind is SiteKind.OBSERVED)
        self.subsample_plates = {n: sz for n, sz in self.trace.plates.items() if sz[0] != sz[1]}
        self._observed_fn = jax.jit(self._observed)
        try:  # the first trace with the arrays as tracers: a model that needs their values fails here
            self._observed_fn.lower(tuple(arrays))
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                jax.errors.TracerIntegerConversionError, jax.errors.TracerBoolConversionError) as e:
            from .._errors import ModelError

            names = ", ".join(spec.names) or "none"
            raise ModelError(
                f"the model {getattr(model, '__name__', model)!r} needs the values of an array "
                f"argument (array arguments: {names}), but compiled programs take arrays as "
                f"jit arguments: {type(e).__name__}. Use jax.numpy instead of numpy on them, or "
                "wrap an argument the model turns into Python values (sizes, indices it counts) "
                "in pp.static(...), which bakes it into the program."
            ) from e

    def _observed(self, arrays):
        args, kwargs = merge_args(self.spec, arrays)
        full = {n: size for n, (size, _) in self.subsample_plates.items()}
        recs = replay(self.model, args, kwargs, from_unconstrained(self.trace.init_position), full_plates=full)
        return {n: recs[n].value for n in self.observed_names}, {n: recs[n].scale for n in self.observed_names}

    def check_observed(self, arrays) -> None:
        """Raise ModelError if the observed data of these arrays have NaN or inf."""
        import numpy as np

        from .._errors import ModelError

        for name, value in self.observed(arrays).items():
            arr = np.asarray(value)
            if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
                bad = int(arr.size - np.isfinite(arr).sum())
                raise ModelError(
                    f"observed site {name!r} has {bad} NaN or inf value(s) in its data. "
                    "Drop those rows, impute them as latent sites, or mask them with "
                    "numpyro.handlers.mask(mask=...) and finite placeholder values."
                )

    def observed(self, arrays) -> dict[str, jax.Array]:
        """``{observed site: data}`` of every observed site for these array arguments
        (all items of subsampled plates); compiled once per template."""
        return self._observed_fn(tuple(arrays))[0]

    def bind(self, arrays, *, rng_key=None, full_data: bool = False, data_scale=None) -> LogDensity:
        """The :class:`LogDensity` of the model with these array arguments.

        ``arrays`` are concrete arrays or tracers (inside a jitted program).
        ``rng_key`` draws the indices of subsampled plates (``numpyro.plate(...,
        subsample_size=B)``); the likelihood of those plates is then scaled by N/B,
        an unbiased estimate of the full-data log density. ``full_data=True`` uses
        every item of every subsampled plate instead (for results and diagnostics).
        ``data_scale=(plate, N)`` says that the arrays are one batch of a data set of N
        items along ``plate`` (:class:`~ppl_posteriors.Batches`): the observed and factor
        sites inside that plate are scaled by N / B, B the plate's size in this batch.
        """
        full = {n: size for n, (size, _) in self.subsample_plates.items()} if full_data else None
        return _bind(self, tuple(arrays), rng_key, full, data_scale)


def _batch_factors(template: ModelTemplate, data_scale) -> dict[str, float]:
    """``{site: N / B}`` for the observed and factor sites inside the batch plate."""
    if data_scale is None:
        return {}
    plate, num_data = data_scale
    factor = num_data / template.trace.plates[plate][0]
    kinds = (SiteKind.OBSERVED, SiteKind.FACTOR)
    return {s.name: factor for s in template.sites if s.kind in kinds and plate in s.plates}


def _times(scale, factor):
    return factor if scale is None else scale * factor


def _bind(template: ModelTemplate, arrays, rng_key, full_plates, data_scale=None) -> LogDensity:
    model, jacobian, observed_names = template.model, template.jacobian, template.observed_names
    args, kwargs = merge_args(template.spec, arrays)
    factors = _batch_factors(template, data_scale)

    def run(position, key=rng_key):
        recs = replay(model, args, kwargs, from_unconstrained(position), rng_key=key, full_plates=full_plates)
        for name, factor in factors.items():
            recs[name] = recs[name]._replace(scale=_times(recs[name].scale, factor))
        return recs

    def terms(recs, with_jacobian, kinds=(SiteKind.LATENT, SiteKind.OBSERVED, SiteKind.FACTOR)):
        out = {}
        for name, rec in recs.items():
            if rec.kind not in kinds:
                continue
            term = _scaled(jnp.sum(rec.fn.log_prob(rec.value)), rec.scale)
            if with_jacobian and rec.kind is SiteKind.LATENT:
                term = term + _scaled(rec.log_det, rec.scale)
            out[name] = term
        return out

    def total(d):
        return sum(d.values(), jnp.zeros((), jnp.result_type(float)))

    def logdensity_fn(position):
        return total(terms(run(position), jacobian))

    def posterior_logdensity_fn(position):
        return total(terms(run(position), True))

    def minibatch_logdensity_fn(position, key):
        return total(terms(run(position, key), jacobian))

    def log_prior(position):
        return total(terms(run(position), jacobian, (SiteKind.LATENT, SiteKind.FACTOR)))

    def observed_dists(position):
        recs = run(position)
        return {name: recs[name].fn for name in observed_names}

    def constrain(position):
        return {
            name: rec.value
            for name, rec in run(position).items()
            if rec.kind in (SiteKind.LATENT, SiteKind.DETERMINISTIC)
        }

    def site_terms(position):
        return terms(run(position), jacobian)

    def unconstrain(values):
        return unconstrain_values(model, args, kwargs, values, full_plates=full_plates)

    def pointwise_loglik(position):
        recs = run(position)
        return {n: _scaled(_elementwise(recs[n].fn, recs[n].value), recs[n].scale) for n in observed_names}

    observed, scales = template._observed_fn(arrays)  # compiled once; inlined inside a trace
    scales = {n: _times(v, factors[n]) if n in factors else v for n, v in scales.items()}
    split = ModelSplit(
        observed_dists=observed_dists,
        log_prior=log_prior,
        observed=observed,
        scales=scales,
    )
    return LogDensity(
        logdensity_fn=logdensity_fn,
        posterior_logdensity_fn=posterior_logdensity_fn,
        init_position=template.trace.init_position,
        constrain=constrain,
        unconstrain=unconstrain,
        pointwise_loglik=pointwise_loglik,
        split=split,
        sites=template.sites,
        layout=template.layout,
        jacobian=jacobian,
        site_terms_fn=site_terms,
        minibatch_logdensity_fn=minibatch_logdensity_fn,
        subsample_plates=template.subsample_plates,
    )


def build_log_density(model, args: tuple = (), kwargs: dict | None = None, *, jacobian: bool = True) -> LogDensity:
    """Trace ``model(*args, **kwargs)`` (once per model, static arguments, shapes and
    ``jacobian``; see :mod:`ppl_posteriors.runtime`) and bind its data.

    Raises
    ------
    ModelError, ConfigError
        See :func:`ppl_posteriors.model.trace.trace_model` and
        :func:`ppl_posteriors.runtime.args.split_args`.
    """
    template, arrays = model_template(model, tuple(args), dict(kwargs or {}), jacobian)
    return template.bind(arrays)


def log_density(model, *args, jacobian: bool = True, **kwargs) -> LogDensity:
    """The :class:`LogDensity` of ``model(*args, **kwargs)``, ready for BlackJAX or optax.

    Parameters
    ----------
    model : callable
        A NumPyro model (decorated with ``@pp.model`` or not).
    *args, **kwargs
        The model's own arguments, as for ``numpyro.infer.MCMC.run``.
    jacobian : bool, default True
        Include log |det ∂θ/∂z| of the transforms to the unconstrained space
        (reserved keyword: a model argument called ``jacobian`` cannot be passed here).

    Returns
    -------
    LogDensity

    Raises
    ------
    ModelError
        Structural problems of the model (discrete latent sites, NaN in observed
        data, unsupported supports, a model that raises), naming the site.

    Examples
    --------
    >>> ld = pp.log_density(model, x, y=y)
    >>> nuts = blackjax.nuts(ld.logdensity_fn, step_size=0.1, inverse_mass_matrix=jnp.ones(ld.dim))
    """
    return build_log_density(model, args, kwargs, jacobian=jacobian)
