"""B3 side by side: our VI guides vs numpyro SVI autoguides vs BlackJAX VI on the logreg posterior.

Target: the B2 logistic regression on breast cancer (31 parameters), float64, against the
long NUTS reference (bench/common.nuts_reference, 4 x 5000 draws).

Table 1, same algorithm: every tool runs the same optimiser (constant adam(1e-2)), the
same number of steps and one Monte Carlo draw per step:

* ours: ``pp.MeanFieldVI``, ``pp.FullRankVI``, ``pp.LowRankVI(rank=4)``, ``pp.FlowVI(flow="maf")``
  with ``optimizer=optax.adam(1e-2)`` (through ``pp.infer``; compiled once, later calls reuse it);
* numpyro 0.22 ``SVI`` + ``Trace_ELBO`` with ``AutoNormal``, ``AutoMultivariateNormal``,
  ``AutoIAFNormal`` (``svi.run`` traces and compiles on every call);
* BlackJAX 1.7.1 ``meanfield_vi`` and ``fullrank_vi`` (``num_samples=1``) in one jitted
  ``lax.scan`` (compiled on the first call, reused after).

Table 2, ours as a user gets it (defaults: Adam 1e-2 annealed to 0 by a cosine over the
steps) and the B3 targets' settings (``init="laplace"``: start at the Laplace
approximation, standardised parametrisation; more particles; STL), plus BlackJAX
``fullrank_vi`` with 100 draws per step (its accurate setting). ``ours fixed cost`` is
one step: the draws for PSIS k-hat (4000), their log densities and the result.

For each row: the wall time of a first call (compile included) and the median over
``--reps`` later calls with new seeds, steps per second of the optimisation (steps /
run time without compile), and accuracy against the reference: max |mean - ref| / ref sd
and max |sd / ref sd - 1| over the 31 parameters, from ``draws`` draws of the fitted
approximation (median over the reps). Ratios ours / peer for matching families follow,
and the targets of issue 9 are checked at the end.

    python bench/vi_b3.py [--quick] [--steps N] [--reps N] [--variants]

Writes the tables to bench/out/vi_b3.txt and vi_b3*.csv (``*_quick*`` with --quick).
"""

# ruff: noqa: I001  (common must be imported first: it switches JAX to float64)
from __future__ import annotations

import io
import time
from contextlib import redirect_stdout

import common as C  # first: it sets float64  # isort: skip
import blackjax
import jax
import numpy as np
import numpyro
import optax
import pandas as pd
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormal

import ppl_posteriors as pp

OPT = optax.adam(1e-2)  # one object: our configs that hold it are equal (compile once)


def _flags(r) -> str:
    return "; ".join(sorted({m.split(":")[1].strip() for m in r["messages"] if ":" in m}))


def ours(target, ld, method, steps: int, draws: int, reps: int) -> list[dict]:
    out = []
    for seed in range(reps + 1):
        r = C.run_pp_approximation(target, ld, method, seed, draws)
        a = r["idata"].attrs
        out.append({"wall_s": r["wall_s"], "run_s": r["run_s"], "flat": r["flat"], "labels": r["labels"],
                    "khat": r["khat"], "steps": int(a.get("num_steps_run", steps)), "flags": _flags(r)})
    return out


def numpyro_svi(target, guide_cls, steps: int, draws: int, reps: int) -> list[dict]:
    out = []
    for seed in range(reps + 1):
        guide = guide_cls(target.model)
        svi = SVI(target.model, guide, numpyro.optim.Adam(1e-2), Trace_ELBO())
        k_fit, k_draw = jax.random.split(jax.random.key(seed))
        with C.CompileTimer() as ct:
            t0 = time.perf_counter()
            res = svi.run(k_fit, steps, *target.args, progress_bar=False, **target.kwargs)
            C.block(res.params)
            wall = time.perf_counter() - t0
        d = guide.sample_posterior(k_draw, res.params, sample_shape=(draws,))
        flat, labels = C.flatten(d, target.latent, 1)
        out.append({"wall_s": wall, "run_s": wall - ct.seconds, "flat": flat, "labels": labels,
                    "khat": np.nan, "steps": steps, "flags": ""})
    return out


