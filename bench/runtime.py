"""Runtime: first-call compile, cached repeat calls, persistent cache and device mesh, vs numpyro.

For logreg (breast cancer) and eight schools (non-centred), and for each method
(``pp.NUTS()`` defaults, ``pp.Laplace()``, ``pp.MeanFieldVI()`` defaults), float64:

  (a) the first call in a fresh process (one subprocess per (problem, method, tool));
  (b) a second call with a new ``rng_key``                      (same process, --reps calls);
  (c) a call with new data of the same shapes                   (same process, --reps data sets);
  (d) the first call of a fresh process with a warm persistent compilation cache
      (``PPL_POSTERIORS_CACHE_DIR`` = a temp dir; the process is run twice, the second is reported);
  (e) NUTS sharded over 4 simulated host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``)
      with ``mesh=pp.make_mesh(chain=4)`` (and ``chain=2, data=2`` for logreg) against unsharded,
      wall time of a second (cached) call. A plumbing check, not a speed-up: the 4 host devices
      share the machine's cores.

Peers (each in fresh processes of their own, same settings): numpyro ``MCMC(NUTS,
chain_method="vectorized", jit_model_args=True)``; ``SVI`` + ``AutoNormal`` (adam 1e-2, same
steps) + ``sample_posterior`` (1000 draws); ``AutoLaplaceApproximation`` fitted with SVI + adam
(5000 steps, as in B4) + ``sample_posterior`` (1000 draws; it computes the Hessian).

Targets (from the issue): (b) and (c) spend < 5% of their wall time outside the compiled
programs' run, (wall_time - run_time) / wall_time from ``idata.attrs``; (b) and (c) are faster
than numpyro's second call for every method; (a) compiles no slower than numpyro's first call.

    python bench/runtime.py [--quick] [--reps N] [--problems logreg,eight_schools]
                            [--methods nuts,laplace,vi] [--skip d,e]
"""

# ruff: noqa: I001  (common must be imported first: it switches JAX to float64)
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
RESULT = "RESULT "
PROBLEMS = ("logreg", "eight_schools")
METHODS = ("nuts", "laplace", "vi")
METHOD_LABEL = {"nuts": "NUTS", "laplace": "Laplace", "vi": "MeanFieldVI"}


# ----------------------------------------------------------------------------- settings


def settings(quick: bool) -> dict:
    if quick:
        return {"chains": 4, "warmup": 100, "samples": 100, "vi_steps": 500, "np_laplace_steps": 500, "draws": 1000}
    # NUTS: pp.NUTS() defaults (4 chains x 1000 warmup x 1000 draws); MeanFieldVI: defaults
    # (5000 steps of adam(1e-2), 1000 draws); Laplace: pp.Laplace() defaults (1000 draws);
    # numpyro's AutoLaplace: 5000 adam(1e-2) steps to the MAP, as in B4.
    return {"chains": 4, "warmup": 1000, "samples": 1000, "vi_steps": 5000, "np_laplace_steps": 5000, "draws": 1000}


# ----------------------------------------------------------------------------- worker side
# Everything below up to the orchestrator runs inside a subprocess (``--worker ...``), which
# imports JAX; the orchestrator itself never imports JAX, so each measurement gets a fresh
# process (empty in-process caches, no JAX state).


def _problem(name: str, cut: int | None = None):
    """(model, args, kwargs, new_data(i) -> (args, kwargs)) of a problem, numpy float64 data."""
    import numpy as np

    from ppl_posteriors.datasets import breast_cancer, eight_schools
    from ppl_posteriors.examples import eight_schools_noncentered, logistic_regression

    if name == "logreg":
        X, y, _ = breast_cancer()
        if cut is not None:
            X, y = X[:cut], y[:cut]

        def new_data(i):  # bootstrap-resample the rows, jitter X: same shapes and dtypes
            rng = np.random.default_rng(1000 + i)
            idx = rng.integers(0, X.shape[0], X.shape[0])
            return (X[idx] + 0.01 * rng.standard_normal(X.shape),), {"y": y[idx]}

        return logistic_regression, (X,), {"y": y}, new_data
    d = eight_schools()
    sigma, y = d["sigma"], d["y"]

    def new_data(i):  # schools permuted (y with its sigma) and y jittered
        rng = np.random.default_rng(1000 + i)
        p = rng.permutation(len(y))
        return (sigma[p],), {"y": y[p] + rng.standard_normal(len(y))}

    return eight_schools_noncentered, (sigma,), {"y": y}, new_data


