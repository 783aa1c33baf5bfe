"""RawPosterior -> the installed ArviZ's result type: ``arviz.InferenceData`` (ArviZ 0.23)
or ``xarray.DataTree`` (ArviZ >= 1), through :mod:`.compat`, which alone knows which.

Groups: ``posterior`` (constrained values of every latent and deterministic
site, dims named after plates, coords from ``@pp.model(coords=...)``),
``sample_stats``, ``log_likelihood`` (pointwise, one variable per observed site,
so ``az.loo`` and ``az.compare`` work across methods), ``observed_data``, and for
Laplace and VI an ``approximation`` group that survives ``to_netcdf`` /
``from_netcdf`` (see :func:`sample_approximation`). ``attrs`` hold the method,
its config, library versions, timings, gradient evaluations and the status.
"""

from __future__ import annotations

import functools
import json
import math
from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import ConfigError, Status
from .._progress import as_key
from ..model.decorator import model_meta
from ..model.sites import SiteKind
from . import compat
from .approximation import approximation_to_dataset, load_approximation
from .raw import RawPosterior

__all__ = ["sample_approximation", "to_inference_data"]

_VERSIONED = ("ppl_posteriors", "jax", "numpyro", "blackjax", "optax", "arviz")


@functools.cache
def _versions_cached() -> tuple:
    return tuple(_versions_lookup().items())


def _versions() -> dict[str, str]:
    """Library versions for ``attrs`` (looked up once per process: ~20 ms each time otherwise)."""
    return dict(_versions_cached())


def _versions_lookup() -> dict[str, str]:
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


RHAT_THRESHOLD = 1.01
ESS_PER_CHAIN = 100
_NAMED = 3  # worst elements named in a message


def _flat_elements(posterior: dict, names) -> tuple[list[str], np.ndarray]:
    """Labels (``mu``, ``theta[3]``, ``L[1,0]``) and draws (chain, draw, element) of the
    elements of ``names`` that vary and are finite; constant elements (a fixed entry of a
    Cholesky factor, say) and non-finite ones carry no information about mixing."""
    labels, columns = [], []
    for name in sorted(names):
        x = np.asarray(posterior[name], dtype=np.float64)
        shape = x.shape[2:]
        x = x.reshape(x.shape[:2] + (-1,))
        keep = np.all(np.isfinite(x), axis=(0, 1)) & ~np.all(x == x[:1, :1], axis=(0, 1))
        for j, idx in enumerate(np.ndindex(*shape)):
            if keep[j]:
                labels.append(f"{name}[{','.join(map(str, idx))}]" if shape else name)
        columns.append(x[..., keep])
    draws = np.concatenate(columns, axis=-1) if columns else np.zeros((1, 1, 0))
    return labels, draws


def _per_element(draws: np.ndarray, kind: str) -> np.ndarray:
    """R-hat (``kind="rhat"``) or bulk / tail ESS of every element of (chain, draw, element)."""
    return compat.rhat(draws) if kind == "rhat" else compat.ess(draws, kind)


def _worst(labels, values, fmt: str, *, largest: bool, beyond=None) -> str:
    """``"tau 1.053, theta[3] 1.031, mu 1.012"``: the worst :data:`_NAMED` elements, worst
    first; given ``beyond``, only those past it, then how many more are past it."""
    order = np.argsort(-values if largest else values, kind="stable")
    if beyond is not None:
        order = [i for i in order if (values[i] > beyond if largest else values[i] < beyond)]
    text = ", ".join(f"{labels[i]} {values[i]:{fmt}}" for i in order[:_NAMED])
    if beyond is not None and len(order) > _NAMED:
        text += f" and {len(order) - _NAMED} more"
    return text


