"""B3: mean-field VI on the B2 logreg: ppl_posteriors vs numpyro AutoNormal vs BlackJAX meanfield_vi.

Settings (BENCHMARKS.md B3): 5000 steps of adam(1e-2), float64, one Monte Carlo draw per
step for every tool in the main table. Accuracy against the long NUTS reference
(common.nuts_reference, 4 x 5000 draws): max |mean - ref mean| / ref sd and
max |sd / ref sd - 1| over the 31 parameters, from 50,000 draws of each fitted
approximation. One warm-up call, then ``--reps`` (default 3) timed calls with different
seeds; tables show medians (errors too: they vary with the seed).

A second table runs ours with num_particles in {1, 4, 16} and stl True/False, to choose
defaults.

    python bench/b3_vi.py [--quick] [--reps N]
"""

# ruff: noqa: I001  (common must be imported first: it switches JAX to float64)
from __future__ import annotations

import time

import common as C  # first: it sets float64  # isort: skip
import blackjax
import jax
import numpy as np
import numpyro
import optax
import pandas as pd
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

import ppl_posteriors as pp


def _flags(caught) -> list[str]:
    out = []
    for msg in C.numerical_warnings(caught):
        parts = msg.split(":")
        out.append(parts[1].strip() if len(parts) > 2 else msg[:40])
    return out


# ----------------------------------------------------------------------------- tools


def run_ours(target: C.Target, ld, cfg: dict, seed: int, num_particles: int = 1, stl: bool = False,
             average_fraction: float | None = None) -> dict:
    extra = {} if average_fraction is None else {"average_fraction": average_fraction}
    method = pp.MeanFieldVI(
        num_steps=cfg["steps"], optimizer=optax.adam(1e-2), num_particles=num_particles, stl=stl, **extra
    )
    r = C.run_pp_approximation(target, ld, method, seed, cfg["draws"])
    return {
        **r,
        "flags": _flags(r["caught"]),
    }


def run_numpyro(target: C.Target, cfg: dict, seed: int) -> dict:
    """numpyro AutoNormal with SVI + Trace_ELBO (1 particle), svi.run as called: it re-traces
    and re-compiles on every call; compile time from common.CompileTimer."""
    guide = AutoNormal(target.model)
    svi = SVI(target.model, guide, numpyro.optim.Adam(1e-2), Trace_ELBO())
    k_fit, k_draw = jax.random.split(jax.random.key(seed))
    with C.capture_warnings() as caught, C.CompileTimer() as ct:
        t0 = time.perf_counter()
        res = svi.run(k_fit, cfg["steps"], *target.args, progress_bar=False, **target.kwargs)
        C.block(res.params)
        wall = time.perf_counter() - t0
    draws = guide.sample_posterior(k_draw, res.params, sample_shape=(cfg["draws"],))
    flat, labels = C.flatten(draws, target.latent, 1)
    return {
        "compile_s": ct.seconds,
        "run_s": wall - ct.seconds,
        "wall_s": wall,
        "jit_s": ct.seconds,
        "flat": flat,
        "labels": labels,
        "flags": [f"{w.category.__name__}: {w.message}"[:60] for w in caught],
        "khat": np.nan,
        "messages": [],
    }


class BlackjaxRunner:
    """blackjax.meanfield_vi (STL, ``num_samples`` draws per step) on numpyro's potential,
    5000 steps in one jitted lax.scan, compiled once (first call) and reused."""

    def __init__(self, target: C.Target, cfg: dict, num_samples: int = 1):
        self.target, self.cfg = target, cfg
        logdensity_fn, init, constrain = C.numpyro_logdensity(target, jax.random.key(0))
        self.position = init
        self.vi = blackjax.meanfield_vi(logdensity_fn, optax.adam(1e-2), num_samples=num_samples)
        self.constrain = jax.jit(jax.vmap(constrain))
        self.compiled = None

    def _fit(self, key, position):
        vi = self.vi
        k_fit, k_draw = jax.random.split(key)
        state = vi.init(position)

        def step(state, k):
            state, info = vi.step(k, state)
            return state, info.elbo

        state, elbo = jax.lax.scan(step, state, jax.random.split(k_fit, self.cfg["steps"]))
        return state, elbo

    def __call__(self, seed: int) -> dict:
        key = jax.random.key(seed)
        if self.compiled is None:
            t0 = time.perf_counter()
            self.compiled = jax.jit(self._fit).lower(key, self.position).compile()
            self.compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        state, elbo = C.block(self.compiled(key, self.position))
        run_s = time.perf_counter() - t0
        unc = self.vi.sample(jax.random.fold_in(key, 1), state, self.cfg["draws"])
        draws = self.constrain(unc)
        flat, labels = C.flatten(draws, self.target.latent, 1)
        return {
            "compile_s": self.compile_s,
            "run_s": run_s,
            "wall_s": self.compile_s + run_s,
            "jit_s": self.compile_s,
            "flat": flat,
            "labels": labels,
            "flags": [],
            "khat": np.nan,
            "messages": [],
        }


