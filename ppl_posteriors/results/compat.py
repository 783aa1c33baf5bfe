"""The one place that knows the installed ArviZ version (and the only ArviZ import).

=====================  ===============================  ==================================
                       ArviZ 0.23 (Python 3.11)          ArviZ >= 1 (Python >= 3.12)
=====================  ===============================  ==================================
result type            ``arviz.InferenceData``           ``xarray.DataTree``
group names            ``idata.groups()``                ``list(dt.children)``
a group as Dataset     ``idata[name]``                   ``dt[name].to_dataset()``
draws without sample   ``dict_to_dataset(default_dims)``  ``dict_to_dataset(sample_dims)``
PSIS k-hat             ``az.psislw(log_w)``              ``array_stats.psislw(-log_w)``
LOO                    ``.elpd_loo``, ``.p_loo``         ``.elpd``, ``.p``
forest plot            matplotlib axes                   ``PlotCollection``
=====================  ===============================  ==================================

Both types have the same groups (``posterior``, ``sample_stats``, ``log_likelihood``,
``observed_data``, ``approximation``), dims, coords and root ``attrs``; ``name in
result``, ``result.posterior["mu"]``, ``result.attrs`` and ``result.to_netcdf(path)``
work on both. A netcdf file written under either version is read by :func:`from_netcdf`
(``az.from_netcdf``) under the other: both store one netcdf group per ArviZ group and
the root attributes in the root group.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import arviz as az
import numpy as np
import xarray as xr

__all__ = [
    "ARVIZ_1",
    "ARVIZ_VERSION",
    "RESULT_TYPE",
    "Loo",
    "dict_to_dataset",
    "ess",
    "from_netcdf",
    "get_group",
    "group_names",
    "loo",
    "make_result",
    "plot_forest",
    "psis_khat",
    "rhat",
    "to_netcdf",
]

ARVIZ_VERSION: str = az.__version__
ARVIZ_1: bool = int(ARVIZ_VERSION.split(".")[0]) >= 1
#: What every method returns: ``xarray.DataTree`` with ArviZ >= 1, else ``arviz.InferenceData``.
RESULT_TYPE: type = xr.DataTree if ARVIZ_1 else az.InferenceData


def dict_to_dataset(data: dict, *, coords=None, dims=None, attrs=None, sample: bool = True) -> xr.Dataset:
    """``{name: array}`` -> Dataset; arrays are (chain, draw, *shape) when ``sample``, else
    the plain data shape (``observed_data``). Unnamed axes become ``{name}_dim_{i}``."""
    kw = {} if sample else ({"sample_dims": []} if ARVIZ_1 else {"default_dims": []})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return az.dict_to_dataset(data, coords=coords or {}, dims=dims or {}, attrs=attrs, **kw)


def make_result(groups: dict[str, xr.Dataset], attrs: dict):
    """A result of :data:`RESULT_TYPE` with the given groups (in order) and root ``attrs``."""
    groups = {k: v for k, v in groups.items() if v is not None}
    if ARVIZ_1:
        out = xr.DataTree.from_dict(groups)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = az.InferenceData(**groups)
    out.attrs.update(attrs)
    return out


def group_names(result) -> list[str]:
    """Names of the groups of ``result`` (``["posterior", "sample_stats", ...]``)."""
    if isinstance(result, xr.DataTree):
        return list(result.children)
    return list(result.groups())


def get_group(result, name: str) -> xr.Dataset:
    """Group ``name`` of ``result`` as an ``xarray.Dataset``."""
    if isinstance(result, xr.DataTree):
        return result[name].to_dataset()
    return result[name]


def to_netcdf(result, path) -> str:
    """Write ``result`` (either type) to one netcdf file with the h5netcdf engine."""
    path = str(path)
    result.to_netcdf(path, engine="h5netcdf")
    return path


def from_netcdf(path):
    """Read a result written by :func:`to_netcdf` under either ArviZ version, as
    :data:`RESULT_TYPE` (``az.from_netcdf``, loaded into memory)."""
    out = az.from_netcdf(str(path))
    if isinstance(out, xr.DataTree):
        return out.load()
    for name in out.groups():  # InferenceData reads lazily; load so the file can close
        out[name].load()
    return out


def rhat(draws: np.ndarray) -> np.ndarray:
    """Rank-normalised split R-hat (``az.rhat``) of every element of (chain, draw, element)."""
    return _per_element(draws, az.rhat)


def ess(draws: np.ndarray, kind: str) -> np.ndarray:
    """Bulk (``kind="bulk"``) or tail ESS (``az.ess``) of every element of (chain, draw, element)."""
    return _per_element(draws, lambda ds: az.ess(ds, method=kind))


def _per_element(draws, fn) -> np.ndarray:
    if draws.shape[-1] == 0:
        return np.zeros(0)
    ds = az.convert_to_dataset({"x": np.asarray(draws, dtype=np.float64)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fn(ds)
    return np.asarray(out["x"].values, dtype=np.float64).reshape(-1)


def psis_khat(log_weights: np.ndarray) -> float:
    """Pareto k-hat of the smoothed importance weights ``exp(log_weights)`` (flat array),
    Vehtari et al. (2024), JMLR 25(72); r_eff = 1."""
    lw = np.asarray(log_weights, dtype=np.float64).ravel()
    lw = lw - lw.max()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if ARVIZ_1:
            from arviz_stats.base import array_stats

            # arviz-stats smooths the weights of -ary (its input is a log-likelihood); its
            # generalised Pareto fit returns NaN where 0.23's gives a huge k (weights spanning
            # hundreds of orders of magnitude): either way the weights are useless
            _, khat = array_stats.psislw(-lw)
        else:
            _, khat = az.psislw(lw)
    khat = float(khat)
    return float("inf") if np.isnan(khat) else khat


class Loo(NamedTuple):
    """PSIS-LOO (Vehtari, Gelman & Gabry 2017): expected log pointwise predictive density,
    its standard error and the effective number of parameters."""

    elpd: float
    se: float
    p: float


def loo(result) -> Loo:
    """``az.loo(result)`` as version-free numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = az.loo(result)
    if ARVIZ_1:
        return Loo(float(out.elpd), float(out.se), float(out.p))
    return Loo(float(out.elpd_loo), float(out.se), float(out.p_loo))


