"""B2: NUTS -- ours (defaults + variants) vs numpyro (vectorized) vs raw BlackJAX vs nutpie, one run.

Settings (BENCHMARKS.md B2): 4 chains x 1000 warmup x 1000 draws, float64, target
acceptance 0.8, max tree depth 10, diagonal mass matrix; targets logreg, eight_schools
(non-centred) and gauss100. One warm-up call of each tool, then ``--reps`` (default 3)
timed calls with different seeds, round-robin over the tools (a change of the machine's
load hits all of them); the tables show medians.

Rows:

* ``ours``: ``pp.NUTS`` with its defaults (target_accept 0.8, max_tree_depth 10);
* ``ours[...]``: variants from ``--variants`` (``;``-separated; each a ``+``-joined list of
  ``field=value`` options of ``pp.NUTS`` and/or ``mesh``: ``pp.infer`` with no ``mesh=``
  in a process that has H simulated host devices, where the defaults put the chains on
  them (``num_chains / H`` each, each device its own loop; ``attrs["num_devices"]`` is
  checked). Default: ``mass_matrix`` diag and low_rank, each alone and with ``mesh``, and
  ``mesh`` alone. A variant whose option ``pp.NUTS`` does not have (checked with
  ``dataclasses.fields``) or refuses is skipped with a note, so the script runs before and
  after such options exist. With a ``mesh`` variant the whole process runs with
  ``--xla_force_host_platform_device_count=H``, H = the machine's cores (at most the
  chains, a divisor of them: what the defaults pick); every other row runs with
  ``chain_layout="lockstep"`` there, vmapped on one device. ``--host-devices H`` sets H; 1
  turns the mesh rows off;
* ``numpyro``: numpyro NUTS, ``chain_method="vectorized"``;
* ``blackjax``: BlackJAX ``window_adaptation`` + ``nuts``, vmapped over chains;
* ``nutpie`` (and ``nutpie[low_rank]``): from ``bench/mcmc_b2_nutpie.py``, which runs in its
  own virtualenv ``.venv-nutpie`` (bench sessions only). With ``--nutpie auto`` (default) it
  is run right after the JAX tools when that virtualenv exists, else an existing
  ``out/mcmc_b2_nutpie[_quick].csv`` is merged; ``--nutpie csv`` only merges, ``off`` skips.

    python bench/mcmc_b2.py [--quick] [--reps N] [--targets logreg,eight_schools,gauss100]
        [--tools ours,numpyro,blackjax] [--variants "mass_matrix=nutpie;mesh;..."]
        [--host-devices N] [--nutpie auto|run|csv|off]
"""

# ruff: noqa: I001, E402  (host devices must be set before JAX is imported; common sets float64)
from __future__ import annotations

import argparse
import os
import sys

DEFAULT_VARIANTS = ("mass_matrix=diag;mass_matrix=low_rank;mesh;"
                    "mass_matrix=diag+mesh;mass_matrix=low_rank+mesh")
CHAINS = 4


def _parse_variants(spec: str) -> list[tuple[str, ...]]:
    """'a=1+mesh;b=2' -> [('a=1', 'mesh'), ('b=2',)] (empty tokens dropped)."""
    out = []
    for v in (spec or "").split(";"):
        tokens = tuple(t.strip() for t in v.split("+") if t.strip())
        if tokens:
            out.append(tokens)
    return out