class EventLog:
    """Sums of JAX's compile-pipeline monitoring events inside a ``with`` block: seconds of
    tracing (jaxpr), lowering (MLIR), XLA compile (``backend_compile``; includes loading from the
    persistent cache), and counts of persistent-cache hits / misses. Nested traces are summed,
    so ``trace`` can exceed the wall time of the trace itself (common.CompileTimer takes unions)."""

    _NAMES = {
        "/jax/core/compile/jaxpr_trace_duration": "trace",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
        "/jax/core/compile/backend_compile_duration": "xla",
        "/jax/compilation_cache/cache_retrieval_time_sec": "pc_load",
    }
    _COUNTS = {"/jax/compilation_cache/cache_hits": "pc_hits", "/jax/compilation_cache/cache_misses": "pc_misses"}
    _active: list = []
    _registered = False

    def __init__(self):
        self.totals = dict.fromkeys([*self._NAMES.values(), *self._COUNTS.values()], 0.0)

    @classmethod
    def _on_duration(cls, event, duration, **_):
        for log in cls._active:
            if event in cls._NAMES:
                log.totals[cls._NAMES[event]] += duration

    @classmethod
    def _on_event(cls, event, **_):
        for log in cls._active:
            if event in cls._COUNTS:
                log.totals[cls._COUNTS[event]] += 1

    def __enter__(self):
        if not EventLog._registered:
            from jax import monitoring

            monitoring.register_event_duration_secs_listener(EventLog._on_duration)
            monitoring.register_event_listener(EventLog._on_event)
            EventLog._registered = True
        EventLog._active.append(self)
        return self

    def __exit__(self, *exc):
        EventLog._active.remove(self)


def _init_backend():
    """Start JAX's backend before anything is timed (the same for every tool)."""
    import jax
    import jax.numpy as jnp

    jax.block_until_ready(jnp.arange(3.0) + 1.0)


def _ours_config(method: str, s: dict):
    import ppl_posteriors as pp

    if method == "nuts":
        return pp.NUTS(num_chains=s["chains"], num_warmup=s["warmup"], num_samples=s["samples"])
    if method == "laplace":
        return pp.Laplace(num_samples=s["draws"], throw=False)  # throw=False: a failure is a status, as in B4
    return pp.MeanFieldVI(num_steps=s["vi_steps"], num_samples=s["draws"])


def _ours_call(model, args, kwargs, cfg, seed, mesh=None) -> dict:
    import common as C
    import ppl_posteriors as pp

    with C.capture_warnings() as caught, C.CompileTimer() as ct, EventLog() as ev:
        t0 = time.perf_counter()
        idata = pp.infer(model, *args, method=cfg, rng_key=seed, progress=False, mesh=mesh, **kwargs)
        wall = time.perf_counter() - t0
    a = idata.attrs
    flags = sorted({str(w.message).split(":")[1].strip() for w in caught
                    if issubclass(w.category, pp.NumericalWarning) and str(w.message).count(":") >= 2})
    return {
        "wall": wall,  # the whole call as a user sees it (incl. InferenceData + diagnostics)
        "attr_wall": float(a["wall_time"]),
        "compile": float(a["compile_time"]),
        "run": float(a["run_time"]),
        "cache_hit": int(a["cache_hit"]),
        "programs": int(a.get("programs_compiled", -1)),
        "jit": ct.seconds,  # every trace / lowering / compile inside the call (jax.monitoring)
        "events": ev.totals,
        "flags": flags,
        "_idata": idata,
    }


