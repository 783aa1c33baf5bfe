"""Does nutpie's mass matrix beat Stan's diagonal? pp.NUTS(mass_matrix=...) side by side.

B2 settings (4 chains x 1000 warmup x 1000 draws, float64, target_accept 0.8) on
eight schools (non-centred) and gauss100. For each target, mass matrix and seed: one
call that compiles (discarded), then one timed call from the cache. Reported per row
(medians over seeds): min bulk ESS, bulk ESS per 1000 gradient evaluations (warmup
included), bulk ESS per CPU second (``time.process_time`` of the cached call: the
machine is shared, so wall time is noisy), and the ratios to ``diag`` of the same seed.

    python bench/mcmc_mass_matrix.py [--seeds 3] [--targets eight_schools,gauss100]
        [--mass-matrices diag,nutpie,low_rank,dense]
"""

# ruff: noqa: I001, E402  (common switches JAX to float64 before anything else)
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: F401  (float64, progress bars off)
import numpy as np
import pandas as pd

import ppl_posteriors as pp
from common import ess_min, get_target, print_table, save_table
from ppl_posteriors.results import compat


def run(target, mass_matrix: str, seed: int) -> dict:
    cfg = pp.NUTS(num_chains=4, num_warmup=1000, num_samples=1000, mass_matrix=mass_matrix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.infer(target.model, *target.args, method=cfg, rng_key=10_000 + seed, progress=False, **target.kwargs)
        t0 = time.process_time()
        idata = pp.infer(target.model, *target.args, method=cfg, rng_key=seed, progress=False, **target.kwargs)
        cpu = time.process_time() - t0
    post = compat.get_group(idata, "posterior")
    draws = {n: post[n].values for n in target.latent}
    bulk, tail = ess_min(draws, target.latent)
    grads = int(idata.attrs["grad_evals"])
    div = int(idata.attrs.get("num_divergent", 0))
    return {"target": target.name, "mass_matrix": mass_matrix, "seed": seed, "bulk_ess": bulk, "tail_ess": tail,
            "grad_evals": grads, "cpu_s": cpu, "ess_per_kgrad": 1000 * bulk / grads, "ess_per_cpu_s": bulk / cpu,
            "divergences": div}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--targets", default="eight_schools,gauss100")
    p.add_argument("--mass-matrices", default="diag,nutpie,low_rank")
    a = p.parse_args(argv)
    rows = []
    for name in a.targets.split(","):
        target = get_target(name)
        for seed in range(a.seeds):
            for mm in a.mass_matrices.split(","):
                rows.append(run(target, mm, seed))
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    table(pd.DataFrame(rows), a.seeds)


def table(df, seeds):
    """Medians over seeds of each (target, mass matrix), with per-seed ratios to diag."""
    save_table("mcmc_mass_matrix_runs", df)
    base = df[df.mass_matrix == "diag"].set_index(["target", "seed"])
    for col in ("ess_per_kgrad", "ess_per_cpu_s"):
        df[col + "_vs_diag"] = [getattr(r, col) / base.loc[(r.target, r.seed), col]
                                if (r.target, r.seed) in base.index else np.nan for r in df.itertuples()]
    med = df.groupby(["target", "mass_matrix"]).agg(
        {c: statistics.median for c in ("bulk_ess", "tail_ess", "grad_evals", "cpu_s", "ess_per_kgrad",
                                        "ess_per_cpu_s", "ess_per_kgrad_vs_diag", "ess_per_cpu_s_vs_diag",
                                        "divergences")}
    ).reset_index()
    print_table(f"NUTS mass matrices, medians over {seeds} seeds", med)
    save_table("mcmc_mass_matrix", med, {"seeds": seeds})
    return med


if __name__ == "__main__":
    main()