def blackjax_vi(target, family, steps: int, draws: int, reps: int, num_samples: int = 1) -> list[dict]:
    logdensity_fn, init, constrain = C.numpyro_logdensity(target, jax.random.key(0))
    vi = family(logdensity_fn, OPT, num_samples=num_samples)
    constrain = jax.jit(jax.vmap(constrain))

    def fit(key, position):
        state = vi.init(position)

        def step(state, k):
            state, _info = vi.step(k, state)
            return state, None

        state, _ = jax.lax.scan(step, state, jax.random.split(key, steps))
        return state

    compiled, out = None, []
    for seed in range(reps + 1):
        key = jax.random.key(seed)
        t0 = time.perf_counter()
        if compiled is None:
            compiled = jax.jit(fit).lower(key, init).compile()
        t1 = time.perf_counter()
        state = C.block(compiled(key, init))
        t2 = time.perf_counter()
        unc = vi.sample(jax.random.fold_in(key, 1), state, draws)
        flat, labels = C.flatten(constrain(unc), target.latent, 1)
        out.append({"wall_s": t2 - t0, "run_s": t2 - t1, "flat": flat, "labels": labels, "khat": np.nan,
                    "steps": steps, "flags": ""})
    return out


def row(tool: str, family: str, res: list[dict], ref: dict) -> dict:
    first, later = res[0], res[1:]
    acc = [C.accuracy(r["flat"], r["labels"], ref) for r in later]
    run_s = C.median([r["run_s"] for r in later])
    return {"tool": tool, "family": family, "steps": later[0]["steps"], "wall_first_s": first["wall_s"],
            "wall_s": C.median([r["wall_s"] for r in later]), "run_s": run_s,
            "steps_per_s": later[0]["steps"] / run_s,
            "mean_err": C.median([a["mean_err"] for a in acc]), "sd_err": C.median([a["sd_err"] for a in acc]),
            "err_range": (f"{min(a['mean_err'] for a in acc):.3f}-{max(a['mean_err'] for a in acc):.3f} / "
                          f"{min(a['sd_err'] for a in acc):.3f}-{max(a['sd_err'] for a in acc):.3f}"),
            "khat": C.median([r["khat"] for r in later]), "flags": later[-1]["flags"]}


PAIRS = [("ours MeanFieldVI", "numpyro AutoNormal"), ("ours MeanFieldVI", "blackjax meanfield_vi"),
         ("ours FullRankVI", "numpyro AutoMultivariateNormal"), ("ours FullRankVI", "blackjax fullrank_vi"),
         ("ours LowRankVI(rank=4)", "numpyro AutoMultivariateNormal"), ("ours FlowVI(maf)", "numpyro AutoIAFNormal"),
         ("ours FullRankVI target", "blackjax fullrank_vi 100 draws"),
         ("ours FullRankVI target", "numpyro AutoMultivariateNormal")]