def _np_runner(method: str, model, s: dict):
    """A function (seed, args, kwargs) -> None doing one numpyro fit + draws as a user would."""
    import jax
    import numpyro
    from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoLaplaceApproximation, AutoNormal

    if method == "nuts":
        mcmc = MCMC(NUTS(model, target_accept_prob=0.8, max_tree_depth=10, dense_mass=False),
                    num_warmup=s["warmup"], num_samples=s["samples"], num_chains=s["chains"],
                    chain_method="vectorized", progress_bar=False, jit_model_args=True)

        def call(seed, args, kwargs):
            mcmc.run(jax.random.key(seed), *args, **kwargs)
            jax.block_until_ready(mcmc.get_samples(group_by_chain=True))

        return call
    if method == "vi":
        guide = AutoNormal(model)
        svi = SVI(model, guide, numpyro.optim.Adam(1e-2), Trace_ELBO())

        def call(seed, args, kwargs):
            k_fit, k_draw = jax.random.split(jax.random.key(seed))
            res = svi.run(k_fit, s["vi_steps"], *args, progress_bar=False, **kwargs)
            jax.block_until_ready(guide.sample_posterior(k_draw, res.params, sample_shape=(s["draws"],)))

        return call

    state = {"args": None}

    def call(seed, args, kwargs):
        # AutoLaplaceApproximation keeps the model arguments of its first call for the Hessian
        # (_setup_prototype runs once), so new data need a new guide: reusing it would give the
        # Hessian of the old data's posterior at the new MAP, silently.
        key_args = (args, tuple(sorted(kwargs.items())))
        if state["args"] is None or not _same_arrays(state["args"], key_args):
            guide = AutoLaplaceApproximation(model)
            state.update(args=key_args, guide=guide,
                         svi=SVI(model, guide, numpyro.optim.Adam(1e-2), Trace_ELBO()))
        guide, svi = state["guide"], state["svi"]
        k_fit, k_draw = jax.random.split(jax.random.key(seed))
        res = svi.run(k_fit, s["np_laplace_steps"], *args, progress_bar=False, **kwargs)
        jax.block_until_ready(guide.sample_posterior(k_draw, res.params, sample_shape=(s["draws"],)))

    return call


def _same_arrays(a, b) -> bool:
    import jax
    import numpy as np

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.shape(x) == np.shape(y) and np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


def _np_call(run, seed, args, kwargs) -> dict:
    import common as C

    with C.capture_warnings() as caught, C.CompileTimer() as ct, EventLog() as ev:
        t0 = time.perf_counter()
        run(seed, args, kwargs)
        wall = time.perf_counter() - t0
    return {"wall": wall, "jit": ct.seconds, "events": ev.totals, "flags": sorted({str(w.message)[:60] for w in caught})}