def _mixing(posterior: dict, latent: set[str]):
    """R-hat and ESS of MCMC draws: (bad, messages, attrs); see :func:`_diagnose`."""
    n_chains, n_draws = next(iter(posterior.values())).shape[:2]
    if n_draws < 4:
        return False, [], {}
    labels, draws = _flat_elements(posterior, [n for n in posterior if n in latent])
    bad, messages, attrs = False, [], {}
    det_labels, det_rhat = [], np.zeros(0)
    if n_chains >= 2:
        rhat = _per_element(draws, "rhat")
        rhat = np.where(np.isnan(rhat), np.inf, rhat)
        det_labels, det_draws = _flat_elements(posterior, [n for n in posterior if n not in latent])
        det_rhat = _per_element(det_draws, "rhat")
        det_rhat = np.where(np.isnan(det_rhat), np.inf, det_rhat)
        attrs["rhat_max"] = float(rhat.max()) if rhat.size else float("nan")
        if rhat.size:
            attrs["rhat_worst"] = _worst(labels, rhat, ".3f", largest=True)
        if det_rhat.size:
            attrs["rhat_max_deterministic"] = float(det_rhat.max())
        if rhat.size and rhat.max() > RHAT_THRESHOLD:
            bad = True
            messages.append(
                f"max R-hat {rhat.max():.3f} > {RHAT_THRESHOLD}: "
                f"{_worst(labels, rhat, '.3f', largest=True, beyond=RHAT_THRESHOLD)}: the chains "
                "disagree; run longer, reparameterise, or check for multimodality"
            )
    threshold = ESS_PER_CHAIN * n_chains
    low = []
    for kind in ("bulk", "tail"):
        ess = _per_element(draws, kind)
        ess = np.where(np.isnan(ess), 0.0, ess)
        attrs[f"ess_{kind}_min"] = float(ess.min()) if ess.size else float("nan")
        if ess.size:
            attrs[f"ess_{kind}_worst"] = _worst(labels, ess, ".0f", largest=False)
        if ess.size and ess.min() < threshold:
            low.append(f"{kind} {_worst(labels, ess, '.0f', largest=False, beyond=threshold)}")
    if low:
        bad = True
        messages.append(
            f"ESS below {threshold} ({ESS_PER_CHAIN} per chain): {'; '.join(low)}: too few "
            "effectively independent draws for reliable means and intervals; run longer"
        )
    if bad and det_rhat.size and det_rhat.max() > RHAT_THRESHOLD:
        messages.append(
            "(deterministic, for information: "
            f"{_worst(det_labels, det_rhat, '.3f', largest=True, beyond=RHAT_THRESHOLD)})"
        )
    return bad, messages, attrs


def _diagnose(raw: RawPosterior, posterior: dict, stats: dict, latent=None):
    """Status and messages of ``raw`` plus two diagnostics computed with ArviZ.

    * PSIS k-hat of the importance weights p/q of an approximation's draws
      (``info["khat_log_weights"]``, else ``sample_stats["log_weight"]``); above min(1 - 1/log10(S), 0.7) the
      approximation is unreliable (Vehtari et al. 2024, JMLR 25(72); Yao et al.
      2018, "Yes, but did it work?").
    * For MCMC draws (``info["is_mcmc"]``), per element of every site: rank-normalised
      split R-hat (``az.rhat``, the larger of the bulk and folded R-hat; >= 2 chains) and
      bulk and tail ESS (``az.ess``; attrs ``ess_bulk_min`` / ``ess_tail_min`` and the three
      lowest elements in ``ess_bulk_worst`` / ``ess_tail_worst``). Only the ``latent`` sites (default: all of
      ``posterior``) are judged: max R-hat > 1.01, or a bulk or tail ESS below 100 per
      chain, is ``POOR_MIXING`` (Vehtari et al. 2021, Bayesian Analysis 16:667, whose
      recommendations these are), and the message names the worst three elements with
      their values. Deterministic sites are functions of the latent draws; with many
      elements some exceed 1.01 by chance, so they never set the status; their worst
      R-hats above 1.01 are appended for information when there is a mixing warning.
      Elements constant over all draws (a fixed entry of a Cholesky factor) or with
      non-finite draws are skipped.
    """
    statuses, messages, attrs = [raw.status], list(raw.info.get("messages", [])), {}
    lw = raw.info.get("khat_log_weights", stats.get("log_weight"))
    if lw is not None:
        lw = np.asarray(lw, dtype=np.float64).ravel()
        if np.all(np.isfinite(lw)) and lw.size >= 10:
            if np.ptp(lw) <= 1e-8 * (1.0 + np.abs(lw).max()):
                khat = float("-inf")  # constant weights: q equals the posterior
            else:
                khat = compat.psis_khat(lw)
            threshold = min(1.0 - 1.0 / np.log10(lw.size), 0.7)
            attrs["psis_khat"] = khat
            if khat > threshold:
                statuses.append(Status.POOR_APPROXIMATION)
                messages.append(
                    f"PSIS k-hat = {khat:.2f} > {threshold:.2f}: the approximation is far from the "
                    "posterior, so its means and sds may be badly off; check against NUTS"
                )
    if raw.info.get("is_mcmc") and posterior:
        judged = set(posterior) if latent is None else set(latent)
        bad, mixing_messages, mixing_attrs = _mixing(posterior, judged)
        attrs.update(mixing_attrs)
        messages.extend(mixing_messages)
        if bad:
            statuses.append(Status.POOR_MIXING)
    return Status.worst(statuses), messages, attrs


