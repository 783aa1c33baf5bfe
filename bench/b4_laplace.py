"""B4: Laplace approximation of PPL models: ppl_posteriors vs numpyro AutoLaplaceApproximation.

Targets (BENCHMARKS.md B4): the B2 logreg and eight schools (non-centred), float64.
numpyro's AutoLaplaceApproximation is fitted as numpyro documents it, with SVI +
Trace_ELBO and adam (``--np-steps`` steps, default 5000, lr ``--np-lr``, default 1e-2),
and with ``numpyro.optim.Minimize`` (BFGS; ``svi.init`` + one ``svi.update``, the
example of numpyro's docs). Accuracy against the long NUTS reference
(common.nuts_reference, 4 x 5000 draws) from 20,000 draws of each approximation in the
constrained space: max |mean - ref mean| / ref sd and max |sd / ref sd - 1| over the
latent parameters. Ours' PSIS k-hat warnings are recorded in the "flagged" column (and
printed), not suppressed.

    python bench/b4_laplace.py [--quick] [--reps N] [--targets logreg,eight_schools]
"""

# ruff: noqa: I001  (common must be imported first: it switches JAX to float64)
from __future__ import annotations

import time

import common as C  # first: it sets float64  # isort: skip
import jax
import numpy as np
import numpyro
import pandas as pd
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoLaplaceApproximation

import ppl_posteriors as pp


def _flag(message: str) -> str:
    parts = message.split(":")
    return parts[1].strip() if len(parts) > 2 and parts[0].strip() == "laplace" else message[:50]


def run_ours(target: C.Target, ld, cfg: dict, seed: int) -> dict:
    """pp.Laplace() with its defaults (1000 draws returned, PSIS k-hat from 4000); the
    error columns use 20,000 more draws from the stored approximation."""
    r = C.run_pp_approximation(target, ld, pp.Laplace(throw=False), seed, cfg["draws"])
    a, msgs = r["idata"].attrs, r["messages"]
    return {
        **r,
        "status": str(a["status"]),
        "flags": [_flag(m) for m in msgs],
        "info": f"{int(a['map_steps'])} BFGS steps, Newton decrement {float(a['newton_decrement']):.2g}",
    }


def run_numpyro(target: C.Target, cfg: dict, seed: int, optimizer: str) -> dict:
    """AutoLaplaceApproximation + SVI(Trace_ELBO). ``optimizer``: "adam" (svi.run for
    cfg['np_steps'] steps) or "minimize" (numpyro.optim.Minimize: svi.init + svi.update).
    The Hessian is computed by sample_posterior, which is part of wall_s and sample_s."""
    guide = AutoLaplaceApproximation(target.model)
    k_fit, k_draw, k_small = jax.random.split(jax.random.key(seed), 3)
    with C.capture_warnings() as caught, C.CompileTimer() as ct:
        t0 = time.perf_counter()
        if optimizer == "adam":
            svi = SVI(target.model, guide, numpyro.optim.Adam(cfg["np_lr"]), Trace_ELBO())
            res = svi.run(k_fit, cfg["np_steps"], *target.args, progress_bar=False, **target.kwargs)
            params = C.block(res.params)
            info = f"{cfg['np_steps']} adam({cfg['np_lr']:g}) steps"
        else:
            svi = SVI(target.model, guide, numpyro.optim.Minimize(method="BFGS"), Trace_ELBO())
            state = svi.init(k_fit, *target.args, **target.kwargs)
            state, loss = svi.update(state, *target.args, **target.kwargs)
            params = C.block(svi.get_params(state))
            info = "Minimize(BFGS)"
        t_fit = time.perf_counter() - t0
        compile_fit = ct.seconds
        t1 = time.perf_counter()
        small = C.block(guide.sample_posterior(k_small, params, sample_shape=(1000,)))  # as a user would
        t_sample = time.perf_counter() - t1
        draws = guide.sample_posterior(k_draw, params, sample_shape=(cfg["draws"],))
    flat, labels = C.flatten(draws, target.latent, 1)
    del small
    msgs = [f"{w.category.__name__}: {w.message}" for w in caught]
    return {
        "compile_s": compile_fit,
        "run_s": t_fit - compile_fit,
        "wall_s": t_fit + t_sample,
        "jit_s": ct.seconds,
        "sample_s": t_sample,
        "flat": flat,
        "labels": labels,
        "status": "",
        "khat": np.nan,
        "flags": [m[:60] for m in msgs],
        "messages": msgs,
        "info": info,
    }


