"""The front door: ``infer`` and ``log_density``."""

from __future__ import annotations

import time
import warnings

from ._errors import ConfigError, NumericalError, NumericalWarning, Status
from ._progress import as_key
from .density import log_density, model_template
from .registry import _REGISTRY, resolve_method
from .results.arviz import to_inference_data
from .runtime import Runtime
from .runtime.batches import BatchStream
from .runtime.programs import constrained_draws

__all__ = ["infer", "log_density"]


def infer(model, *args, method, rng_key=None, progress: bool = True, mesh=None, batches=None, **kwargs):
    """Approximate the posterior of a NumPyro model with any registered method.

    Parameters
    ----------
    model : callable
        A NumPyro model function (``@pp.model`` optional).
    *args, **kwargs
        The model's own arguments, exactly as for ``numpyro.infer.MCMC.run``.
        The keywords ``method``, ``rng_key``, ``progress`` and ``mesh`` belong to
        ``infer`` and are never passed to the model. Array leaves (numpy / JAX
        arrays, numpy scalars) are arguments of the compiled program: new values of
        the same shapes reuse it. Other leaves (Python numbers, strings, None,
        functions, ``pp.static(x)``) are static: part of the compile-cache key.
    method : str or MethodConfig
        A registered name (``pp.methods()`` lists them: ``"nuts"``, ``"laplace"``,
        ``"meanfield_vi"``, ...) meaning that method with default options, or a
        typed config such as ``pp.NUTS(num_chains=4)``.
    rng_key : jax key, int or None
        Random key; None means ``jax.random.key(0)`` (reproducible by default).
    progress : bool, default True
        Show progress bars (also off when the environment variable
        ``PPL_POSTERIORS_PROGRESS=0``; plain lines where stderr is no terminal).
    mesh : jax.sharding.Mesh, optional
        Devices to run on (``pp.make_mesh(chain=k, data=m)``): chains / restarts split
        along ``"chain"``, observed data along their plate along ``"data"``. None: one
        device, except that MCMC chains go on the process's CPU host devices when it has
        several (``PPL_POSTERIORS_HOST_DEVICES=N``; the sampler's ``chain_layout="lockstep"``
        keeps them on one). ``attrs["num_devices"]`` records the count used.
    batches : pp.Batches, optional
        Data that come as an iterable of minibatches (dicts of the model's keyword
        data arguments) with the data set's size N; each step's likelihood is scaled by
        N / B (see :class:`~ppl_posteriors.Batches`). Only methods that take stochastic
        steps accept it (``supports_batches``); the results then hold no
        ``log_likelihood`` or ``observed_data`` group.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        ``InferenceData`` with ArviZ 0.23 (Python 3.11), ``xarray.DataTree`` with
        ArviZ >= 1 (Python >= 3.12); the same in both: groups ``posterior`` (chain, draw, *site shape) on the constrained space,
        ``sample_stats``, ``log_likelihood``, ``observed_data``, and for Laplace and
        VI ``approximation``; ``attrs`` record the method, config, versions, timings
        and status.

    Raises
    ------
    ModelError
        Structural problems of the model, naming the site and the fix.
    ConfigError
        Unknown method or option (with the closest valid names).
    NumericalError
        A numerical failure that makes the result wrong, when the method's
        ``throw=True`` (the default); ``err.idata`` holds the result. Diagnostics
        that leave a usable result (divergences, poor mixing, slow VI convergence)
        are ``NumericalWarning`` warnings instead.
    """
    config = resolve_method(method)
    key = as_key(rng_key)
    jacobian = getattr(config, "jacobian", True)
    t0 = time.perf_counter()
    stream = None
    if batches is not None:
        if not config.supports_batches:
            takers = sorted(n for n, s in _REGISTRY.items() if s.config_cls.supports_batches)
            raise ConfigError(
                f"method {config.method_name or type(config).__name__!r} needs the full data and "
                f"cannot take batches=; methods that take batches: {', '.join(takers) or 'none'}"
            )
        stream = BatchStream(model, args, kwargs, jacobian, batches)
        template, arrays = stream.template, stream.arrays
    else:
        template, arrays = model_template(model, args, kwargs, jacobian)
    if mesh is None:
        mesh = config.default_mesh(arrays)  # MCMC: the CPU host devices, if the process has several
    rt = Runtime(template, arrays, config, progress=progress, mesh=mesh, batches=stream)
    raw = config.run(key, rt)
    draws = constrained_draws(rt, raw.position)
    raw.info.update(rt.timing(), num_devices=1 if mesh is None else int(mesh.devices.size))
    idata = to_inference_data(
        raw, rt.log_density, model=model, method=config.method_name, config=config.to_dict(), draws=draws,
    )
    # the whole call, results and diagnostics included: what the user waited for
    if stream is not None:
        idata.attrs.update(batches_num_data=stream.batches.num_data, batches_plate=stream.plate)
    idata.attrs["wall_time"] = time.perf_counter() - t0
    _report(idata, config)
    return idata


def _report(idata, config) -> None:
    status = Status(idata.attrs["status"])
    if status is Status.SUCCESS:
        return
    text = f"{config.method_name}: {status.value}: {idata.attrs['status_messages']}"
    if status.is_failure and getattr(config, "throw", True):
        raise NumericalError(text, status, idata)
    warnings.warn(text, NumericalWarning, stacklevel=3)
