"""B2: NUTS, ppl_posteriors vs numpyro (vectorized chains) vs raw BlackJAX, in one run.

Settings (BENCHMARKS.md B2): 4 chains x 1000 warmup x 1000 draws, float64, target
acceptance 0.8, max tree depth 10, diagonal mass matrix; targets logreg, eight_schools
(non-centred) and gauss100. One warm-up call, then ``--reps`` (default 3) timed calls
with different seeds; the tables show medians.

    python bench/b2_nuts.py [--quick] [--reps N] [--targets logreg,eight_schools,gauss100]
"""

# ruff: noqa: I001  (common must be imported first: it switches JAX to float64)
from __future__ import annotations

import time

import common as C  # first: it sets float64  # isort: skip
import blackjax
import jax
import numpy as np
import pandas as pd
from numpyro.infer import MCMC
from numpyro.infer import NUTS as NumpyroNUTS

import ppl_posteriors as pp

TOOLS = ("ours", "numpyro", "blackjax")


# ----------------------------------------------------------------------------- ours


def run_ours(target: C.Target, cfg: dict, seed: int) -> dict:
    method = pp.NUTS(
        num_chains=cfg["chains"],
        num_warmup=cfg["warmup"],
        num_samples=cfg["samples"],
        target_accept=0.8,
        max_tree_depth=10,
        dense_mass=False,
    )
    with C.capture_warnings() as caught, C.CompileTimer() as ct:
        t0 = time.perf_counter()
        idata = pp.infer(target.model, *target.args, method=method, rng_key=seed, progress=False, **target.kwargs)
        wall = time.perf_counter() - t0
    a = idata.attrs
    draws = {n: idata.posterior[n].values for n in target.latent}
    return {
        "compile_s": float(a["compile_time"]),
        "run_s": float(a["run_time"]),
        "wall_s": wall,
        "jit_s": ct.seconds,
        "grad_evals": int(a["grad_evals"]),
        "divergences": int(np.asarray(idata.sample_stats["diverging"]).sum()),
        "draws": draws,
        "warnings": C.numerical_warnings(caught),
    }


# ----------------------------------------------------------------------------- numpyro


class NumpyroRunner:
    """numpyro NUTS, ``chain_method="vectorized"``. Warmup and sampling are two calls
    (``mcmc.warmup(collect_warmup=True)`` then ``mcmc.run``) so that the leapfrog steps of
    the warmup can be counted. numpyro re-traces and re-compiles inside every call, so
    compile time is measured with :class:`common.CompileTimer` and run time is the time
    of both calls minus that."""

    def __init__(self, target: C.Target, cfg: dict):
        self.target = target
        self.mcmc = MCMC(
            NumpyroNUTS(target.model, target_accept_prob=0.8, max_tree_depth=10, dense_mass=False),
            num_warmup=cfg["warmup"],
            num_samples=cfg["samples"],
            num_chains=cfg["chains"],
            chain_method="vectorized",
            progress_bar=False,
        )

    def __call__(self, seed: int) -> dict:
        t, m = self.target, self.mcmc
        k_warm, k_run = jax.random.split(jax.random.key(seed))
        with C.capture_warnings() as caught, C.CompileTimer() as ct:
            t0 = time.perf_counter()
            m.warmup(k_warm, *t.args, extra_fields=("num_steps",), collect_warmup=True, **t.kwargs)
            C.block(m.post_warmup_state)
            warm_steps = int(np.asarray(m.get_extra_fields()["num_steps"]).sum())
            m.run(k_run, *t.args, extra_fields=("num_steps",), **t.kwargs)
            samples = C.block(m.get_samples(group_by_chain=True))
            wall = time.perf_counter() - t0
        extra = m.get_extra_fields(group_by_chain=True)
        return {
            "compile_s": ct.seconds,
            "run_s": wall - ct.seconds,
            "wall_s": wall,
            "jit_s": ct.seconds,
            "grad_evals": warm_steps + int(np.asarray(extra["num_steps"]).sum()),
            "divergences": int(np.asarray(extra["diverging"]).sum()),
            "draws": {n: np.asarray(samples[n]) for n in t.latent},
            "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
        }


# ----------------------------------------------------------------------------- blackjax