def _strip(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


def worker_main(a) -> None:
    import common as C  # noqa: F401  (float64, progress off)

    s = settings(a.quick)
    _init_backend()
    out: dict = {"tool": a.worker, "problem": a.problem, "method": a.method}
    if a.worker == "shard":
        out.update(shard_worker(a, s))
        print(RESULT + json.dumps(out), flush=True)
        return
    model, args, kwargs, new_data = _problem(a.problem)
    if a.worker == "ours":
        cfg = _ours_config(a.method, s)

        def call(seed, args_, kwargs_):
            return _strip(_ours_call(model, args_, kwargs_, cfg, seed))
    else:
        run = _np_runner(a.method, model, s)

        def call(seed, args_, kwargs_):
            return _np_call(run, seed, args_, kwargs_)

    out["a"] = call(0, args, kwargs)
    if not a.first_only:
        out["b"] = [call(1 + i, args, kwargs) for i in range(a.reps)]
        out["c"] = []
        for i in range(a.reps):
            args_i, kwargs_i = new_data(i)
            out["c"].append(call(100 + i, args_i, kwargs_i))
    print(RESULT + json.dumps(out), flush=True)


def shard_worker(a, s: dict) -> dict:
    """(e): NUTS unsharded vs sharded, in a process with 4 simulated host devices."""
    import jax
    import numpy as np

    import ppl_posteriors as pp

    res: dict = {"devices": len(jax.devices()), "cpus": os.cpu_count(), "notes": []}
    cut = None
    meshes = [("none", {}), ("chain4", {"chain": 4})]
    if a.problem == "logreg":
        meshes.append(("chain2xdata2", {"chain": 2, "data": 2}))
        # 569 rows cannot be split over a data axis of 2: show the error, then use 568 rows (all configs)
        model, args, kwargs, _ = _problem("logreg")
        try:
            pp.infer(model, *args, method=_ours_config("nuts", s), rng_key=0, progress=False,
                     mesh=pp.make_mesh(chain=2, data=2), **kwargs)
        except pp.ConfigError as e:
            res["notes"].append(f"569 rows with data=2: ConfigError: {e}; (e) uses the first 568 rows")
            cut = 568
    model, args, kwargs, _ = _problem(a.problem, cut)
    cfg = _ours_config("nuts", s)
    rows, means = [], {}
    for name, shape in meshes:
        mesh = pp.make_mesh(**shape) if shape else None
        first = _ours_call(model, args, kwargs, cfg, 0, mesh)
        second = _ours_call(model, args, kwargs, cfg, 1, mesh)
        post = second["_idata"].posterior
        means[name] = {v: (post[v].values.mean(axis=(0, 1)), post[v].values.std(axis=(0, 1)))
                       for v in post.data_vars}
        rows.append({"mesh": name, "first": _strip(first), "second": _strip(second)})
    for r in rows:  # same rng_key (1) for every mesh: how far apart are the posterior means?
        ref = means["none"]
        r["dmean_sd"] = float(max(np.max(np.abs(means[r["mesh"]][v][0] - ref[v][0]) / np.maximum(ref[v][1], 1e-12))
                                  for v in ref))
    res["rows"] = rows
    return res


# ----------------------------------------------------------------------------- orchestrator


def run_worker(argv: list[str], env_extra: dict | None = None, timeout: float = 900) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PPL_POSTERIORS_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR", "JAX_ENABLE_COMPILATION_CACHE")}
    env["PPL_POSTERIORS_PROGRESS"] = "0"
    env.update(env_extra or {})
    cmd = [sys.executable, str(HERE), *argv]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=timeout)
    dt = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(RESULT)]
    if p.returncode != 0 or not lines:
        tail = "\n".join((p.stdout + p.stderr).splitlines()[-25:])
        print(f"  !! worker failed ({' '.join(argv)}), rc={p.returncode}:\n{tail}", flush=True)
        return {"error": f"rc={p.returncode}", "process_s": dt}
    out = json.loads(lines[-1][len(RESULT):])
    out["process_s"] = dt
    return out


def _med(xs):
    import statistics

    xs = [x for x in xs if x is not None and x == x]
    return float(statistics.median(xs)) if xs else float("nan")