def tools(target, ld, steps: int, draws: int, reps: int, quick: bool) -> list[tuple]:
    same = dict(num_steps=steps, optimizer=OPT, num_samples=1000)
    r = reps

    def o(method):
        return lambda: ours(target, ld, method, steps, draws, r)

    fr_steps = 200 if quick else 1000
    table1 = [
        ("ours MeanFieldVI", "meanfield", o(pp.MeanFieldVI(**same))),
        ("ours FullRankVI", "fullrank", o(pp.FullRankVI(**same))),
        ("ours LowRankVI(rank=4)", "lowrank", o(pp.LowRankVI(rank=4, **same))),
        ("ours FlowVI(maf)", "flow", o(pp.FlowVI(flow="maf", **same))),
        ("numpyro AutoNormal", "meanfield", lambda: numpyro_svi(target, AutoNormal, steps, draws, r)),
        ("numpyro AutoMultivariateNormal", "fullrank",
         lambda: numpyro_svi(target, AutoMultivariateNormal, steps, draws, r)),
        ("numpyro AutoIAFNormal", "flow", lambda: numpyro_svi(target, AutoIAFNormal, steps, draws, r)),
        ("blackjax meanfield_vi", "meanfield", lambda: blackjax_vi(target, blackjax.meanfield_vi, steps, draws, r)),
        ("blackjax fullrank_vi", "fullrank", lambda: blackjax_vi(target, blackjax.fullrank_vi, steps, draws, r)),
    ]
    table2 = [
        ("ours fixed cost (1 step)", "meanfield", o(pp.MeanFieldVI(num_steps=1, optimizer=OPT))),
        ("ours MeanFieldVI()", "meanfield", o(pp.MeanFieldVI(num_steps=steps))),
        ("ours FullRankVI()", "fullrank", o(pp.FullRankVI(num_steps=steps))),
        ("ours MeanFieldVI target", "meanfield", o(pp.MeanFieldVI(**MEANFIELD_TARGET, num_steps=fr_steps))),
        ("ours FullRankVI target", "fullrank", o(pp.FullRankVI(**FULLRANK_TARGET, num_steps=fr_steps))),
        ("ours FlowVI target", "flow", o(pp.FlowVI(**FLOW_TARGET, num_steps=steps))),
        ("ours MeanFieldVI long (optimum)", "meanfield",
         o(pp.MeanFieldVI(init="laplace", num_steps=4 * steps, num_particles=8))),
        ("blackjax fullrank_vi 100 draws", "fullrank",
         lambda: blackjax_vi(target, blackjax.fullrank_vi, steps, draws, r, num_samples=100)),
    ]
    return table1, table2


# the settings that meet (or come closest to) the B3 targets; see bench/README.md
FULLRANK_TARGET = dict(init="laplace", num_particles=8, estimator="stl")
MEANFIELD_TARGET = dict(init="laplace", num_particles=16)
FLOW_TARGET = dict(flow="maf", init="laplace", affine="triangular")


def variants(target, ld, steps: int, draws: int, reps: int) -> list[tuple]:
    out = []
    for init in ("position", "laplace"):
        for particles in (1, 4, 16):
            for est in ("pathwise", "stl"):
                m = pp.FullRankVI(init=init, num_particles=particles, estimator=est, num_steps=steps)
                out.append((f"FullRankVI init={init} particles={particles} {est}", "fullrank",
                            lambda m=m: ours(target, ld, m, steps, draws, reps)))
    return out


RAW: dict[str, list[dict]] = {}  # each row's calls (draws included), for the distance to the optimum