def _early_host_devices(argv) -> int:
    """Host devices to simulate: ``--host-devices`` or, when a variant uses ``mesh``, the
    largest divisor of the chains (4) not above the machine's cores. Must be set in XLA_FLAGS
    before JAX is imported."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--host-devices", type=int, default=None)
    p.add_argument("--tools", default="ours")
    a, _ = p.parse_known_args(argv)
    if a.host_devices is not None:
        return a.host_devices
    uses_mesh = "ours" in a.tools and any("mesh" in v for v in _parse_variants(a.variants))
    cores = os.cpu_count() or 1
    return max(h for h in range(1, CHAINS + 1) if CHAINS % h == 0 and h <= cores) if uses_mesh else 1


HOST_DEVICES = _early_host_devices(sys.argv[1:])
if HOST_DEVICES > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={HOST_DEVICES}"
    ).strip()

import ast
import dataclasses
import subprocess
import time

import common as C  # first of the JAX imports: it sets float64  # isort: skip
import blackjax
import jax
import numpy as np
import pandas as pd
from numpyro.infer import MCMC
from numpyro.infer import NUTS as NumpyroNUTS

import ppl_posteriors as pp

PEERS = ("blackjax", "numpyro", "nutpie")
NUTPIE_PY = C.BENCH_DIR.parent / ".venv-nutpie" / "bin" / "python"


# ----------------------------------------------------------------------------- ours


@dataclasses.dataclass
class Variant:
    """One ``ours`` row: options of ``pp.NUTS`` and whether the chains go on a mesh."""

    name: str
    options: dict
    mesh: bool = False


def make_variants(spec: str, num_chains: int) -> tuple[list[Variant], list[str]]:
    """The ``ours`` rows: defaults first, then each variant of ``spec`` that this version of
    ``pp.NUTS`` supports; the notes say why the others are skipped."""
    fields = {f.name for f in dataclasses.fields(pp.NUTS)}
    rows, notes = [Variant("ours", {})], []
    for tokens in _parse_variants(spec):
        name = f"ours[{'+'.join(tokens)}]"
        options, mesh, why = {}, False, None
        for tok in tokens:
            if tok == "mesh":
                mesh = True
                if jax.device_count() < 2 or num_chains % jax.device_count():
                    why = (f"{jax.device_count()} devices: a mesh needs 2 or more that divide the {num_chains} "
                           "chains (--host-devices H)")
                continue
            key, sep, value = tok.partition("=")
            if not sep:
                why = f"cannot parse {tok!r} (expected field=value or mesh)"
                continue
            if key not in fields:
                why = f"pp.NUTS has no option {key!r} (fields: {', '.join(sorted(fields))})"
                continue
            try:
                options[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                options[key] = value
        if why is None:
            try:
                pp.NUTS(**options)
            except pp.ConfigError as e:
                why = f"pp.NUTS refuses it: {e}"
        if why is None:
            rows.append(Variant(name, options, mesh))
        else:
            notes.append(f"{name}: skipped, {why}")
    return rows, notes


def run_ours(target: C.Target, cfg: dict, variant: Variant, seed: int) -> dict:
    method = pp.NUTS(
        num_chains=cfg["chains"],
        num_warmup=cfg["warmup"],
        num_samples=cfg["samples"],
        target_accept=0.8,
        max_tree_depth=10,
        **variant.options,
    )
    if not variant.mesh and jax.device_count() > 1:  # the process has host devices: keep this row on one
        method = dataclasses.replace(method, chain_layout="lockstep")
    with C.capture_warnings() as caught, C.CompileTimer() as ct:
        t0 = time.perf_counter()
        # mesh=None: with host devices in the process, the defaults put the chains on them
        idata = pp.infer(target.model, *target.args, method=method, rng_key=seed, progress=False,
                         **target.kwargs)
        wall = time.perf_counter() - t0
    a = idata.attrs
    want = jax.device_count() if variant.mesh else 1
    if int(a.get("num_devices", 1)) != want:
        raise RuntimeError(f"{variant.name}: ran on {a.get('num_devices')} devices, expected {want}")
    draws = {n: np.asarray(idata.posterior[n].values) for n in target.latent}
    return {
        "compile_s": float(a.get("compile_time", np.nan)),
        "run_s": float(a["run_time"]),
        "wall_s": wall,
        "jit_s": ct.seconds,
        "grad_evals": int(a["grad_evals"]),
        "divergences": int(np.asarray(idata.sample_stats["diverging"]).sum()),
        "draws": draws,
        "warnings": C.numerical_warnings(caught),
    }


class OursRunner:
    """``pp.infer`` caches its compiled program (same model, config and shapes), so only the
    first call (the discarded warm-up of :func:`common.repeat`) traces and compiles: its
    ``compile_s``, ``jit_s`` and ``wall_s`` are reported for every rep (``wall_s`` = a first
    call); ``run_s`` and the ESS come from each timed call."""

    def __init__(self, target: C.Target, cfg: dict, variant: Variant):
        self.target, self.cfg, self.variant = target, cfg, variant
        self.first = None

    def __call__(self, seed: int) -> dict:
        r = run_ours(self.target, self.cfg, self.variant, seed)
        if self.first is None:
            self.first = {k: r[k] for k in ("compile_s", "jit_s", "wall_s")}
        return {**r, **self.first}


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


# ----------------------------------------------------------------------------- nutpie


def nutpie_rows(args, cfg: dict, targets: list[C.Target]) -> tuple[pd.DataFrame | None, list[str]]:
    """Run ``mcmc_b2_nutpie.py`` in ``.venv-nutpie`` (``--nutpie run``, or ``auto`` when the
    virtualenv exists) and/or read its csv; keep the rows whose settings and data match."""
    path = C.OUT_DIR / f"mcmc_b2_nutpie{'_quick' if args.quick else ''}.csv"
    notes = []
    if args.nutpie == "off":
        return None, notes
    if args.nutpie == "run" or (args.nutpie == "auto" and NUTPIE_PY.exists()):
        if not NUTPIE_PY.exists():
            return None, [f"nutpie: {NUTPIE_PY} not found (python3.11 -m venv .venv-nutpie && "
                          ".venv-nutpie/bin/pip install pymc nutpie scikit-learn)"]
        cmd = [str(NUTPIE_PY), str(C.BENCH_DIR / "mcmc_b2_nutpie.py"), "--targets", args.targets,
               "--variants", args.nutpie_variants] + (["--quick"] if args.quick else [])
        if args.reps:
            cmd += ["--reps", str(args.reps)]
        print(f"\n>>> {' '.join(cmd)}", flush=True)
        rc = subprocess.call(cmd, cwd=C.BENCH_DIR)
        if rc != 0:
            notes.append(f"nutpie: the script failed (exit {rc}); rows from an older csv, if any")
    if not path.exists():
        return None, notes + [f"nutpie: no {path.name} (run bench/mcmc_b2_nutpie.py in .venv-nutpie)"]
    df = pd.read_csv(path)
    keep = []
    for _, row in df.iterrows():
        t = next((t for t in targets if t.name == row.target), None)
        if t is None:
            continue
        if (row.chains, row.warmup, row.samples) != (cfg["chains"], cfg["warmup"], cfg["samples"]):
            notes.append(f"nutpie {row.target}: csv settings {row.chains}x{row.warmup}x{row.samples} differ; dropped")
            continue
        mine = C.data_check(t)
        if not np.isclose(row.data_check, mine, rtol=1e-9):
            notes.append(f"nutpie {row.target}: data differ (sum|data| {row.data_check} vs {mine}); dropped")
            continue
        keep.append(row)
    if not keep:
        return None, notes
    out = pd.DataFrame(keep)
    started = ", ".join(sorted(set(out.started_utc.astype(str))))[:80]
    notes.append(f"nutpie rows from {path.name} ({out.versions.iloc[0]}; started {started} UTC; a separate "
                 "process in .venv-nutpie, chains in parallel threads)")
    return out.drop(columns=["chains", "warmup", "samples", "data_check", "versions", "started_utc", "config"],
                    errors="ignore"), notes


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
    flags = sorted({_flag(w) for r in results for w in r["warnings"]})
    return {
        "tool": tool,
        "compile_s": C.median([r["compile_s"] for r in results]),
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


def bench_target(target: C.Target, cfg: dict, reps: int, tools: list[str], variants: list[Variant]) -> pd.DataFrame:
    print(f"\n### {target.name}: {target.description}", flush=True)
    ld = target.log_density()
    t_grad_ours = C.grad_time(ld.logdensity_fn, ld.init_position, cfg["grad_iters"])
    np_ld, np_init, _ = C.numpyro_logdensity(target, jax.random.key(0))
    t_grad_np = C.grad_time(np_ld, np_init, cfg["grad_iters"])
    print(f"one jitted value_and_grad: ours {t_grad_ours * 1e6:.2f} us, numpyro potential {t_grad_np * 1e6:.2f} us",
          flush=True)
    jobs = []
    if "ours" in tools:
        jobs += [(v.name, OursRunner(target, cfg, v), t_grad_ours) for v in variants]
    if "numpyro" in tools:
        jobs.append(("numpyro", NumpyroRunner(target, cfg), t_grad_np))
    if "blackjax" in tools:
        jobs.append(("blackjax", BlackjaxRunner(target, cfg), t_grad_np))
    # Warm-up call of every tool (seed 1000, discarded; ours and blackjax compile here), then
    # the timed reps round-robin over the tools (seeds 0, 1, ...), so that a change in the
    # machine's load during the run hits every tool alike (common.repeat's seeds).
    results, failed = {tool: [] for tool, _, _ in jobs}, set()
    for i in range(-1, reps):
        for tool, fn, _ in jobs:
            if tool in failed:
                continue
            t0 = time.perf_counter()
            try:
                r = fn(1000 if i < 0 else i)
            except Exception as e:  # a variant that breaks must not lose the other rows
                print(f"  {tool}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                failed.add(tool)
                continue
            if i >= 0:
                results[tool].append(r)
            print(f"  {tool}: {'warm-up' if i < 0 else f'rep {i}'} {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for tool, _, t_grad in jobs:
        if tool in failed:
            continue
        rows.append(summarise(tool, results[tool], target, t_grad))
        print(f"  {tool}: ESS/s {rows[-1]['ess_bulk_per_s']:.0f}", flush=True)
        for w in sorted({w for r in results[tool] for w in r["warnings"]}):
            print(f"  {tool} warning: {w}", flush=True)
    df = pd.DataFrame(rows)
    df.insert(0, "target", target.name)
    return df


def add_peer_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``x<peer>`` = bulk ESS/s of the row / that of the peer on the same target."""
    df = df.copy()
    for peer in PEERS:
        col = []
        for _, row in df.iterrows():
            p = df[(df.target == row.target) & (df.tool == peer)]
            col.append(row.ess_bulk_per_s / p.ess_bulk_per_s.iloc[0] if len(p) else np.nan)
        df[f"x{peer}"] = col
    return df