def blackjax_program(logdensity_fn, num_chains: int, num_warmup: int, num_samples: int):
    """Window adaptation + NUTS, vmapped over chains, as in the BlackJAX docs
    ("sample multiple chains"), warmup and sampling in one jitted function."""
    warmup = blackjax.window_adaptation(blackjax.nuts, logdensity_fn, target_acceptance_rate=0.8)
    kernel = blackjax.nuts.build_kernel()

    def program(rng_key, init_positions):
        k_warm, k_sample = jax.random.split(rng_key)

        def one_warmup(key, position):
            (state, params), info = warmup.run(key, position, num_steps=num_warmup)
            return state, params["step_size"], params["inverse_mass_matrix"], info.info.num_integration_steps.sum()

        states, step_size, imm, warm_steps = jax.vmap(one_warmup)(
            jax.random.split(k_warm, num_chains), init_positions
        )

        def step(key, state, eps, m):
            return kernel(key, state, logdensity_fn, eps, m, max_num_doublings=10)

        def one_step(states, key):
            keys = jax.random.split(key, num_chains)
            states, info = jax.vmap(step)(keys, states, step_size, imm)
            return states, (states.position, info.num_integration_steps, info.is_divergent)

        _, (positions, n_steps, div) = jax.lax.scan(one_step, states, jax.random.split(k_sample, num_samples))
        positions = jax.tree.map(lambda x: jax.numpy.swapaxes(x, 0, 1), positions)
        return positions, warm_steps.sum() + n_steps.sum(), div.sum()

    return program


class BlackjaxRunner:
    """Compiles the program once (first call, timed as compile), then reuses it."""

    def __init__(self, target: C.Target, cfg: dict):
        self.target, self.cfg = target, cfg
        self.compiled = None
        self.compile_s = None
        self.constrain = None

    def __call__(self, seed: int) -> dict:
        cfg = self.cfg
        k_init, k_run = jax.random.split(jax.random.key(seed))
        with C.CompileTimer() as ct:
            t0 = time.perf_counter()
            logdensity_fn, init, constrain = C.numpyro_logdensity(self.target, k_init, cfg["chains"])
            init = C.block(init)
            t_init = time.perf_counter() - t0
        if self.compiled is None:
            program = blackjax_program(logdensity_fn, cfg["chains"], cfg["warmup"], cfg["samples"])
            t0 = time.perf_counter()
            self.compiled = jax.jit(program).lower(k_run, init).compile()
            self.compile_s = time.perf_counter() - t0
            self.constrain = jax.jit(jax.vmap(jax.vmap(constrain)))
        t0 = time.perf_counter()
        positions, grad_evals, div = C.block(self.compiled(k_run, init))
        run_s = time.perf_counter() - t0
        draws = self.constrain(positions)
        return {
            "compile_s": self.compile_s,
            "run_s": run_s,
            "wall_s": t_init + self.compile_s + run_s,
            "jit_s": ct.seconds + self.compile_s,
            "grad_evals": int(grad_evals),
            "divergences": int(div),
            "draws": {n: np.asarray(draws[n]) for n in self.target.latent},
            "warnings": [],
        }


# ----------------------------------------------------------------------------- table


def _flag(message: str) -> str:
    """Short form of a warning: ppl_posteriors' "nuts: poor_mixing: ..." -> "poor_mixing"."""
    parts = message.split(":")
    return parts[1].strip() if len(parts) > 2 and parts[0].strip() == "nuts" else message[:40]


def summarise(tool: str, results: list[dict], target: C.Target, t_grad: float) -> dict:
    ess = [C.ess_min(r["draws"], target.latent) for r in results]
    bulk = [e[0] for e in ess]
    tail = [e[1] for e in ess]
    run = C.median([r["run_s"] for r in results])
    grads = C.median([r["grad_evals"] for r in results])
    compile_s = C.median([r["compile_s"] for r in results])
    flags = sorted({_flag(w) for r in results for w in r["warnings"]})
    return {
        "tool": tool,
        "compile_s": compile_s,
        "run_s": run,
        "wall_s": C.median([r["wall_s"] for r in results]),
        "jit_s": C.median([r["jit_s"] for r in results]),
        "ess_bulk": C.median(bulk),
        "ess_tail": C.median(tail),
        "ess_bulk_per_s": C.median([b / r["run_s"] for b, r in zip(bulk, results, strict=True)]),
        "grad_evals": grads,
        "grad_us": t_grad * 1e6,
        "overhead": run / (grads * t_grad),
        "us_per_grad": run / grads * 1e6,
        "divergences": C.median([r["divergences"] for r in results]),
        "reps": len(results),
        "flags": "; ".join(flags),
    }


