"""Helpers shared by the posteriordb tests: where the data are, the MCSE-scaled comparison,
and one runner for a sampler on a posterior."""

import os
import time
import warnings
from pathlib import Path

import arviz as az
import numpy as np
import xarray as xr

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

    ``idata`` is a result (InferenceData or DataTree) or its posterior ``xarray.Dataset``.
    The combined standard error of the mean is hypot(MCSE of our mean, sd / sqrt(10,000))
    (the reference's own error), and likewise for the sd with sd / sqrt(2 * 10,000).

    Returns the rows (name, Δmean/sd, sd ratio - 1, Δmean/SE, Δsd/SE) for reporting
    and the failures (one line each).
    """
    post = idata if isinstance(idata, xr.Dataset) else _posterior(idata)
    mcse_mean = az.mcse(post, method="mean")
    mcse_sd = az.mcse(post, method="sd")
    rows, failures = [], []
    for name, r in reference["parameters"].items():
        idx = (slice(None), slice(None)) + tuple(r["index"])
        x = post[r["site"]].values[idx]
        m_se = float(mcse_mean[r["site"]].values[tuple(r["index"])])
        s_se = float(mcse_sd[r["site"]].values[tuple(r["index"])])
        se_mean = np.hypot(m_se, r["sd"] / np.sqrt(N_REF))
        se_sd = np.hypot(s_se, r["sd"] / np.sqrt(2 * N_REF))
        tol_mean, tol_sd = z * se_mean, z * se_sd
        dm, ds = x.mean() - r["mean"], x.std(ddof=1) - r["sd"]
        rows.append((name, dm / r["sd"], ds / r["sd"], dm / se_mean, ds / se_sd))
        if abs(dm) > tol_mean or abs(ds) > tol_sd:
            failures.append(f"{name}: Δmean {dm:.4g} (tol {tol_mean:.3g}), Δsd {ds:.4g} (tol {tol_sd:.3g})")
    return rows, failures


def _posterior(result) -> xr.Dataset:
    from ppl_posteriors.results.compat import get_group

    return get_group(result, "posterior")


def min_bulk_ess(post: xr.Dataset, reference) -> float:
    """The smallest bulk ESS over the reference parameters."""
    ess = az.ess(post, method="bulk")
    return min(float(ess[r["site"]].values[tuple(r["index"])]) for r in reference["parameters"].values())


def run_on_reference(pdb, posterior, method, *, runs=1, seed=0):
    """Run ``method`` on a posteriordb posterior with ``pp.infer`` and compare with its reference.

    ``runs > 1`` runs the method that many times with independent keys and stacks the
    runs' draws as chains (for SMC, whose one set of particles has no chains: ArviZ's
    multi-chain ESS then sees the between-run spread, so the MCSE is not taken from the
    permuted particles alone). Compiles once; the second and later runs hit the cache.

    Returns a dict: ``rows``/``failures`` of :func:`compare_with_reference`, ``worst_z``
    (largest |Δ| / combined SE over means and sds) and its parameter, ``min_ess`` (bulk,
    reference parameters), ``divergences``, ``warnings`` (NumericalWarning messages),
    ``wall`` (s, all runs) and ``cpu`` (process CPU s).
    """
    import jax

    import ppl_posteriors as pp

    data, ref, model = pdb.load(posterior)
    t0, c0 = time.perf_counter(), time.process_time()
    results = []
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always", pp.NumericalWarning)
        for i in range(runs):
            key = jax.random.fold_in(jax.random.key(seed), i)
            results.append(pp.infer(model, data, method=method, rng_key=key, progress=False))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    posts = [_posterior(r) for r in results]
    if runs > 1:
        posts = [p.assign_coords(chain=p.chain + i * p.sizes["chain"]) for i, p in enumerate(posts)]
        post = xr.concat(posts, dim="chain")
    else:
        post = posts[0]
    rows, failures = compare_with_reference(post, ref)
    worst = max(rows, key=lambda r: max(abs(r[3]), abs(r[4])))
    return {
        "rows": rows,
        "failures": failures,
        "worst_z": max(abs(worst[3]), abs(worst[4])),
        "worst_param": worst[0],
        "min_ess": min_bulk_ess(post, ref),
        "divergences": sum(int(r.attrs.get("num_divergent", 0)) for r in results),
        "warnings": [str(w.message) for w in caught if issubclass(w.category, pp.NumericalWarning)],
        "wall": wall,
        "cpu": cpu,
    }