def run_rows(items, ref) -> pd.DataFrame:
    rows = []
    for name, family, fn in items:
        t0 = time.perf_counter()
        try:
            RAW[name] = fn()
            rows.append(row(name, family, RAW[name], ref))
        except Exception as e:  # a tool that fails is reported, not hidden
            rows.append({"tool": name, "family": family, "flags": f"FAILED: {type(e).__name__}: {str(e)[:80]}"})
        print(f"  {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    return pd.DataFrame(rows)


def distance_to_optimum(name: str, optimum: str, ref: dict) -> tuple[float, float]:
    """Median over the later calls of ``name`` of max_p |mean - optimum mean| / ref sd and
    max_p |sd / optimum sd - 1|, the optimum's moments from all calls of ``optimum``."""
    if name not in RAW or optimum not in RAW:
        return np.nan, np.nan
    opt = np.concatenate([r["flat"] for r in RAW[optimum]])
    m_opt, s_opt = opt.mean(0), opt.std(0, ddof=1)
    d = [(np.max(np.abs(r["flat"].mean(0) - m_opt) / ref["sd"]), np.max(np.abs(r["flat"].std(0, ddof=1) / s_opt - 1)))
         for r in RAW[name][1:]]
    return float(np.median([a for a, _ in d])), float(np.median([b for _, b in d]))


def targets(by: dict, ref: dict) -> pd.DataFrame:
    def get(tool, key):
        return by.get(tool, {}).get(key, np.nan)

    mf_opt = distance_to_optimum("ours MeanFieldVI target", "ours MeanFieldVI long (optimum)", ref)
    fr = "ours FullRankVI target"
    rows = [
        {"target": "full-rank within 0.05 / 0.05 in < 1 s (later call, wall)",
         "measured": f"{get(fr, 'mean_err'):.3f} / {get(fr, 'sd_err'):.3f} in {get(fr, 'wall_s'):.2f} s",
         "met": get(fr, "mean_err") <= 0.05 and get(fr, "sd_err") <= 0.05 and get(fr, "wall_s") < 1.0},
        {"target": "mean-field at its converged optimum in < 0.5 s",
         "measured": (f"{get('ours MeanFieldVI target', 'wall_s'):.2f} s; distance to the long run's q: "
                      f"{mf_opt[0]:.3f} / {mf_opt[1]:.3f} (mean in posterior sds / sd ratio - 1)"),
         "met": get("ours MeanFieldVI target", "wall_s") < 0.5 and mf_opt[0] < 0.05 and mf_opt[1] < 0.05},
        {"target": "a flow guide with PSIS k-hat < 0.5",
         "measured": f"k-hat {get('ours FlowVI target', 'khat'):.2f} ({get('ours FlowVI(maf)', 'khat'):.2f} "
                     "with constant adam(1e-2))",
         "met": get("ours FlowVI target", "khat") < 0.5},
    ]
    for a, b in [("ours MeanFieldVI", "numpyro AutoNormal"), ("ours FullRankVI", "numpyro AutoMultivariateNormal"),
                 ("ours FlowVI(maf)", "numpyro AutoIAFNormal")]:
        ratio = get(a, "steps_per_s") / get(b, "steps_per_s")
        net = get(a, "steps_per_s_net") / get(b, "steps_per_s_net")
        rows.append({"target": f"steps/s >= numpyro's (same algorithm): {a} / {b}",
                     "measured": f"{ratio:.2f}x ({net:.2f}x net of ours' fixed cost)", "met": ratio >= 1.0})
    return pd.DataFrame(rows)


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--variants", action="store_true", help="also FullRankVI: init x num_particles x estimator")
    args = p.parse_args(argv)
    steps = args.steps or (500 if args.quick else 5000)
    draws = 5000 if args.quick else 50_000
    reps = args.reps or (1 if args.quick else 3)
    ref_cfg = {"num_samples": 500, "num_warmup": 500} if args.quick else {"num_samples": 5000, "num_warmup": 2000}
    buf = io.StringIO()
    with redirect_stdout(buf):
        C.header(f"B3 VI side by side on logreg: {steps} steps; errors from {draws} draws vs NUTS reference; "
                 f"first call, then medians of {reps} calls with new seeds")
    print(buf.getvalue(), end="")
    target = C.get_target("logreg")
    ref = C.nuts_reference(target, **ref_cfg)
    ld = target.log_density()
    table1, table2 = tools(target, ld, steps, draws, reps, args.quick)
    df1 = run_rows(table1, ref)
    df2 = run_rows(table2, ref)
    df3 = run_rows(variants(target, ld, steps, draws, reps), ref) if args.variants else None
    # ours' steps/s net of the fixed cost of a call (4000 draws + log densities for k-hat, results)
    fixed = float(df2.set_index("tool").get("run_s", pd.Series(dtype=float)).get("ours fixed cost (1 step)", np.nan))
    for df in (df1, df2) + ((df3,) if df3 is not None else ()):
        if "run_s" in df:
            net = df["steps"] / (df["run_s"] - fixed)
            df["steps_per_s_net"] = np.where(df["tool"].str.startswith("ours") & (df["steps"] > 1), net, df["steps_per_s"])
    by = {r["tool"]: r for df in (df1, df2) for r in df.to_dict("records")}
    ratios = []
    for a, b in PAIRS:
        ra, rb = by.get(a, {}), by.get(b, {})
        if "mean_err" not in ra or "mean_err" not in rb or not np.isfinite(ra.get("mean_err", np.nan)):
            continue
        ratios.append({"ours": a, "peer": b, "wall ours/peer": ra["wall_s"] / rb["wall_s"],
                       "wall_first ours/peer": ra["wall_first_s"] / rb["wall_first_s"],
                       "steps/s ours/peer": ra["steps_per_s"] / rb["steps_per_s"],
                       "steps/s net ours/peer": ra["steps_per_s_net"] / rb["steps_per_s_net"],
                       "mean_err ours/peer": ra["mean_err"] / rb["mean_err"],
                       "sd_err ours/peer": ra["sd_err"] / rb["sd_err"]})
    tg = targets(by, ref)
    with redirect_stdout(buf):
        C.print_table("B3 VI, logreg: same algorithm (constant adam(1e-2), 1 draw per step)", df1)
        C.print_table("B3 VI, logreg: ours' defaults and target settings; BlackJAX's accurate setting", df2)
        if df3 is not None:
            C.print_table("B3 variants: FullRankVI init x num_particles x estimator (defaults otherwise)", df3)
        C.print_table("ratios ours / peer (wall, errors: < 1 better; steps/s: > 1 better)", pd.DataFrame(ratios),
                      "{:.3g}")
        C.print_table("issue 9 targets", tg)
        print(LEGEND.format(fr=FULLRANK_TARGET, mf=MEANFIELD_TARGET, flow=FLOW_TARGET))
    text = buf.getvalue()
    print(text[text.index("--- B3 VI"):] if "--- B3 VI" in text else text)
    tag = "vi_b3_quick" if args.quick else "vi_b3"
    C.save_table(tag, pd.concat([df1, df2] + ([df3] if df3 is not None else []), ignore_index=True),
                 {"steps": steps, "draws": draws, "reps": reps, "ref": ref_cfg})
    C.save_table(tag + "_ratios", pd.DataFrame(ratios))
    C.save_table(tag + "_targets", tg)
    path = C.OUT_DIR / f"{tag}.txt"
    path.write_text(text)
    print(f"written {path}")


LEGEND = """Columns: steps: steps run (ours: attrs['num_steps_run']). wall_first_s: the first call as a user makes
it (ours: pp.infer with tracing, compile, fit, 4000 draws + PSIS k-hat, InferenceData; numpyro: svi.run, which
traces and compiles on every call; blackjax: compile + the jitted scan). wall_s: median over later calls (new
seeds; ours and blackjax reuse the compiled program). run_s: the optimisation without compile (ours:
attrs['run_time'], which also draws 4000 points and their log densities for k-hat: see 'ours fixed cost';
numpyro: svi.run minus jax compile events; blackjax: the compiled scan). steps_per_s = steps / run_s;
steps_per_s_net (ours): steps / (run_s - run_s of 'ours fixed cost'), the loop's own speed.
mean_err = max_p |mean - ref| / ref sd; sd_err = max_p |sd / ref sd - 1| (medians over later calls;
err_range: min-max). khat: ours' PSIS k-hat (attrs['psis_khat']). Target settings: FullRankVI {fr},
MeanFieldVI {mf} (both 1000 steps), FlowVI {flow}; 'long (optimum)' is mean-field with 4x the steps and 8
particles, the reference for 'converged'. Timings on a shared machine are noisy: compare rows of one run."""


if __name__ == "__main__":
    main()
