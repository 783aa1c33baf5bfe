"""Helpers shared by the posteriordb tests: where the data are, and the MCSE-scaled comparison."""

import os
from pathlib import Path

import arviz as az
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def posteriordb_dir() -> Path | None:
    """``$PPL_POSTERIORDB`` or ``../shared/posteriordb`` beside the checkout, if present."""
    for cand in (os.environ.get("PPL_POSTERIORDB"), ROOT.parent / "shared" / "posteriordb"):
        if cand and (Path(cand) / "load.py").is_file():
            return Path(cand)
    return None


N_REF = 10_000  # posteriordb reference: 10 chains x 1000 near-independent draws


def compare_with_reference(idata, reference, z=5.0):
    """Every reference parameter: |Δmean| and |Δsd| within ``z`` combined Monte Carlo standard errors.

    Returns the rows (name, Δmean/sd, sd ratio - 1) for reporting.
    """
    mcse_mean = az.mcse(idata, method="mean")
    mcse_sd = az.mcse(idata, method="sd")
    rows, failures = [], []
    for name, r in reference["parameters"].items():
        idx = (slice(None), slice(None)) + tuple(r["index"])
        x = idata.posterior[r["site"]].values[idx]
        m_se = float(mcse_mean[r["site"]].values[tuple(r["index"])])
        s_se = float(mcse_sd[r["site"]].values[tuple(r["index"])])
        tol_mean = z * np.hypot(m_se, r["sd"] / np.sqrt(N_REF))
        tol_sd = z * np.hypot(s_se, r["sd"] / np.sqrt(2 * N_REF))
        dm, ds = x.mean() - r["mean"], x.std(ddof=1) - r["sd"]
        rows.append((name, dm / r["sd"], ds / r["sd"]))
        if abs(dm) > tol_mean or abs(ds) > tol_sd:
            failures.append(f"{name}: Δmean {dm:.4g} (tol {tol_mean:.3g}), Δsd {ds:.4g} (tol {tol_sd:.3g})")
    return rows, failures