# ----------------------------------------------------------------------------- table


def elbo_from_draws(flat: np.ndarray, logdensity) -> float:
    """ELBO = E_q[log p(z) - log q(z)] from the draws, with q the diagonal Gaussian of the draws'
    means and sds (the fitted mean-field guide, up to Monte Carlo error). Same formula for every
    tool; valid for logreg, whose constrained and unconstrained spaces coincide."""
    z = flat[:10_000]
    m, s = flat.mean(0), flat.std(0)
    logq = -0.5 * np.sum(((z - m) / s) ** 2, 1) - np.sum(np.log(s)) - 0.5 * z.shape[1] * np.log(2 * np.pi)
    return float(np.mean(np.asarray(logdensity(z)) - logq))


def summarise(tool: str, results: list[dict], ref: dict, logdensity=None, **extra) -> dict:
    acc = [C.accuracy(r["flat"], r["labels"], ref) for r in results]
    mean_err = [a["mean_err"] for a in acc]
    sd_err = [a["sd_err"] for a in acc]
    worst = acc[int(np.argsort(mean_err)[len(mean_err) // 2])]
    return {
        "tool": tool,
        **extra,
        "compile_s": C.median([r["compile_s"] for r in results]),
        "run_s": C.median([r["run_s"] for r in results]),
        "wall_s": C.median([r["wall_s"] for r in results]),
        "mean_err": C.median(mean_err),
        "mean_err_rng": f"{min(mean_err):.3f}-{max(mean_err):.3f}",
        "mean_err_at": worst["mean_err_at"],
        "sd_err": C.median(sd_err),
        "sd_err_rng": f"{min(sd_err):.3f}-{max(sd_err):.3f}",
        "sd_err_at": worst["sd_err_at"],
        "elbo": C.median([elbo_from_draws(r["flat"], logdensity) for r in results]) if logdensity else np.nan,
        "khat": C.median([r["khat"] for r in results]),
        "flags": "; ".join(sorted({f for r in results for f in r["flags"]})),
        "reps": len(results),
    }


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--no-variants", action="store_true", help="skip the num_particles x stl table")
    args = p.parse_args(argv)
    if args.quick:
        cfg = {"steps": 500, "draws": 5000}
        ref_cfg = {"num_samples": 500, "num_warmup": 500}
    else:
        cfg = {"steps": 5000, "draws": 50_000}
        ref_cfg = {"num_samples": 5000, "num_warmup": 2000}
    reps = args.reps or (1 if args.quick else 3)
    C.header(f"B3 mean-field VI on logreg: {cfg['steps']} steps adam(1e-2), errors from {cfg['draws']} draws "
             f"vs NUTS reference; 1 warm-up + {reps} timed reps (medians)")
    t_start = time.perf_counter()
    target = C.get_target("logreg")
    ref = C.nuts_reference(target, **ref_cfg)
    ld = target.log_density()
    logdensity = jax.jit(jax.vmap(ld.flat_logdensity_fn))  # flat order = b0, w (= target.latent)

    rows, messages = [], []
    for tool in ("ours", "numpyro", "blackjax"):
        t0 = time.perf_counter()
        if tool == "ours":
            res = C.repeat(lambda s: run_ours(target, ld, cfg, s), reps)
            row = summarise("ours MeanFieldVI", res, ref, logdensity, particles=1, stl=False)
        elif tool == "numpyro":
            res = C.repeat(lambda s: run_numpyro(target, cfg, s), reps)
            row = summarise("numpyro AutoNormal", res, ref, logdensity, particles=1, stl=False)
        else:
            res = C.repeat(BlackjaxRunner(target, cfg, 1), reps)
            row = summarise("blackjax meanfield_vi", res, ref, logdensity, particles=1, stl=True)
        rows.append(row)
        messages += [f"{row['tool']}: {m}" for r in res for m in r["messages"]]
        print(f"  {row['tool']}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    main_df = pd.DataFrame(rows)
    C.print_table("B3 mean-field VI, logreg", main_df)

    ours = main_df.iloc[0]
    ratio = pd.DataFrame([
        {
            "peer": peer.tool,
            "run ours/peer": ours.run_s / peer.run_s,
            "compile ours/peer": ours.compile_s / peer.compile_s,
            "wall ours/peer": ours.wall_s / peer.wall_s,
            "mean_err ours/peer": ours.mean_err / peer.mean_err,
            "sd_err ours/peer": ours.sd_err / peer.sd_err,
        }
        for _, peer in main_df.iloc[1:].iterrows()
    ])
    C.print_table("B3 ratios ours / peer (< 1: ours faster / more accurate)", ratio, "{:.3g}")

    tag = "b3_vi_quick" if args.quick else "b3_vi"
    C.save_table(tag, main_df, {"cfg": cfg, "ref": ref_cfg, "reps": reps})
    C.save_table(tag + "_ratios", ratio)

    if not args.no_variants:
        vrows = []
        variants = [(k, st, None) for k in (1, 4, 16) for st in (True, False)]
        if "average_fraction" in pp.MeanFieldVI.__dataclass_fields__:
            variants.append((1, True, 0.0))  # no iterate averaging
        for particles, stl, avg in variants:
            t0 = time.perf_counter()
            res = C.repeat(lambda s, k=particles, st=stl, a=avg: run_ours(target, ld, cfg, s, k, st, a), reps)
            avg_label = "default" if avg is None else avg
            vrows.append(summarise("ours", res, ref, logdensity, particles=particles, stl=stl, averaging=avg_label))
            label = f"ours particles={particles} stl={stl} average_fraction={avg_label}"
            messages += [f"{label}: {m}" for r in res for m in r["messages"]]
            print(f"  {label}: done in {time.perf_counter() - t0:.1f} s", flush=True)
        var_df = pd.DataFrame(vrows)
        C.print_table("B3 ours: num_particles x stl (choose defaults)", var_df)
        C.save_table(tag + "_variants", var_df)

    if messages:
        print("NumericalWarnings raised (flags column), one line per configuration and status:")
        for line in C.compact_warnings(messages):
            print("  " + line)
    print(f"\nB3 total {time.perf_counter() - t_start:.0f} s; tables in {C.OUT_DIR}/{tag}*.csv")
    print(LEGEND)


LEGEND = """Columns (medians over the timed reps; *_rng = min-max over reps):
  compile_s  ours: idata.attrs['compile_time'] (every pp.infer call compiles); blackjax: jit().lower().compile()
             once, then reused; numpyro: tracing + compiling inside svi.run (re-done every call), measured
             with jax.monitoring events (common.CompileTimer).
  run_s      the optimisation without compile (ours: attrs['run_time'], which also draws 1000 samples and
             their log densities for PSIS; numpyro: svi.run time minus compile_s; blackjax: the compiled scan).
  wall_s     one call as a user makes it: ours pp.infer (tracing, compile, fit, InferenceData); numpyro
             svi.run; blackjax compile + run.
  mean_err   max over parameters |mean - ref mean| / ref sd;  sd_err: max |sd / ref sd - 1| (_at: where).
  elbo       ELBO of the fitted guide, E_q[log p - log q] from 10,000 of its draws (nats; same formula for
             every tool; higher is better).
  khat       ours' PSIS k-hat (idata.attrs['psis_khat'], from the 1000 draws of the call; > 0.7: unreliable).
  flags      pp.NumericalWarning statuses raised by the calls (poor_approximation = PSIS k-hat above
             threshold; not_converged = ELBO still rising)."""


if __name__ == "__main__":
    main()
