"""B2 with nutpie: the same three targets as PyMC models, sampled by nutpie (bench session only).

Runs in its own virtualenv (never in CI, never imported by the package or the tests)::

    python3.11 -m venv .venv-nutpie && .venv-nutpie/bin/pip install pymc nutpie scikit-learn
    .venv-nutpie/bin/python bench/mcmc_b2_nutpie.py [--quick] [--reps N] [--targets ...]

Settings (BENCHMARKS.md B2): 4 chains x 1000 tune x 1000 draws, float64, target_accept
0.8, maxdepth 10, nutpie's default mass matrix (diagonal, adapted from the variances of
the draws and of the gradients); ``--variants default,low_rank`` adds a row with
``low_rank_modified_mass_matrix=True``. Seeds as in ``mcmc_b2.py``: one warm-up call
(seed 1000, discarded), then ``--reps`` timed calls with seeds 0, 1, ...; medians.

Writes ``bench/out/mcmc_b2_nutpie[_quick].csv`` (same columns as ``mcmc_b2.py``'s table),
which ``mcmc_b2.py`` merges into its table to compute ratios against nutpie. It also
records ``data_check`` (sum of |data|) so that ``mcmc_b2.py`` can verify that both
scripts sampled the same posterior.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import arviz as az
import numba
import numpy as np
import nutpie
import pandas as pd
import pymc as pm
import pytensor

OUT_DIR = Path(__file__).resolve().parent / "out"
warnings.filterwarnings("ignore", message=".*ArviZ is undergoing a major refactor.*")

# ----------------------------------------------------------------------------- targets
# The data and models mirror bench/common.py (which needs JAX and cannot be imported here);
# ``data_check`` lets mcmc_b2.py verify that the data are the same.


def gauss100_sigma(dim: int = 100, condition: float = 1000.0, seed: int = 20240601) -> np.ndarray:
    """Copy of ``common.gauss100_sigma``: Q diag(lam) Q^T, Q Haar (seeded), lam log-spaced."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.sign(np.diag(r))
    lam = np.geomspace(condition**-0.5, condition**0.5, dim)
    sigma = (q * lam) @ q.T
    return 0.5 * (sigma + sigma.T)


def data_check(*arrays) -> float:
    """Sum of |x| over the data arrays (the same function is in common.py)."""
    return float(sum(np.abs(np.asarray(a, dtype=np.float64)).sum() for a in arrays))


def logreg():
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    X = np.asarray(data.data, dtype=np.float64)
    X = (X - X.mean(0)) / X.std(0)  # as ppl_posteriors.datasets.breast_cancer
    y = np.asarray(data.target, dtype=np.int32)
    with pm.Model() as model:
        b0 = pm.Normal("b0", 0.0, 5.0)
        w = pm.Normal("w", 0.0, 1.0, shape=X.shape[1])
        pm.Bernoulli("y", logit_p=b0 + pm.math.dot(X, w), observed=y)
    return model, ["b0", "w"], data_check(X, y)


def eight_schools():
    y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    with pm.Model() as model:
        mu = pm.Normal("mu", 0.0, 5.0)
        tau = pm.HalfCauchy("tau", 5.0)
        theta_z = pm.Normal("theta_z", 0.0, 1.0, shape=8)
        theta = pm.Deterministic("theta", mu + tau * theta_z)
        pm.Normal("y", theta, sigma, observed=y)
    return model, ["mu", "tau", "theta_z"], data_check(sigma, y)


def gauss100():
    L = np.linalg.cholesky(gauss100_sigma())
    with pm.Model() as model:
        pm.MvNormal("x", mu=np.zeros(L.shape[0]), chol=L)
    return model, ["x"], data_check(L)


TARGETS = {"logreg": logreg, "eight_schools": eight_schools, "gauss100": gauss100}
VARIANTS = {"default": {}, "low_rank": {"low_rank_modified_mass_matrix": True}}


# ----------------------------------------------------------------------------- timing


def median(values):
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(statistics.median(vals)) if vals else float("nan")


def grad_time(compiled, num_iters: int, reps: int = 3) -> float:
    """Seconds per call of nutpie's compiled log density + gradient (the numba C callback
    the sampler calls), timed inside a numba loop that nudges x by 1e-12 * grad."""
    f = compiled.compiled_logp_func.ctypes  # a ctypes pointer numba can call
    n = compiled.n_dim
    ud = compiled.user_data

    @numba.njit
    def loop(iters, x, out, lp, ud):
        acc = 0.0
        for _ in range(iters):
            f(n, x.ctypes, out.ctypes, lp.ctypes, ud.ctypes)
            acc += lp[0]
            for j in range(n):
                x[j] += 1e-12 * out[j]
        return acc

    rng = np.random.default_rng(0)
    x0 = rng.uniform(-0.5, 0.5, n)
    out, lp = np.zeros(n), np.zeros(1)
    loop(10, x0.copy(), out, lp, ud)
    times = []
    for _ in range(reps):
        x = x0.copy()
        t0 = time.perf_counter()
        loop(num_iters, x, out, lp, ud)
        times.append(time.perf_counter() - t0)
    if not np.isfinite(lp[0]):
        raise RuntimeError("nutpie's log density is not finite at the timing point")
    return median(times) / num_iters


