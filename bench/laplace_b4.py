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

Rows: ours ``pp.Laplace()``; ours ``pp.Laplace(importance_resampling=True)`` (its own
20,000 returned draws, PSIS-resampled from a pool of 80,000: how much of the mode-vs-mean
error it closes); numpyro adam; numpyro Minimize.

Target checks (issue 8, one table): ours' mode and Hessian against a float64 dense
reference built independently of ppl_posteriors (numpyro's potential, minimised by
scipy ``trust-exact`` with ``jax.hessian``, then Newton-polished) to 1e-6; the wall
time of the first call (compile included) and of a second call (cached program) under
1 s; eight schools: a failure status or a warning with advice, never inf/nan draws.

    python bench/laplace_b4.py [--quick] [--reps N] [--targets logreg,eight_schools]
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


def run_ours_ir(target: C.Target, ld, cfg: dict, seed: int) -> dict:
    """pp.Laplace(importance_resampling=True) returning cfg['draws'] draws, PSIS-resampled
    from a pool of 4 x draws; the error columns use these returned draws."""
    method = pp.Laplace(throw=False, importance_resampling=True, num_samples=cfg["draws"])
    with C.capture_warnings() as caught, C.CompileTimer() as ct:
        t0 = time.perf_counter()
        idata = pp.infer(target.model, *target.args, method=method, rng_key=seed, progress=False, **target.kwargs)
        wall = time.perf_counter() - t0
    post = {n: np.asarray(idata.posterior[n].values) for n in target.latent}
    flat, labels = C.flatten(post, target.latent, 2)
    a, msgs = idata.attrs, C.numerical_warnings(caught)
    return {
        "compile_s": float(a["compile_time"]), "run_s": float(a["run_time"]), "wall_s": wall, "jit_s": ct.seconds,
        "flat": flat, "labels": labels, "khat": float(a.get("psis_khat", np.nan)), "messages": msgs,
        "status": str(a["status"]), "flags": [_flag(m) for m in msgs],
        "info": (f"pool {int(a.get('resampling_pool', 0))}, ESS of weights {float(a.get('resampling_ess', np.nan)):.0f}, "
                 f"{int(a.get('resampling_unique', 0))} distinct draws"),
        "ess_w": float(a.get("resampling_ess", np.nan)),
    }


def dense_reference(target: C.Target, ld) -> dict:
    """Mode and Hessian of numpyro's potential (float64, independent of ppl_posteriors):
    scipy ``trust-exact`` from the origin with jax gradients and ``jax.hessian``, then 5 Newton
    steps. Returns flat vectors in ``ld.layout`` order: mode (D,), hessian (D, D) of -log p."""
    import scipy.optimize

    logp, _, _ = C.numpyro_logdensity(target, jax.random.key(0))

    def f(x):
        return -logp(ld.unravel(x))

    fg = jax.jit(jax.value_and_grad(f))
    hess = jax.jit(jax.hessian(f))
    x0 = np.zeros(ld.dim)
    res = scipy.optimize.minimize(lambda x: tuple(np.asarray(v) for v in fg(x)), x0, jac=True,
                                  hess=lambda x: np.asarray(hess(x)), method="trust-exact",
                                  options={"gtol": 1e-12, "maxiter": 1000})
    x = res.x
    for _ in range(5):
        g = np.asarray(fg(x)[1])
        x = x - np.linalg.solve(np.asarray(hess(x)), g)
    h = np.asarray(hess(x))
    return {"mode": x, "hessian": h, "grad_max": float(np.max(np.abs(np.asarray(fg(x)[1])))),
            "converged": bool(res.success)}