# Issue 10's targets for bulk ESS/s: >= 1.2x BlackJAX everywhere, >= nutpie on these two.
GOALS = {"blackjax": (1.2, None), "nutpie": (1.0, ("eight_schools", "gauss100"))}


def ratios(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (target, ours row, peer): ours / peer."""
    out = []
    for _, ours in df[df.tool.str.startswith("ours")].iterrows():
        for _, peer in df[(df.target == ours.target) & ~df.tool.str.startswith("ours")].iterrows():
            out.append({
                "target": ours.target,
                "ours": ours.tool,
                "peer": peer.tool,
                "run_time ours/peer": ours.run_s / peer.run_s,
                "compile ours/peer": ours.compile_s / peer.compile_s if peer.compile_s > 0 else np.nan,
                "ESS/s ours/peer": ours.ess_bulk_per_s / peer.ess_bulk_per_s,
                "grad_evals ours/peer": ours.grad_evals / peer.grad_evals,
                "overhead ours/peer": ours.overhead / peer.overhead,
            })
    return pd.DataFrame(out)


def goals(df: pd.DataFrame) -> pd.DataFrame:
    """Bulk ESS/s of each ours row against the issue's targets (ok / MISS / n/a)."""
    out = []
    for _, ours in df[df.tool.str.startswith("ours")].iterrows():
        row = {"target": ours.target, "ours": ours.tool, "ESS/s": ours.ess_bulk_per_s}
        for peer, (need, only) in GOALS.items():
            r = ours.get(f"x{peer}", np.nan)
            key = f"vs {peer} (need {need:g})"
            if only is not None and ours.target not in only:
                row[key] = f"{r:.2f} (no goal)" if np.isfinite(r) else "n/a"
            else:
                row[key] = "n/a" if not np.isfinite(r) else f"{r:.2f} {'ok' if r >= need else 'MISS'}"
        row["vs numpyro"] = f"{ours.get('xnumpyro', np.nan):.2f}"
        out.append(row)
    return pd.DataFrame(out)


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--targets", default="logreg,eight_schools,gauss100")
    p.add_argument("--tools", default="ours,numpyro,blackjax", help="comma-separated subset of ours,numpyro,blackjax")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help="';'-separated ours variants, each '+'-joined pp.NUTS field=value options and/or 'mesh' "
                        f"(default {DEFAULT_VARIANTS!r}; '' for defaults only)")
    p.add_argument("--host-devices", type=int, default=None,
                   help="simulated CPU devices (XLA_FLAGS, set before JAX starts); default: the chains if a "
                        "variant uses 'mesh', else 1")
    p.add_argument("--nutpie", choices=("auto", "run", "csv", "off"), default="auto",
                   help="auto: run mcmc_b2_nutpie.py if .venv-nutpie exists, else merge its csv; run; csv; off")
    p.add_argument("--nutpie-variants", default="default,low_rank", help="passed to mcmc_b2_nutpie.py --variants")
    args = p.parse_args(argv)
    if args.quick:
        cfg = {"chains": CHAINS, "warmup": 100, "samples": 100, "grad_iters": 200}
    else:
        cfg = {"chains": CHAINS, "warmup": 1000, "samples": 1000, "grad_iters": 5000}
    reps = args.reps or (1 if args.quick else 3)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    C.header(f"B2 NUTS: {cfg['chains']} chains x {cfg['warmup']} warmup x {cfg['samples']} draws, "
             f"target accept 0.8, max tree depth 10, diagonal mass; 1 warm-up + {reps} timed reps (medians)")
    variants, notes = make_variants(args.variants, cfg["chains"])
    print(f"JAX devices: {jax.device_count()} ({jax.default_backend()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}); "
          f"pp.NUTS fields: {[f.name for f in dataclasses.fields(pp.NUTS)]}")
    print("ours rows: " + ", ".join(f"{v.name} {v.options or ''}{' mesh' if v.mesh else ''}" for v in variants))
    for n in notes:
        print("  " + n)
    t_start = time.perf_counter()
    targets = [C.get_target(n.strip()) for n in args.targets.split(",")]
    tables = []
    for target in targets:
        df = bench_target(target, cfg, reps, tools, variants)
        tables.append(df)
        C.print_table(f"B2 {target.name}", df.drop(columns=["target"]))
    full = pd.concat(tables, ignore_index=True)
    nut, nut_notes = nutpie_rows(args, cfg, targets)
    if nut is not None:
        full = pd.concat([full, nut], ignore_index=True)
    full = add_peer_columns(full)
    print("\n" + "=" * 100)
    for n in nut_notes:
        print(n)
    for target in targets:
        C.print_table(f"B2 {target.name} (x<peer> = bulk ESS/s / peer's)",
                      full[full.target == target.name].drop(columns=["target", "flags"]))
    r = ratios(full)
    C.print_table("B2 ratios ours / peer (run time < 1: ours faster; ESS/s > 1: ours better)", r, "{:.3g}")
    g = goals(full)
    C.print_table("B2 bulk ESS/s against issue 10's targets (>= 1.2x blackjax everywhere; >= 1x nutpie on "
                  "eight_schools, gauss100)", g, "{:.4g}")
    flags = full[full["flags"].fillna("") != ""][["target", "tool", "flags"]]
    if len(flags):
        C.print_table("warnings", flags)
    tag = "mcmc_b2_quick" if args.quick else "mcmc_b2"
    C.save_table(tag, full, {"cfg": cfg, "reps": reps, "variants": [dataclasses.asdict(v) for v in variants],
                             "skipped": notes, "nutpie": nut_notes, "host_devices": jax.device_count()})
    C.save_table(tag + "_ratios", r)
    C.save_table(tag + "_goals", g)
    print(f"B2 total {time.perf_counter() - t_start:.0f} s; tables in {C.OUT_DIR}/{tag}*.csv")
    print(LEGEND)