def to_inference_data(
    raw: RawPosterior,
    log_density,
    *,
    model=None,
    method: str = "",
    config: dict | None = None,
    wall_time: float | None = None,
    draws: tuple | None = None,
) -> compat.RESULT_TYPE:
    """Convert ``raw`` (draws on the unconstrained space) to the installed ArviZ's result.

    ``arviz.InferenceData`` with ArviZ 0.23, ``xarray.DataTree`` with ArviZ >= 1; the
    groups, dims, coords and ``attrs`` are the same (see :mod:`.compat`).

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
    draws : (posterior, log_likelihood, observed), optional
        Numpy dicts already computed (by the runtime's cached program); without them
        they are computed here with ``log_density``'s functions (compiled afresh).
    """
    meta = model_meta(model) if model is not None else None
    if draws is None:
        posterior = _map_draws(log_density.constrain, raw.position)
        log_lik = {}
        if any(s.kind is SiteKind.OBSERVED for s in log_density.sites):
            log_lik = _map_draws(log_density.pointwise_loglik, raw.position)
        observed = {n: np.asarray(v) for n, v in log_density.split.observed.items()}
    else:
        posterior, log_lik, observed = draws
    dims = {s.name: list(s.dims) for s in log_density.sites}
    # log_prob drops trailing event axes, so the pointwise axes are a prefix of the data's
    ll_dims = {n: dims[n][: v.ndim - 2] for n, v in log_lik.items()}
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
    latent = {s.name for s in log_density.sites if s.kind is SiteKind.LATENT}
    status, messages, diag = _diagnose(raw, posterior, stats, latent)
    attrs.update(diag)
    attrs["status"] = status.value
    attrs["status_messages"] = " | ".join(messages)

    site_dims = {n: d for n, d in dims.items() if n in posterior or n in observed}
    groups = {
        "posterior": compat.dict_to_dataset(posterior, coords=coords, dims=site_dims),
        "sample_stats": compat.dict_to_dataset(stats) if stats else None,
        "log_likelihood": compat.dict_to_dataset(log_lik, coords=coords, dims=ll_dims) if log_lik else None,
        "observed_data": (compat.dict_to_dataset(observed, coords=coords, dims=site_dims, sample=False)
                          if observed else None),
        "approximation": (approximation_to_dataset(raw.approximation, log_density)
                          if raw.approximation is not None else None),
        **_predictive_groups(raw.info.get("posterior_predictive"), dims, coords),
    }
    return compat.make_result(groups, {**attrs, **_versions()})


def _predictive_groups(pred: dict | None, dims: dict, coords: dict) -> dict:
    """``posterior_predictive`` (draws of the observed sites through the model, "mc") and
    ``predictive_glm`` (no sample axes: linearised mean and variance of each observed site's
    distribution parameters as ``{site}_{param}_mean`` / ``_var``, and probit-approximated
    class probabilities as ``{site}_probs``) from a method's ``info["posterior_predictive"]``."""
    if not pred:
        return {}
    out = {}
    if pred.get("mc"):
        mc = {k: np.asarray(v) for k, v in pred["mc"].items()}
        out["posterior_predictive"] = compat.dict_to_dataset(
            mc, coords=coords, dims={k: dims[k][: v.ndim - 2] for k, v in mc.items() if k in dims})
    glm, site_of = {}, {}
    for key, mv in (pred.get("glm") or {}).items():  # key "site.param"
        base = key.replace(".", "_")
        for stat in ("mean", "var"):
            glm[f"{base}_{stat}"], site_of[f"{base}_{stat}"] = np.asarray(mv[stat]), key.split(".")[0]
    for site, probs in (pred.get("probit") or {}).items():
        glm[f"{site}_probs"], site_of[f"{site}_probs"] = np.asarray(probs), site
    if glm:
        gdims = {k: dims[site_of[k]][: v.ndim] for k, v in glm.items() if site_of[k] in dims}
        out["predictive_glm"] = compat.dict_to_dataset(glm, coords=coords, dims=gdims, sample=False)
    return out


def sample_approximation(
    idata,
    rng_key=None,
    num_samples: int = 1000,
    *,
    model=None,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
) -> compat.RESULT_TYPE:
    """Draw again from the approximation stored in ``idata`` (Laplace or VI results).

    Works on a result reloaded with ``az.from_netcdf`` (or :func:`.compat.from_netcdf`),
    including a file written under the other ArviZ version.

    Parameters
    ----------
    idata : arviz.InferenceData or xarray.DataTree
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
    arviz.InferenceData or xarray.DataTree
        The installed ArviZ's result type; draws with shape (chain=1, draw=num_samples, ...).

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
        return compat.make_result({"unconstrained_posterior": compat.dict_to_dataset(out)}, {})
    from ..density import build_log_density

    jacobian = bool(int(compat.get_group(idata, "approximation").attrs.get("jacobian", 1)))
    ld = build_log_density(model, tuple(model_args), dict(model_kwargs or {}), jacobian=jacobian)
    if ld.layout != layout:
        raise ConfigError(
            f"the model's latent sites {list(ld.layout)} do not match the stored approximation's "
            f"{list(layout)}; pass the same model and arguments that produced it"
        )
    observed = {n: np.asarray(v) for n, v in ld.split.observed.items()}
    if "observed_data" in compat.group_names(idata):
        stored = {n: np.asarray(v) for n, v in compat.get_group(idata, "observed_data").data_vars.items()}
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
