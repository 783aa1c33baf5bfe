"""Side-by-side tables and forest plots of several results (the demo's output)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import compat

__all__ = ["accuracy", "method_table", "parameter_table", "plot_forest"]


def _flat_draws(idata, var_names) -> dict[str, np.ndarray]:
    """{"theta[0]": draws (chain*draw,), ...} for the chosen posterior variables."""
    out = {}
    for v in var_names:
        x = idata.posterior[v].values
        x = x.reshape(x.shape[0] * x.shape[1], -1)
        shape = idata.posterior[v].shape[2:]
        for j, idx in enumerate(np.ndindex(*shape) if shape else [()]):
            label = v if not idx else f"{v}[{','.join(map(str, idx))}]"
            out[label] = x[:, j]
    return out


def parameter_table(results: dict, var_names) -> pd.DataFrame:
    """Posterior mean and sd of every element of ``var_names``, one column pair per method."""
    cols = {}
    for name, idata in results.items():
        draws = _flat_draws(idata, var_names)
        cols[(name, "mean")] = {k: v.mean() for k, v in draws.items()}
        cols[(name, "sd")] = {k: v.std(ddof=1) for k, v in draws.items()}
    return pd.DataFrame(cols)


def accuracy(idata, reference, var_names) -> tuple[float, float]:
    """(max |mean - ref mean| / ref sd, max |sd / ref sd - 1|) over elements of ``var_names``."""
    a, r = _flat_draws(idata, var_names), _flat_draws(reference, var_names)
    z = max(abs(a[k].mean() - r[k].mean()) / r[k].std(ddof=1) for k in r)
    s = max(abs(a[k].std(ddof=1) / r[k].std(ddof=1) - 1.0) for k in r)
    return float(z), float(s)


def method_table(results: dict, var_names, reference: str | None = None) -> pd.DataFrame:
    """Wall time, compile time, gradient evaluations, divergences, status and (with a
    ``reference`` method name) the accuracy of every method against it."""
    rows = {}
    for name, idata in results.items():
        at = idata.attrs
        row = {
            "wall s": float(at.get("wall_time", np.nan)),
            "compile s": float(at.get("compile_time", np.nan)),
            "run s": float(at.get("run_time", np.nan)),
            "divergences": int(at.get("num_divergent", 0)),
            "status": str(at.get("status", "")),
        }
        if reference is not None and name != reference:
            z, s = accuracy(idata, results[reference], var_names)
            row["max |Δmean|/sd"] = z
            row["max |sd ratio-1|"] = s
        rows[name] = row
    return pd.DataFrame(rows).T


def plot_forest(results: dict, var_names, path, title: str = ""):
    """ArviZ forest plot (94% HDI, chains combined) of ``var_names`` for every method, saved to
    ``path`` (PNG); works with either ArviZ version (see :func:`.compat.plot_forest`)."""
    first = next(iter(results.values()))
    rows = sum(int(np.prod(first.posterior[v].shape[2:])) for v in var_names)  # scalars and elements
    return compat.plot_forest(results, var_names, path, hdi_prob=0.94, title=title,
                              height=1.2 + 0.22 * rows * len(results))