def summarise(tool: str, target: str, results: list[dict], ref: dict) -> dict:
    acc = [C.accuracy(r["flat"], r["labels"], ref) for r in results]
    mean_err = [a["mean_err"] for a in acc]
    mid = acc[int(np.argsort(mean_err)[len(mean_err) // 2])]
    flags = sorted({f for r in results for f in r["flags"]})
    khat = C.median([r["khat"] for r in results])
    return {
        "target": target,
        "tool": tool,
        "compile_s": C.median([r["compile_s"] for r in results]),
        "run_s": C.median([r["run_s"] for r in results]),
        "wall_s": C.median([r["wall_s"] for r in results]),
        "sample_s": C.median([r.get("sample_s", np.nan) for r in results]),
        "mean_err": C.median(mean_err),
        "mean_err_rng": f"{min(mean_err):.3g}-{max(mean_err):.3g}",
        "mean_err_at": mid["mean_err_at"],
        "sd_err": C.median([a["sd_err"] for a in acc]),
        "sd_err_rng": f"{min(a['sd_err'] for a in acc):.3g}-{max(a['sd_err'] for a in acc):.3g}",
        "sd_err_at": mid["sd_err_at"],
        "flagged": ("yes: " + ", ".join(flags)) if flags else "no",
        "khat": khat,
        "status": ",".join(sorted({r["status"] for r in results} - {""})),
        "info": results[0]["info"],
        "reps": len(results),
    }


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--targets", default="logreg,eight_schools")
    p.add_argument("--np-steps", type=int, default=None, help="adam steps for numpyro AutoLaplace (default 5000)")
    p.add_argument("--np-lr", type=float, default=1e-2)
    args = p.parse_args(argv)
    if args.quick:
        cfg = {"draws": 5000, "np_steps": args.np_steps or 500, "np_lr": args.np_lr}
        ref_cfg = {"num_samples": 500, "num_warmup": 500}
    else:
        cfg = {"draws": 20_000, "np_steps": args.np_steps or 5000, "np_lr": args.np_lr}
        ref_cfg = {"num_samples": 5000, "num_warmup": 2000}
    reps = args.reps or (1 if args.quick else 3)
    C.header(f"B4 Laplace: ours vs numpyro AutoLaplaceApproximation; errors from {cfg['draws']} constrained draws "
             f"vs NUTS reference; 1 warm-up + {reps} timed reps (medians)")
    t_start = time.perf_counter()
    rows, messages = [], []
    for name in args.targets.split(","):
        target = C.get_target(name)
        print(f"\n### {name}: {target.description}", flush=True)
        ref = C.nuts_reference(target, **ref_cfg)
        ld = target.log_density()
        for tool in ("ours", "numpyro adam", "numpyro Minimize"):
            t0 = time.perf_counter()
            if tool == "ours":
                res = C.repeat(lambda s, t=target, d=ld: run_ours(t, d, cfg, s), reps)
                label = "ours Laplace"
            elif tool == "numpyro adam":
                res = C.repeat(lambda s, t=target: run_numpyro(t, cfg, s, "adam"), reps)
                label = "numpyro AutoLaplace (SVI adam)"
            else:
                res = C.repeat(lambda s, t=target: run_numpyro(t, cfg, s, "minimize"), reps)
                label = "numpyro AutoLaplace (Minimize)"
            rows.append(summarise(label, name, res, ref))
            messages += [f"{name} {label}: {m}" for r in res for m in r["messages"]]
            print(f"  {label}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    df = pd.DataFrame(rows)
    for name, g in df.groupby("target", sort=False):
        C.print_table(f"B4 {name}", g.drop(columns=["target"]))

    rat = []
    for name, g in df.groupby("target", sort=False):
        ours = g.iloc[0]
        for _, peer in g.iloc[1:].iterrows():
            rat.append({
                "target": name,
                "peer": peer.tool,
                "run ours/peer": ours.run_s / peer.run_s,
                "wall ours/peer": ours.wall_s / peer.wall_s,
                "mean_err ours/peer": ours.mean_err / peer.mean_err,
                "sd_err ours/peer": ours.sd_err / peer.sd_err,
            })
    rat = pd.DataFrame(rat)
    C.print_table("B4 ratios ours / peer (< 1: ours faster / more accurate)", rat, "{:.3g}")
    if messages:
        print("Warnings raised (the 'flagged' column):")
        for line in C.compact_warnings(messages):
            print("  " + line)
    tag = "b4_laplace_quick" if args.quick else "b4_laplace"
    C.save_table(tag, df, {"cfg": cfg, "ref": ref_cfg, "reps": reps})
    C.save_table(tag + "_ratios", rat)
    print(f"\nB4 total {time.perf_counter() - t_start:.0f} s; tables in {C.OUT_DIR}/{tag}*.csv")
    print(LEGEND)


LEGEND = """Columns (medians over the timed reps):
  compile_s  ours: idata.attrs['compile_time'] (every pp.infer call compiles); numpyro: tracing + compiling
             inside the fit call (svi.run, or svi.init + svi.update), measured with jax.monitoring events.
  run_s      the fit without compile. ours: attrs['run_time'] = BFGS + Newton polishing + Hessian + Cholesky
             + 1000 draws and their log densities (for PSIS); numpyro: the optimisation only.
  wall_s     one fit as a user makes it, up to 1000 usable draws: ours pp.infer(method=pp.Laplace());
             numpyro the fit + guide.sample_posterior(1000 draws), which computes the Hessian (sample_s).
  mean_err   max over latent parameters |mean - ref mean| / ref sd (a Laplace approximation is centred at
             the mode, so skewed posteriors give a mean error even when it works as designed);
  sd_err     max |sd / ref sd - 1|; *_at: where the maximum is (rep with the median mean error);
             *_rng: min-max over the timed reps.
  flagged    warnings raised by the call (ours: pp.NumericalWarning, e.g. PSIS k-hat above threshold =
             poor_approximation, map_not_converged; numpyro: its UserWarnings, e.g. a singular Hessian); khat: ours' PSIS k-hat from the 1000 draws of the call; status: ours'
             idata.attrs['status']. Ours is run with throw=False so that a failure is recorded, not raised."""


if __name__ == "__main__":
    main()