def bench_target(name: str, cfg: dict, reps: int) -> pd.DataFrame:
    target = C.get_target(name)
    print(f"\n### {name}: {target.description}", flush=True)
    ld = target.log_density()
    t_grad_ours = C.grad_time(ld.logdensity_fn, ld.init_position, cfg["grad_iters"])
    np_ld, np_init, _ = C.numpyro_logdensity(target, jax.random.key(0))
    t_grad_np = C.grad_time(np_ld, np_init, cfg["grad_iters"])
    print(f"one jitted value_and_grad: ours {t_grad_ours * 1e6:.2f} us, numpyro potential {t_grad_np * 1e6:.2f} us",
          flush=True)
    rows = []
    for tool in TOOLS:
        t0 = time.perf_counter()
        if tool == "ours":
            results = C.repeat(lambda s: run_ours(target, cfg, s), reps)
            t_grad = t_grad_ours
        elif tool == "numpyro":
            results = C.repeat(NumpyroRunner(target, cfg), reps)
            t_grad = t_grad_np
        else:
            results = C.repeat(BlackjaxRunner(target, cfg), reps)
            t_grad = t_grad_np
        rows.append(summarise(tool, results, target, t_grad))
        print(f"  {tool}: done in {time.perf_counter() - t0:.1f} s", flush=True)
        for w in sorted({w for r in results for w in r["warnings"]}):
            print(f"  {tool} warning: {w}", flush=True)
    df = pd.DataFrame(rows)
    df.insert(0, "target", name)
    return df


def ratios(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for target, g in df.groupby("target", sort=False):
        ours = g[g.tool == "ours"].iloc[0]
        for _, peer in g[g.tool != "ours"].iterrows():
            out.append({
                "target": target,
                "peer": peer.tool,
                "run_time ours/peer": ours.run_s / peer.run_s,
                "compile ours/peer": ours.compile_s / peer.compile_s if peer.compile_s > 0 else np.nan,
                "ESS/s ours/peer": ours.ess_bulk_per_s / peer.ess_bulk_per_s,
                "grad_evals ours/peer": ours.grad_evals / peer.grad_evals,
            })
    return pd.DataFrame(out)


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--targets", default="logreg,eight_schools,gauss100")
    args = p.parse_args(argv)
    if args.quick:
        cfg = {"chains": 4, "warmup": 100, "samples": 100, "grad_iters": 200}
    else:
        cfg = {"chains": 4, "warmup": 1000, "samples": 1000, "grad_iters": 5000}
    reps = args.reps or (1 if args.quick else 3)
    C.header(f"B2 NUTS: {cfg['chains']} chains x {cfg['warmup']} warmup x {cfg['samples']} draws, "
             f"target accept 0.8, max tree depth 10, diagonal mass; 1 warm-up + {reps} timed reps (medians)")
    t_start = time.perf_counter()
    tables = []
    for name in args.targets.split(","):
        df = bench_target(name, cfg, reps)
        tables.append(df)
        C.print_table(f"B2 {name}", df.drop(columns=["target"]))
    full = pd.concat(tables, ignore_index=True)
    r = ratios(full)
    C.print_table("B2 ratios ours / peer (run time < 1: ours faster; ESS/s > 1: ours better)", r, "{:.3g}")
    tag = "b2_nuts_quick" if args.quick else "b2_nuts"
    C.save_table(tag, full, {"cfg": cfg, "reps": reps})
    C.save_table(tag + "_ratios", r)
    print(f"B2 total {time.perf_counter() - t_start:.0f} s; tables in {C.OUT_DIR}/{tag}*.csv")
    print(LEGEND)


LEGEND = """Columns (medians over the timed reps):
  compile_s   compile time of the sampling program. ours: idata.attrs['compile_time'] (every
              pp.infer call compiles); blackjax: jit(program).lower().compile(), once, reused;
              numpyro: all JAX tracing + compiling inside warmup() + run() (it re-compiles on
              every call), measured with jax.monitoring events (common.CompileTimer).
  run_s       warmup + sampling time, compile excluded (ours: idata.attrs['run_time']; numpyro:
              time of the warmup() and run() calls minus compile_s).
  wall_s      one complete call as a user makes it (ours: pp.infer incl. tracing, initial points,
              compile and InferenceData; numpyro: warmup() + run(); blackjax: initialize_model +
              compile + run).  jit_s: all tracing/compiling inside wall_s.
  ess_bulk, ess_tail   min over parameters (arviz); ess_bulk_per_s = ess_bulk / run_s.
  grad_evals  leapfrog steps of all chains, warmup included.
  grad_us     one jitted value_and_grad of the tool's own log density (blackjax uses numpyro's
              potential), timed inside a fori_loop.
  overhead    run_s / (grad_evals x grad_us): 1 = the run costs only its gradients. vmapped chains
              run in lockstep (the longest trajectory of the 4 sets the pace) but 4 chains' gradients
              are batched, so < 1 is possible.  us_per_grad = run_s / grad_evals.
  flags       warnings raised (ours: pp.NumericalWarning status, e.g. poor_mixing, divergences)."""



if __name__ == "__main__":
    main()