def _div(a, b):
    return a / b if (a == a and b == b and b > 0) else float("nan")


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke check, not a measurement")
    p.add_argument("--reps", type=int, default=None, help="calls for (b) and for (c) (default 3; 1 with --quick)")
    p.add_argument("--problems", default=",".join(PROBLEMS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--skip", default="", help="comma-separated subset of d,e to leave out")
    # worker mode (internal)
    p.add_argument("--worker", choices=("ours", "numpyro", "shard"), help=argparse.SUPPRESS)
    p.add_argument("--problem", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--first-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.reps = a.reps or (1 if a.quick else 3)
    if a.worker:
        return worker_main(a)

    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(HERE.parent))
    import common as C

    s = settings(a.quick)
    problems = a.problems.split(",")
    methods = a.methods.split(",")
    skip = set(filter(None, a.skip.split(",")))
    C.header(f"Runtime: first call / cached calls / persistent cache / mesh, ours vs numpyro; NUTS "
             f"{s['chains']}x({s['warmup']}+{s['samples']}), MeanFieldVI {s['vi_steps']} steps, Laplace defaults; "
             f"(b), (c): {a.reps} calls each (medians)")
    common_args = (["--quick"] if a.quick else []) + ["--reps", str(a.reps)]
    t_start = time.perf_counter()
    results: dict = {}
    for prob in problems:
        for meth in methods:
            for tool in ("ours", "numpyro"):
                t0 = time.perf_counter()
                r = run_worker(["--worker", tool, "--problem", prob, "--method", meth, *common_args])
                results[(prob, meth, tool)] = r
                print(f"  {prob} {meth} {tool}: (a)(b)(c) process {time.perf_counter() - t0:.1f} s", flush=True)
            if "d" not in skip:
                with tempfile.TemporaryDirectory(prefix="pp_cache_") as tmp:
                    env = {"PPL_POSTERIORS_CACHE_DIR": tmp}
                    argv_d = ["--worker", "ours", "--problem", prob, "--method", meth, "--first-only", *common_args]
                    cold = run_worker(argv_d, env)
                    n_files = sum(len(f) for _, _, f in os.walk(tmp))
                    warm = run_worker(argv_d, env)
                results[(prob, meth, "d")] = {"cold": cold, "warm": warm, "files": n_files}
                print(f"  {prob} {meth} (d) persistent cache: {n_files} files written; "
                      f"processes {cold.get('process_s', float('nan')):.1f} + {warm.get('process_s', float('nan')):.1f} s",
                      flush=True)
    if "e" not in skip and "nuts" in methods:
        flags = os.environ.get("XLA_FLAGS", "")
        env = {"XLA_FLAGS": (flags + " --xla_force_host_platform_device_count=4").strip()}
        for prob in problems:
            r = run_worker(["--worker", "shard", "--problem", prob, "--method", "nuts", *common_args], env)
            results[(prob, "nuts", "e")] = r
            print(f"  {prob} (e) mesh: process {r.get('process_s', float('nan')):.1f} s", flush=True)

    # ------------------------------------------------------------------ tables
    rows, where, flags_seen = [], [], []
    for prob in problems:
        for meth in methods:
            o, n = results[(prob, meth, "ours")], results[(prob, meth, "numpyro")]
            if "error" in o or "error" in n:
                rows.append({"problem": prob, "method": METHOD_LABEL[meth], "targets": "worker failed"})
                continue
            b_wall, c_wall = _med([r["wall"] for r in o["b"]]), _med([r["wall"] for r in o["c"]])
            b_out = _med([(r["attr_wall"] - r["run"]) / r["attr_wall"] for r in o["b"]])
            c_out = _med([(r["attr_wall"] - r["run"]) / r["attr_wall"] for r in o["c"]])
            nb, nc = _med([r["wall"] for r in n["b"]]), _med([r["wall"] for r in n["c"]])
            hits = all(r["cache_hit"] == 1 for r in o["b"] + o["c"])
            row = {
                "problem": prob,
                "method": METHOD_LABEL[meth],
                "a_wall": o["a"]["wall"],
                "a_comp": o["a"]["compile"],
                "a_jit": o["a"]["jit"],
                "np_a_wall": n["a"]["wall"],
                "np_a_jit": n["a"]["jit"],
                "a_jit/np": _div(o["a"]["jit"], n["a"]["jit"]),
                "b_wall": b_wall,
                "b_out%": 100 * b_out,
                "np_b_wall": nb,
                "np_b_jit": _med([r["jit"] for r in n["b"]]),
                "b/np": _div(b_wall, nb),
                "c_wall": c_wall,
                "c_out%": 100 * c_out,
                "np_c_wall": nc,
                "c/np": _div(c_wall, nc),
            }
            d = results.get((prob, meth, "d"))
            if d is not None and "error" not in d["warm"]:
                row.update({"d_wall": d["warm"]["a"]["wall"], "d_comp": d["warm"]["a"]["compile"],
                            "d/a": _div(d["warm"]["a"]["wall"], o["a"]["wall"])})
            e = results.get((prob, meth, "e"))
            if e is not None and "error" not in e:
                sec = {r["mesh"]: r["second"]["wall"] for r in e["rows"]}
                row.update({"e_none": sec.get("none"), "e_chain4": sec.get("chain4")})
            t_out = b_out < 0.05 and c_out < 0.05
            t_fast = b_wall < nb and c_wall < nc
            t_comp = o["a"]["jit"] <= n["a"]["jit"]
            row["targets"] = " ".join(f"{name}:{'ok' if ok else 'MISS'}" for name, ok in
                                      (("out<5%", t_out), ("faster", t_fast), ("compile", t_comp)))
            if not hits:
                row["targets"] += " (b/c not all cache hits!)"
            rows.append(row)
            for when in ("b", "c"):
                rs = o[when]
                where.append({
                    "problem": prob, "method": METHOD_LABEL[meth], "call": when,
                    "wall": _med([r["wall"] for r in rs]),
                    "attr_wall": _med([r["attr_wall"] for r in rs]),
                    "run": _med([r["run"] for r in rs]),
                    "pre_post": _med([r["attr_wall"] - r["run"] for r in rs]),
                    "results": _med([r["wall"] - r["attr_wall"] for r in rs]),
                    "out%_attrs": 100 * _med([(r["attr_wall"] - r["run"]) / r["attr_wall"] for r in rs]),
                    "out%_call": 100 * _med([(r["wall"] - r["run"]) / r["wall"] for r in rs]),
                    "jit": _med([r["jit"] for r in rs]),
                    "cache_hit": min(r["cache_hit"] for r in rs),
                    "np_jit": _med([r["jit"] for r in n[when]]),
                })
            for tool, res in (("ours", o), ("numpyro", n)):
                for when in ("a", "b", "c"):
                    rs = res[when] if isinstance(res[when], list) else [res[when]]
                    for f in sorted({f for r in rs for f in r["flags"]}):
                        flags_seen.append(f"{prob} {meth} {tool} ({when}): {f}")

    first = []
    for prob in problems:
        for meth in methods:
            d = results.get((prob, meth, "d"), {})
            calls = [("ours (a)", results[(prob, meth, "ours")]), ("numpyro (a)", results[(prob, meth, "numpyro")]),
                     ("ours (d) cold", d.get("cold")), ("ours (d) warm", d.get("warm"))]
            for label, r in calls:
                if r is None or "error" in r:
                    continue
                x, ev = r["a"], r["a"]["events"]
                first.append({
                    "problem": prob, "method": METHOD_LABEL[meth], "call": label, "wall": x["wall"],
                    "jit": x["jit"], "trace": ev["trace"], "lower": ev["lower"], "xla": ev["xla"],
                    "programs": x.get("programs", np.nan),
                    "pc_hit/miss": f"{ev['pc_hits']:.0f}/{ev['pc_misses']:.0f}" if "(d)" in label else "",
                    "cache_files": d.get("files", "") if "(d)" in label else "",
                })
    df = pd.DataFrame(rows)
    df = df[[c for c in df.columns if c != "targets"] + ["targets"]]
    C.print_table("Runtime (seconds; ratios ours / numpyro, < 1: ours faster; targets: (b),(c) out<5%, "
                  "(b),(c) faster than numpyro, (a) a_jit <= np_a_jit)", df, "{:.3g}")
    C.print_table("Where the time of the first calls goes (seconds; trace / lower / xla are sums of JAX's "
                  "monitoring events, nested traces counted twice; xla includes loading from the persistent cache)",
                  pd.DataFrame(first), "{:.3g}")
    wdf = pd.DataFrame(where)
    C.print_table("Where the time of ours' cached calls goes (medians; seconds)", wdf, "{:.3g}")

    erows = []
    for prob in problems:
        e = results.get((prob, "nuts", "e"))
        if e is None:
            continue
        if "error" in e:
            erows.append({"problem": prob, "mesh": "worker failed"})
            continue
        base = {r["mesh"]: r for r in e["rows"]}["none"]["second"]["wall"]
        for r in e["rows"]:
            erows.append({
                "problem": prob, "mesh": r["mesh"], "devices": e["devices"],
                "first_wall": r["first"]["wall"], "first_comp": r["first"]["compile"],
                "second_wall": r["second"]["wall"], "second_run": r["second"]["run"],
                "vs_none": r["second"]["wall"] / base, "cache_hit": r["second"]["cache_hit"],
                "dmean/sd": r["dmean_sd"],
            })
        for note in e.get("notes", []):
            print(f"(e) {prob}: {note}")
    if erows:
        C.print_table(f"(e) NUTS over {4} simulated host devices (XLA_FLAGS=--xla_force_host_platform_device_count=4) "
                      f"on {os.cpu_count()} CPU cores: a plumbing check, not a speed-up", pd.DataFrame(erows), "{:.3g}")
    if flags_seen:
        print("Warnings raised by the calls (not part of the timing targets):")
        for f in flags_seen:
            print("  " + f)
    tag = "runtime_quick" if a.quick else "runtime"
    C.save_table(tag, df, {"settings": s, "reps": a.reps, "raw": {"|".join(k): v for k, v in results.items()}})
    print(f"\nruntime total {time.perf_counter() - t_start:.0f} s; table in {C.OUT_DIR}/{tag}.csv (raw results in {tag}.json)")
    print(LEGEND)


LEGEND = """Columns (seconds unless stated; every (problem, method, tool) runs in its own fresh process,
JAX's backend started before timing; imports and data loading are not timed):
  a_wall      (a) the first pp.infer call of a fresh process, as a user sees it.
  a_comp      its idata.attrs['compile_time'] (lower + compile of the programs; the model trace is outside).
  a_jit       every JAX trace / lowering / compile inside that call (jax.monitoring events, common.CompileTimer);
              np_a_jit the same for numpyro's first call (MCMC.run, or svi.run + sample_posterior).
              Target "compile": a_jit <= np_a_jit.
  b_wall      (b) median over --reps calls with a new rng_key (same process, after (a)); c_wall: (c) median
              over --reps new data sets of the same shapes (logreg: rows bootstrap-resampled, X + N(0, 0.01^2)
              jitter; eight schools: schools permuted, y + N(0, 1) jitter).
  b_out%, c_out%  100 x (wall_time - run_time) / wall_time from idata.attrs (the issue's measure): time of
              pp.infer outside the compiled programs' run. Target "out<5%": both < 5.
  np_b_wall, np_c_wall  numpyro's second / new-data call on the same objects (MCMC with jit_model_args=True;
              SVI + AutoNormal; AutoLaplaceApproximation with a NEW guide for new data, because the guide
              keeps its first call's data for the Hessian). np_b_jit: tracing + compiling inside np's (b) call.
              numpyro walls include sample_posterior of 1000 draws (VI, Laplace) / get_samples (NUTS).
              Target "faster": b_wall < np_b_wall and c_wall < np_c_wall.
  d_wall      (d) first call of a second fresh process with PPL_POSTERIORS_CACHE_DIR = a temp dir that a first
              process filled; d_comp its attrs compile_time (loading executables); d/a = d_wall / a_wall.
  e_none, e_chain4  (e) NUTS second (cached) call in a process with 4 host devices: unsharded / mesh chain=4.
Second table (ours' (b), (c) calls): wall = whole call; attr_wall = idata.attrs['wall_time'] (ends before the
  InferenceData is built); run = attrs run_time; pre_post = attr_wall - run (model template, argument checks,
  cache look-ups, host transfers); results = wall - attr_wall (InferenceData + diagnostics + warnings);
  out%_call = 100 x (wall - run) / wall, the share the user actually waits outside the programs.
First-call table: programs = pp programs compiled (attrs programs_compiled); pc_hit/miss = persistent-cache
  hits / misses (JAX only writes executables that took >= 0.5 s to compile: pp.set_compilation_cache's
  min_compile_time_secs); cache_files = files in the cache dir after the cold process.
(e) table: dmean/sd = max over parameters |mean - unsharded mean| / unsharded sd of the second calls (same
  rng_key): ~0 means the same draws; ~0.1 is Monte Carlo noise between different draws."""


if __name__ == "__main__":
    main()