def target_checks(target: C.Target, ld, ref_dense: dict, seed: int = 0) -> dict:
    """Ours' pp.Laplace() against the dense reference, the first and second call's wall
    time on a fresh model object (so the first call compiles), and the draws' finiteness."""
    import functools

    model = functools.partial(target.model)  # a new callable: nothing cached for it yet
    walls, idata, msgs = [], None, []
    for i in range(2):
        with C.capture_warnings() as caught:
            t0 = time.perf_counter()
            idata = pp.infer(model, *target.args, method=pp.Laplace(throw=False), rng_key=seed + i, progress=False,
                             **target.kwargs)
            walls.append(time.perf_counter() - t0)
        msgs += C.numerical_warnings(caught)
    from ppl_posteriors.results import compat

    appr = compat.get_group(idata, "approximation")
    mode, prec = np.asarray(appr["mean"].values), np.asarray(appr["precision"].values)
    sd = np.sqrt(np.diag(np.linalg.inv(ref_dense["hessian"]))) if np.all(np.isfinite(ref_dense["hessian"])) else np.nan
    dmode = np.abs(mode - ref_dense["mode"])
    dh = np.max(np.abs(prec - ref_dense["hessian"])) / np.max(np.abs(ref_dense["hessian"]))
    finite = all(np.all(np.isfinite(np.asarray(idata.posterior[n].values))) for n in target.latent)
    a = idata.attrs
    return {
        "target": target.name,
        "mode_abs_err": float(dmode.max()),
        "mode_err_sd": float(np.max(dmode / sd)),
        "hess_rel_err": float(dh),
        "ref_grad_max": ref_dense["grad_max"],
        "first_call_s": walls[0],
        "second_call_s": walls[1],
        "compile_s_2nd": float(a["compile_time"]),
        "draws_finite": finite,
        "status": str(a["status"]),
        "warned": "yes" if msgs else "no",
        "advice": (str(a.get("status_messages", ""))[:110] or "-"),
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


def importance_resampling_table(ir: list) -> pd.DataFrame:
    """Per target: the plain Laplace's and the resampled draws' mean errors (median over reps)
    as the max and the root mean square over parameters of |mean - ref mean| / ref sd, and the
    fraction of the plain error closed (1 - IR / plain)."""
    out = []
    by = {}
    for name, tool, res, ref in ir:
        errs = [np.abs(r["flat"].mean(0) - ref["mean"]) / ref["sd"] if np.all(np.isfinite(r["flat"]))
                else np.full(len(ref["mean"]), np.inf) for r in res]
        by.setdefault(name, {})[tool] = (
            C.median([e.max() for e in errs]), C.median([np.sqrt(np.mean(e**2)) for e in errs]),
            C.median([r.get("ess_w", np.nan) for r in res]))
    for name, d in by.items():
        if "ours" not in d or "ours IR" not in d:
            continue
        (pm, pr, _), (im, irr, ess) = d["ours"], d["ours IR"]
        out.append({"target": name, "plain max": pm, "IR max": im, "closed (max)": 1 - im / pm,
                    "plain rms": pr, "IR rms": irr, "closed (rms)": 1 - irr / pr, "ESS of weights": ess})
    return pd.DataFrame(out)


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
    rows, messages, checks, ir = [], [], [], []
    for name in args.targets.split(","):
        target = C.get_target(name)
        print(f"\n### {name}: {target.description}", flush=True)
        ref = C.nuts_reference(target, **ref_cfg)
        ld = target.log_density()
        checks.append(target_checks(target, ld, dense_reference(target, ld)))
        for tool in ("ours", "ours IR", "numpyro adam", "numpyro Minimize"):
            t0 = time.perf_counter()
            if tool == "ours":
                res = C.repeat(lambda s, t=target, d=ld: run_ours(t, d, cfg, s), reps)
                label = "ours Laplace"
            elif tool == "ours IR":
                res = C.repeat(lambda s, t=target, d=ld: run_ours_ir(t, d, cfg, s), reps)
                label = "ours Laplace + importance_resampling"
            elif tool == "numpyro adam":
                res = C.repeat(lambda s, t=target: run_numpyro(t, cfg, s, "adam"), reps)
                label = "numpyro AutoLaplace (SVI adam)"
            else:
                res = C.repeat(lambda s, t=target: run_numpyro(t, cfg, s, "minimize"), reps)
                label = "numpyro AutoLaplace (Minimize)"
            rows.append(summarise(label, name, res, ref))
            if tool in ("ours", "ours IR"):
                ir.append((name, tool, res, ref))
            messages += [f"{name} {label}: {m}" for r in res for m in r["messages"]]
            print(f"  {label}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    df = pd.DataFrame(rows)
    for name, g in df.groupby("target", sort=False):
        C.print_table(f"B4 {name}", g.drop(columns=["target"]))

    checks = pd.DataFrame(checks)
    C.print_table("B4 targets: mode / Hessian vs float64 dense reference (1e-6), wall < 1 s on a second call, "
                  "eight schools reported and finite", checks, "{:.3g}")
    irdf = importance_resampling_table(ir)
    C.print_table("B4 importance resampling: mean error (mode vs mean) closed, per parameter", irdf, "{:.3g}")

    rat = []
    for name, g in df.groupby("target", sort=False):
        ours = g.iloc[0]
        for _, peer in g.iloc[2:].iterrows():
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
    tag = "laplace_b4_quick" if args.quick else "laplace_b4"
    C.save_table(tag, df, {"cfg": cfg, "ref": ref_cfg, "reps": reps})
    C.save_table(tag + "_ratios", rat)
    C.save_table(tag + "_targets", checks)
    C.save_table(tag + "_importance_resampling", irdf)
    print(f"\nB4 total {time.perf_counter() - t_start:.0f} s; tables in {C.OUT_DIR}/{tag}*.csv")
    print(LEGEND)


LEGEND = """Rows: "ours Laplace + importance_resampling" are the 20,000 draws the call returns, PSIS-resampled
from 80,000 draws of the Gaussian (its run_s / wall_s include drawing and weighting the pool).
Targets table: mode_abs_err max |z* - z*_ref| (unconstrained), mode_err_sd the same in posterior sd;
  hess_rel_err max |P - H_ref| / max |H_ref|; first_call_s / second_call_s: wall time of pp.infer on a
  fresh model (compile included) and of the next call (cached program); draws_finite, status, warned.
Columns (medians over the timed reps):
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