LEGEND = """Columns (medians over the timed reps):
  compile_s   compile time of the sampling program. ours: idata.attrs['compile_time'] of the first
              call (pp.infer caches the program: later calls with the same shapes reuse it); blackjax: jit(program).lower().compile(), once, reused;
              numpyro: all JAX tracing + compiling inside warmup() + run() (it re-compiles on
              every call), measured with jax.monitoring events (common.CompileTimer);
              nutpie: nutpie.compile_pymc_model (numba), once per target, reused.
  run_s       warmup + sampling time, compile excluded (ours: idata.attrs['run_time']; numpyro:
              time of the warmup() and run() calls minus compile_s; nutpie: nutpie.sample).
  wall_s      one complete call as a user makes it (ours: the first pp.infer call, incl. tracing,
              initial points, compile and InferenceData; numpyro: warmup() + run(); blackjax: initialize_model +
              compile + run; nutpie: compile + sample).  jit_s: all tracing/compiling inside wall_s.
  ess_bulk, ess_tail   min over parameters (arviz); ess_bulk_per_s = ess_bulk / run_s.
  grad_evals  leapfrog steps of all chains, warmup included.
  grad_us     one value_and_grad of the tool's own log density, timed in a loop: jitted inside a
              fori_loop (blackjax uses numpyro's potential); nutpie: its numba C callback in a numba loop.
  overhead    run_s / (grad_evals x grad_us): 1 = the run costs only its gradients. vmapped chains
              run in lockstep (the longest trajectory of the 4 sets the pace) but 4 chains' gradients
              are batched, and nutpie runs chains in parallel threads (2 cores), so < 1 is possible.
              us_per_grad = run_s / grad_evals.
  x<peer>     bulk ESS/s of the row / the peer's on the same target (> 1: the row is better).
  flags       warnings raised (ours: pp.NumericalWarning status, e.g. poor_mixing, divergences)."""


if __name__ == "__main__":
    main()