def ess_min(trace, names):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = az.convert_to_dataset({n: np.asarray(trace.posterior[n].values) for n in names})
        bulk = float(np.nanmin(az.ess(ds, method="bulk").to_array().values))
        tail = float(np.nanmin(az.ess(ds, method="tail").to_array().values))
    return bulk, tail


def run_once(compiled, names, cfg, seed, opts):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        trace = nutpie.sample(
            compiled,
            draws=cfg["samples"],
            tune=cfg["warmup"],
            chains=cfg["chains"],
            cores=cfg["cores"],
            seed=seed,
            save_warmup=True,
            progress_bar=False,
            target_accept=0.8,
            maxdepth=10,
            **opts,
        )
        run_s = time.perf_counter() - t0
    bulk, tail = ess_min(trace, names)
    steps = int(trace.sample_stats["n_steps"].values.sum()) + int(trace.warmup_sample_stats["n_steps"].values.sum())
    return {
        "run_s": run_s,
        "ess_bulk": bulk,
        "ess_tail": tail,
        "grad_evals": steps,
        "divergences": int(trace.sample_stats["diverging"].values.sum()),
        "warnings": sorted({f"{w.category.__name__}: {str(w.message)[:80]}" for w in caught
                            if not issubclass(w.category, (DeprecationWarning, FutureWarning))}),
    }


def bench_target(name, cfg, reps, variants):
    model, names, check = TARGETS[name]()
    t0 = time.perf_counter()
    compiled = nutpie.compile_pymc_model(model)
    compile_s = time.perf_counter() - t0
    t_grad = grad_time(compiled, cfg["grad_iters"])
    print(f"\n### {name}: nutpie compile {compile_s:.1f} s, one gradient {t_grad * 1e6:.2f} us, "
          f"n_dim {compiled.n_dim}", flush=True)
    rows = []
    for variant in variants:
        opts = VARIANTS[variant]
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        run_once(compiled, names, cfg, 1000, opts)  # warm-up, discarded
        results = [run_once(compiled, names, cfg, seed, opts) for seed in range(reps)]
        run = median([r["run_s"] for r in results])
        grads = median([r["grad_evals"] for r in results])
        tool = "nutpie" if variant == "default" else f"nutpie[{variant}]"
        rows.append({
            "target": name,
            "tool": tool,
            "compile_s": compile_s,
            "run_s": run,
            "wall_s": compile_s + run,
            "jit_s": compile_s,
            "ess_bulk": median([r["ess_bulk"] for r in results]),
            "ess_tail": median([r["ess_tail"] for r in results]),
            "ess_bulk_per_s": median([r["ess_bulk"] / r["run_s"] for r in results]),
            "grad_evals": grads,
            "grad_us": t_grad * 1e6,
            "overhead": run / (grads * t_grad),
            "us_per_grad": run / grads * 1e6,
            "divergences": median([r["divergences"] for r in results]),
            "reps": reps,
            "flags": "; ".join(sorted({w for r in results for w in r["warnings"]})),
            "config": ", ".join(f"{k}={v}" for k, v in opts.items()) or "defaults",
            "started_utc": started,
            "data_check": check,
        })
        print(f"  {tool}: run {run:.3f} s, ESS/s {rows[-1]['ess_bulk_per_s']:.0f}", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke check, not a measurement")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions after the warm-up (default 3; 1 with --quick)")
    p.add_argument("--targets", default="logreg,eight_schools,gauss100")
    p.add_argument("--variants", default="default", help="comma-separated subset of default,low_rank")
    p.add_argument("--cores", type=int, default=None, help="nutpie's parallel chains (default: its own, all CPUs)")
    args = p.parse_args(argv)
    if args.quick:
        cfg = {"chains": 4, "warmup": 100, "samples": 100, "grad_iters": 2000}
    else:
        cfg = {"chains": 4, "warmup": 1000, "samples": 1000, "grad_iters": 50000}
    cfg["cores"] = args.cores
    reps = args.reps or (1 if args.quick else 3)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    print("=" * 100)
    print(f"B2 nutpie: {cfg['chains']} chains x {cfg['warmup']} tune x {cfg['samples']} draws, target_accept 0.8, "
          f"maxdepth 10; 1 warm-up + {reps} timed reps (medians)")
    print(f"python {platform.python_version()}, nutpie {nutpie.__version__}, pymc {pm.__version__}, pytensor "
          f"{pytensor.__version__}, numba {numba.__version__}, arviz {az.__version__}, floatX "
          f"{pytensor.config.floatX}, {os.cpu_count()} CPUs; command: {' '.join(sys.argv)}")
    print("=" * 100, flush=True)
    t0 = time.perf_counter()
    rows = []
    for name in args.targets.split(","):
        rows += bench_target(name.strip(), cfg, reps, variants)
    df = pd.DataFrame(rows)
    for k in ("chains", "warmup", "samples"):
        df[k] = cfg[k]
    df["versions"] = f"nutpie {nutpie.__version__}, pymc {pm.__version__}"
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"mcmc_b2_nutpie{'_quick' if args.quick else ''}.csv"
    df.to_csv(path, index=False)
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        print()
        print(df.drop(columns=["flags", "config", "data_check", "versions", "chains", "warmup", "samples"])
              .to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nnutpie total {time.perf_counter() - t0:.0f} s; table in {path}")


if __name__ == "__main__":
    main()