def plot_forest(results: dict, var_names, path, *, hdi_prob: float = 0.94, title: str = "",
                height: float = 4.0, dpi: int = 110) -> str:
    """Forest plot (``hdi_prob`` HDI, chains combined) of ``var_names`` for every result in
    ``results`` (``{model name: result}``), saved to ``path`` with matplotlib."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figsize = (7, height)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if ARVIZ_1:
            # models with different numbers of chains or draws are NaN-padded when ArviZ
            # stacks them along "model": the intervals must skip the padding
            skip = {"skipna": True}
            pc = az.plot_forest(
                dict(results), var_names=list(var_names), combined=True, ci_kind="hdi",
                ci_probs=(0.5, hdi_prob), point_estimate="mean", backend="matplotlib",
                stats={"trunk": skip, "twig": skip, "point_estimate": skip}, figure_kwargs={"figsize": figsize},
            )
            if len(results) > 1:
                pc.add_legend("model", loc="upper right")
            fig = pc.viz["figure"].item()
            drawn = [x for ax in fig.axes for line in ax.get_lines() for x in line.get_xdata()]
            if not np.all(np.isfinite(np.asarray(drawn, dtype=float))):
                raise RuntimeError("forest plot: an interval is NaN (ArviZ's padding not skipped)")
            if title:
                fig.suptitle(f"{title}\n{round(hdi_prob * 100)}% HDI", fontsize=10)
        else:
            axes = az.plot_forest(
                list(results.values()), model_names=list(results), var_names=list(var_names),
                combined=True, hdi_prob=hdi_prob, figsize=figsize,
            )
            fig = np.ravel(axes)[0].figure
            if title:
                np.ravel(axes)[0].set_title(f"{title}\n{round(hdi_prob * 100)}% HDI", fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), dpi=dpi)
    plt.close(fig)
    return str(path)
