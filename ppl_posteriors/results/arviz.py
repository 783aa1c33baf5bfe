"""RawPosterior -> arviz.InferenceData: the only module that imports ArviZ.

Groups: ``posterior`` (constrained values of every latent and deterministic
site, dims named after plates, coords from ``@pp.model(coords=...)``),
``sample_stats``, ``log_likelihood`` (pointwise, one variable per observed site,
so ``az.loo`` and ``az.compare`` work across methods), ``observed_data``, and for
Laplace and VI an ``approximation`` group that survives ``to_netcdf`` /
``from_netcdf`` (see :func:`sample_approximation`). ``attrs`` hold the method,
its config, library versions, timings, gradient evaluations and the status.
"""

from __future__ import annotations

import json
import math
import warnings
from importlib import metadata

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import ConfigError, Status
from .._progress import as_key
from ..model.decorator import model_meta
from ..model.sites import SiteKind
from .approximation import approximation_to_dataset, load_approximation
from .raw import RawPosterior

__all__ = ["sample_approximation", "to_inference_data"]

_VERSIONED = ("ppl_posteriors", "jax", "numpyro", "blackjax", "optax", "arviz")


def _versions() -> dict[str, str]:
    out = {}
    for pkg in _VERSIONED:
        try:
            out[f"{pkg}_version"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[f"{pkg}_version"] = "unknown"
    return out


def _map_draws(fn, position):
    """Apply ``fn`` to every (chain, draw) of ``position``, jitted; returns numpy arrays."""
    out = jax.jit(jax.vmap(jax.vmap(fn)))(position)
    return {k: np.asarray(v) for k, v in out.items()}


def _scalar_attrs(info: dict) -> dict:
    out = {}
    for k, v in info.items():
        if isinstance(v, (bool, np.bool_)):
            out[k] = int(v)
        elif isinstance(v, (int, float, str, np.integer, np.floating)):
            out[k] = v
        elif isinstance(v, (jax.Array, np.ndarray)) and np.ndim(v) == 0:
            out[k] = np.asarray(v).item()
    return out


def _diagnose(raw: RawPosterior, posterior: dict, stats: dict):
    """Status and messages of ``raw`` plus two diagnostics computed with ArviZ.

    * PSIS k-hat of the importance weights p/q of an approximation's draws
      (``info["khat_log_weights"]``, else ``sample_stats["log_weight"]``); above min(1 - 1/log10(S), 0.7) the
      approximation is unreliable (Vehtari et al. 2024, JMLR 25(72); Yao et al.
      2018, "Yes, but did it work?").
    * Rank-normalised split R-hat and bulk ESS of MCMC draws; R-hat above 1.01
      means the chains disagree (Vehtari et al. 2021, Bayesian Analysis 16:667).
    """
    statuses, messages, attrs = [raw.status], list(raw.info.get("messages", [])), {}
    lw = raw.info.get("khat_log_weights", stats.get("log_weight"))
    if lw is not None:
        lw = np.asarray(lw, dtype=np.float64).ravel()
        if np.all(np.isfinite(lw)) and lw.size >= 10:
            if np.ptp(lw) <= 1e-8 * (1.0 + np.abs(lw).max()):
                khat = float("-inf")  # constant weights: q equals the posterior
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _, khat = az.psislw(lw - lw.max())
                khat = float(khat)
            threshold = min(1.0 - 1.0 / np.log10(lw.size), 0.7)
            attrs["psis_khat"] = khat
            if khat > threshold:
                statuses.append(Status.POOR_APPROXIMATION)
                messages.append(
                    f"PSIS k-hat = {khat:.2f} > {threshold:.2f}: the approximation is far from the "
                    "posterior, so its means and sds may be badly off; check against NUTS"
                )
    if raw.info.get("is_mcmc"):
        n_chains = next(iter(posterior.values())).shape[0]
        if n_chains >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = az.convert_to_dataset(posterior)
                rhat = float(np.nanmax(az.rhat(ds).to_array().values))
                ess = float(np.nanmin(az.ess(ds, method="bulk").to_array().values))
            attrs["rhat_max"], attrs["ess_bulk_min"] = rhat, ess
            if rhat > 1.01:
                statuses.append(Status.POOR_MIXING)
                messages.append(
                    f"max R-hat = {rhat:.3f} > 1.01 (min bulk ESS {ess:.0f}): the chains disagree; "
                    "run longer, reparameterise, or check for multimodality"
                )
    return Status.worst(statuses), messages, attrs


def to_inference_data(
    raw: RawPosterior,
    log_density,
    *,
    model=None,
    method: str = "",
    config: dict | None = None,
    wall_time: float | None = None,
) -> az.InferenceData:
    """Convert ``raw`` (draws on the unconstrained space) to ``arviz.InferenceData``.

    Parameters
    ----------
    raw : RawPosterior
        Position leaves of shape (chain, draw, *unconstrained shape).
    log_density : LogDensity
        The model's log density (gives ``constrain``, ``pointwise_loglik``, sites).
    model : callable, optional
        The model, for the ``@pp.model`` coords and dims.
    method, config, wall_time
        Recorded in ``idata.attrs``.
    """
    meta = model_meta(model) if model is not None else None
    posterior = _map_draws(log_density.constrain, raw.position)
    dims = {s.name: list(s.dims) for s in log_density.sites}
    log_lik, ll_dims = {}, {}
    if any(s.kind is SiteKind.OBSERVED for s in log_density.sites):
        log_lik = _map_draws(log_density.pointwise_loglik, raw.position)
        # log_prob drops trailing event axes, so the pointwise axes are a prefix of the data's
        ll_dims = {n: dims[n][: v.ndim - 2] for n, v in log_lik.items()}
    observed = {n: np.asarray(v) for n, v in log_density.split.observed.items()}
    coords = dict(meta.coords) if meta is not None else {}  # checked against shapes when traced

    stats = {k: np.asarray(v) for k, v in raw.sample_stats.items()}
    attrs = {
        "method": method,
        "config": json.dumps(config or {}, default=repr),
        "jacobian": int(log_density.jacobian),
        "num_parameters": log_density.dim,
        **_scalar_attrs(raw.info),
    }
    if wall_time is not None:
        attrs["wall_time"] = float(wall_time)
    status, messages, diag = _diagnose(raw, posterior, stats)
    attrs.update(diag)
    attrs["status"] = status.value
    attrs["status_messages"] = " | ".join(messages)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        idata = az.from_dict(
            posterior=posterior,
            sample_stats=stats or None,
            observed_data=observed or None,
            coords=coords,
            dims={n: d for n, d in dims.items() if n in posterior or n in observed},
            attrs=attrs,
        )
        idata.attrs.update(_versions())  # from_dict drops an "arviz_version" given in attrs
        if log_lik:
            ll = az.from_dict(log_likelihood=log_lik, coords=coords, dims=ll_dims)
            idata.add_groups({"log_likelihood": ll.log_likelihood})
        if raw.approximation is not None:
            idata.add_groups({"approximation": approximation_to_dataset(raw.approximation, log_density)})
    return idata


def sample_approximation(
    idata,
    rng_key=None,
    num_samples: int = 1000,
    *,
    model=None,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
) -> az.InferenceData:
    """Draw again from the approximation stored in ``idata`` (Laplace or VI results).

    Works on a result reloaded with ``az.from_netcdf``.

    Parameters
    ----------
    idata : arviz.InferenceData
        A result with an ``approximation`` group.
    rng_key : jax key or int, optional
        Random key (default: key 0).
    num_samples : int
        Number of draws.
    model, model_args, model_kwargs : optional
        The model and its arguments. With them, the result has the full
        ``posterior`` (constrained latent and deterministic sites) and
        ``log_likelihood``; without them, the draws are returned on the
        unconstrained space in the ``unconstrained_posterior`` group, one variable
        per latent site.

    Returns
    -------
    arviz.InferenceData
        Draws with shape (chain=1, draw=num_samples, ...).

    Raises
    ------
    ConfigError
        No approximation in ``idata``, or a model whose latent sites do not match it.
    """
    approx, layout = load_approximation(idata)
    key = as_key(rng_key)
    flat = approx.sample_flat(key, int(num_samples))[None]
    if model is None:
        out, i = {}, 0
        for name, shape in layout:
            n = math.prod(shape)
            out[name] = np.asarray(flat[..., i : i + n]).reshape((1, num_samples) + shape)
            i += n
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return az.InferenceData(unconstrained_posterior=az.dict_to_dataset(out))
    from ..density import build_log_density

    jacobian = bool(int(idata.approximation.attrs.get("jacobian", 1)))
    ld = build_log_density(model, tuple(model_args), dict(model_kwargs or {}), jacobian=jacobian)
    if ld.layout != layout:
        raise ConfigError(
            f"the model's latent sites {list(ld.layout)} do not match the stored approximation's "
            f"{list(layout)}; pass the same model and arguments that produced it"
        )
    observed = {n: np.asarray(v) for n, v in ld.split.observed.items()}
    if "observed_data" in idata.groups():
        stored = {n: np.asarray(v) for n, v in idata.observed_data.data_vars.items()}
        same = set(stored) == set(observed) and all(
            stored[n].shape == observed[n].shape and np.allclose(stored[n], observed[n]) for n in observed
        )
        if not same:
            raise ConfigError(
                "the observed data given to sample_approximation differ from the data the "
                "approximation was fitted to (idata.observed_data); pass the same arguments"
            )
    position = ld.unravel(jnp.asarray(flat))
    lp = jax.jit(jax.vmap(jax.vmap(ld.posterior_logdensity_fn)))(position)
    log_q = approx.log_prob(jnp.asarray(flat))
    stats = {"lp": lp, "log_weight": lp - log_q}
    raw = RawPosterior(position, stats, approx, Status.SUCCESS, {"messages": []})
    return to_inference_data(raw, ld, model=model, method=str(idata.attrs.get("method", "")),
                             config=json.loads(idata.attrs.get("config", "{}")))
