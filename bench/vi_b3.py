"""B3 side by side: our VI guides vs numpyro SVI autoguides vs BlackJAX VI on the logreg posterior.

Target: the B2 logistic regression on breast cancer (31 parameters), float64. Every tool runs
the same optimiser (adam(1e-2)), the same number of steps and one Monte Carlo draw per step:

* ours: ``pp.MeanFieldVI``, ``pp.FullRankVI``, ``pp.LowRankVI(rank=4)``, ``pp.FlowVI(flow="maf")``
  (through ``pp.infer``; compiled once, the second call reuses the program);
* numpyro 0.22 ``SVI`` + ``Trace_ELBO`` with ``AutoNormal``, ``AutoMultivariateNormal``,
  ``AutoIAFNormal`` (``svi.run`` traces and compiles on every call);
* BlackJAX 1.7.1 ``meanfield_vi`` and ``fullrank_vi`` in one jitted ``lax.scan``
  (compiled on the first call, reused after).

For each tool: the wall time of a first call (compile included) and of a second call with
a new seed, steps per second of the second call's optimisation (steps / run time without
compile), and accuracy of the second call against the long NUTS reference
(bench/common.nuts_reference, 4 x 5000 draws): max |mean - ref| / ref sd and
max |sd / ref sd - 1| over the 31 parameters, from ``draws`` draws of the fitted
approximation. Ratios ours / peer for the matching families follow.

    python bench/vi_b3.py [--quick] [--steps N]

Writes the tables to bench/out/vi_b3.txt (vi_b3_quick.txt with --quick).
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


def ours(target, ld, method, steps: int, draws: int) -> list[dict]:
    out = []
    for seed in (0, 1):
        r = C.run_pp_approximation(target, ld, method, seed, draws)
        out.append({"wall_s": r["wall_s"], "run_s": r["run_s"], "flat": r["flat"], "labels": r["labels"],
                    "khat": r["khat"], "flags": "; ".join(sorted({m.split(":")[1].strip() for m in r["messages"]
                                                                   if ":" in m}))})
    return out


def numpyro_svi(target, guide_cls, steps: int, draws: int) -> list[dict]:
    out = []
    for seed in (0, 1):
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
                    "khat": np.nan, "flags": ""})
    return out


def blackjax_vi(target, family, steps: int, draws: int) -> list[dict]:
    logdensity_fn, init, constrain = C.numpyro_logdensity(target, jax.random.key(0))
    vi = family(logdensity_fn, OPT, num_samples=1)
    constrain = jax.jit(jax.vmap(constrain))

    def fit(key, position):
        k_fit, k_draw = jax.random.split(key)
        state = vi.init(position)

        def step(state, k):
            state, _info = vi.step(k, state)
            return state, None

        state, _ = jax.lax.scan(step, state, jax.random.split(k_fit, steps))
        return state

    compiled, out = None, []
    for seed in (0, 1):
        key = jax.random.key(seed)
        t0 = time.perf_counter()
        if compiled is None:
            compiled = jax.jit(fit).lower(key, init).compile()
        t1 = time.perf_counter()
        state = C.block(compiled(key, init))
        t2 = time.perf_counter()
        unc = vi.sample(jax.random.fold_in(key, 1), state, draws)
        flat, labels = C.flatten(constrain(unc), target.latent, 1)
        out.append({"wall_s": t2 - t0, "run_s": t2 - t1, "flat": flat, "labels": labels, "khat": np.nan, "flags": ""})
    return out


def row(tool: str, family: str, res: list[dict], ref: dict, steps: int) -> dict:
    first, second = res
    acc = C.accuracy(second["flat"], second["labels"], ref)
    return {"tool": tool, "family": family, "wall_first_s": first["wall_s"], "wall_second_s": second["wall_s"],
            "run_s": second["run_s"], "steps_per_s": steps / second["run_s"], "mean_err": acc["mean_err"],
            "sd_err": acc["sd_err"], "khat": second["khat"], "flags": second["flags"]}


PAIRS = [("ours MeanFieldVI", "numpyro AutoNormal"), ("ours MeanFieldVI", "blackjax meanfield_vi"),
         ("ours FullRankVI", "numpyro AutoMultivariateNormal"), ("ours FullRankVI", "blackjax fullrank_vi"),
         ("ours LowRankVI(rank=4)", "numpyro AutoMultivariateNormal"), ("ours FlowVI(maf)", "numpyro AutoIAFNormal")]


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args(argv)
    steps = args.steps or (500 if args.quick else 5000)
    draws = 5000 if args.quick else 50_000
    ref_cfg = {"num_samples": 500, "num_warmup": 500} if args.quick else {"num_samples": 5000, "num_warmup": 2000}
    buf = io.StringIO()

    def say(*a):
        print(*a, flush=True)
        print(*a, file=buf)

    with redirect_stdout(buf):
        C.header(f"B3 VI side by side on logreg: {steps} steps adam(1e-2), 1 draw per step; errors from {draws} "
                 "draws vs NUTS reference; first call then second call (new seed)")
    print(buf.getvalue(), end="")
    target = C.get_target("logreg")
    ref = C.nuts_reference(target, **ref_cfg)
    ld = target.log_density()
    common = dict(num_steps=steps, optimizer=OPT, num_samples=1000)
    tools = [
        ("ours MeanFieldVI", "meanfield", lambda: ours(target, ld, pp.MeanFieldVI(**common), steps, draws)),
        ("ours FullRankVI", "fullrank", lambda: ours(target, ld, pp.FullRankVI(**common), steps, draws)),
        ("ours LowRankVI(rank=4)", "lowrank", lambda: ours(target, ld, pp.LowRankVI(rank=4, **common), steps, draws)),
        ("ours FlowVI(maf)", "flow", lambda: ours(target, ld, pp.FlowVI(flow="maf", **common), steps, draws)),
        ("numpyro AutoNormal", "meanfield", lambda: numpyro_svi(target, AutoNormal, steps, draws)),
        ("numpyro AutoMultivariateNormal", "fullrank", lambda: numpyro_svi(target, AutoMultivariateNormal, steps, draws)),
        ("numpyro AutoIAFNormal", "flow", lambda: numpyro_svi(target, AutoIAFNormal, steps, draws)),
        ("blackjax meanfield_vi", "meanfield", lambda: blackjax_vi(target, blackjax.meanfield_vi, steps, draws)),
        ("blackjax fullrank_vi", "fullrank", lambda: blackjax_vi(target, blackjax.fullrank_vi, steps, draws)),
    ]
    rows = []
    for name, family, fn in tools:
        t0 = time.perf_counter()
        try:
            rows.append(row(name, family, fn(), ref, steps))
        except Exception as e:  # a tool that fails is reported, not hidden
            rows.append({"tool": name, "family": family, "flags": f"FAILED: {type(e).__name__}: {str(e)[:80]}"})
        print(f"  {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    df = pd.DataFrame(rows)
    by = {r["tool"]: r for r in rows}
    ratios = []
    for a, b in PAIRS:
        ra, rb = by[a], by[b]
        if "mean_err" not in ra or "mean_err" not in rb:
            continue
        ratios.append({"ours": a, "peer": b, "wall_second ours/peer": ra["wall_second_s"] / rb["wall_second_s"],
                       "wall_first ours/peer": ra["wall_first_s"] / rb["wall_first_s"],
                       "steps/s ours/peer": ra["steps_per_s"] / rb["steps_per_s"],
                       "mean_err ours/peer": ra["mean_err"] / rb["mean_err"],
                       "sd_err ours/peer": ra["sd_err"] / rb["sd_err"]})
    with redirect_stdout(buf):
        C.print_table("B3 VI, logreg (second call unless stated)", df)
        C.print_table("ratios ours / peer (wall, errors: < 1 better; steps/s: > 1 better)", pd.DataFrame(ratios),
                      "{:.3g}")
        print(LEGEND)
    text = buf.getvalue()
    print(text[text.index("--- B3 VI"):] if "--- B3 VI" in text else text)
    C.OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = C.OUT_DIR / ("vi_b3_quick.txt" if args.quick else "vi_b3.txt")
    path.write_text(text)
    print(f"written {path}")


LEGEND = """Columns: wall_first_s / wall_second_s: one call as a user makes it (ours: pp.infer, with tracing,
compile, 1000 draws + PSIS k-hat and InferenceData; numpyro: svi.run, which traces and compiles every call;
blackjax: compile (first call only) + the jitted scan). run_s: the second call's optimisation without
compile (ours: attrs['run_time'], which includes drawing 4000 draws and their log densities; numpyro:
svi.run minus jax compile events; blackjax: the compiled scan). steps_per_s = steps / run_s.
mean_err = max_p |mean - ref| / ref sd; sd_err = max_p |sd / ref sd - 1| (second call's fit, many draws).
khat: ours' PSIS k-hat (attrs['psis_khat']). The machine was shared with other jobs: timings are noisy."""


if __name__ == "__main__":
    main()
