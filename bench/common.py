"""Shared helpers of the B2/B3/B4 benchmarks (see bench/README.md and ../shared/BENCHMARKS.md).

Importing this module switches JAX to float64 (every benchmark runs in float64, peers
included) and hides ppl_posteriors' progress bars. Import it before anything that
creates JAX arrays.

Contents
--------
* timing: :func:`repeat` (warm-up call(s), then >= 3 timed repetitions, medians),
  :func:`block`, :func:`grad_time` (one jitted gradient timed inside a ``fori_loop``);
* targets: :func:`get_target` / :data:`TARGETS` -- ``logreg``, ``eight_schools``,
  ``gauss100`` as NumPyro models with their arguments and latent site names;
* draws: :func:`flatten` (site dict -> (n, P) matrix + labels), :func:`ess_min`
  (min bulk / tail ESS with ArviZ), :func:`accuracy` (errors against a reference);
* the NUTS reference for B3/B4: :func:`nuts_reference` (numpyro NUTS, 4 x 5000 draws,
  cached in bench/out/ as .npz);
* peers' plumbing: :func:`numpyro_logdensity` (numpyro's potential as a BlackJAX
  log density, as the BlackJAX docs do);
* output: :func:`print_table`, :func:`save_table`, :func:`capture_warnings`.
"""

from __future__ import annotations

import os

os.environ.setdefault("PPL_POSTERIORS_PROGRESS", "0")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pandas as pd  # noqa: E402

import ppl_posteriors as pp  # noqa: E402
from ppl_posteriors.datasets import breast_cancer, eight_schools  # noqa: E402
from ppl_posteriors.examples import eight_schools_noncentered, logistic_regression  # noqa: E402

warnings.filterwarnings("ignore", message=".*ArviZ is undergoing a major refactor.*")

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"

__all__ = [
    "OUT_DIR",
    "TARGETS",
    "Target",
    "accuracy",
    "base_parser",
    "block",
    "CompileTimer",
    "capture_warnings",
    "compact_warnings",
    "data_check",
    "ess_min",
    "flatten",
    "get_target",
    "grad_time",
    "header",
    "median",
    "numpyro_logdensity",
    "nuts_reference",
    "print_table",
    "repeat",
    "save_table",
]


# ----------------------------------------------------------------------------- timing


def block(x):
    """Wait for every array in ``x`` (async dispatch) and return it."""
    return jax.block_until_ready(x)


def median(values):
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(statistics.median(vals)) if vals else float("nan")


def repeat(fn, reps: int = 3, warmup: int = 1, seed0: int = 0) -> list:
    """Call ``fn(seed)`` ``warmup`` times (discarded), then ``reps`` times; return those results.

    ``fn`` does its own timing (it knows what is compile and what is run) and returns
    a dict; the caller takes medians over the list. Seeds differ between calls, so the
    medians also average over the randomness of the algorithm (ESS, VI errors).
    """
    for i in range(warmup):
        fn(seed0 + 1000 + i)
    return [fn(seed0 + i) for i in range(reps)]


def grad_time(logdensity_fn, position, num_iters: int = 5000, reps: int = 3) -> float:
    """Seconds per call of one jitted ``value_and_grad(logdensity_fn)`` (unbatched).

    Timed inside one jitted ``lax.fori_loop`` of ``num_iters`` iterations, each taking a
    tiny gradient step ``x + 1e-9 * g`` so that the gradient cannot be hoisted out of the
    loop. Compile time excluded; median of ``reps`` runs after one warm-up.
    """
    vg = jax.value_and_grad(logdensity_fn)

    def body(_, carry):
        x, acc = carry
        lp, g = vg(x)
        x = jax.tree.map(lambda a, b: a + 1e-9 * b, x, g)
        return x, acc + lp

    def loop(x):
        return jax.lax.fori_loop(0, num_iters, body, (x, jnp.zeros(())))

    compiled = jax.jit(loop).lower(position).compile()
    block(compiled(position))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        block(compiled(position))
        times.append(time.perf_counter() - t0)
    return median(times) / num_iters


class CompileTimer:
    """Seconds JAX spends tracing, lowering and compiling inside a ``with`` block.

    Listens to JAX's monitoring events (``/jax/core/compile/jaxpr_trace_duration``,
    ``jaxpr_to_mlir_module_duration``, ``backend_compile_duration``) and measures the
    union of their time intervals (nested jits are traced inside their caller's trace,
    so summing would count them twice). This separates compile time from run time for
    tools that compile inside an opaque call (numpyro's ``MCMC.run`` and ``svi.run``
    re-trace and re-compile on every call).
    """

    _EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )
    _active: list = []
    _registered = False

    def __init__(self):
        self.intervals: list[tuple[float, float]] = []

    @classmethod
    def _listener(cls, event, duration, **_):
        if event in cls._EVENTS and cls._active:
            end = time.perf_counter()
            for timer in cls._active:
                timer.intervals.append((end - duration, end))

    @property
    def seconds(self) -> float:
        """Length of the union of the recorded intervals (so far)."""
        total, cur_start, cur_end = 0.0, None, None
        for s, e in sorted(self.intervals):
            if cur_end is None or s > cur_end:
                if cur_end is not None:
                    total += cur_end - cur_start
                cur_start, cur_end = s, e
            else:
                cur_end = max(cur_end, e)
        if cur_end is not None:
            total += cur_end - cur_start
        return total

    def __enter__(self):
        if not CompileTimer._registered:
            jax.monitoring.register_event_duration_secs_listener(CompileTimer._listener)
            CompileTimer._registered = True
        CompileTimer._active.append(self)
        return self

    def __exit__(self, *exc):
        CompileTimer._active.remove(self)


@contextlib.contextmanager
def capture_warnings():
    """Record every warning raised inside (list of ``warnings.WarningMessage``), never drop it.

    The caller puts them in its table ("flagged" column) and prints them.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=".*ArviZ is undergoing a major refactor.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield caught


def numerical_warnings(caught) -> list[str]:
    """Messages of the ``pp.NumericalWarning`` among ``caught``."""
    return [str(w.message) for w in caught if issubclass(w.category, pp.NumericalWarning)]


def compact_warnings(messages: list[str]) -> list[str]:
    """'label: method: status: text' messages -> one line per (label, status) with the count
    and the first text (PSIS k-hat values listed)."""
    import re

    groups: dict[tuple[str, str], list[str]] = {}
    for m in messages:
        label, _, rest = m.partition(": ")
        parts = rest.split(": ", 2)
        status = parts[1] if len(parts) == 3 else rest[:40]
        groups.setdefault((label, status), []).append(parts[-1])
    out = []
    for (label, status), texts in groups.items():
        khats = [k for t in texts for k in re.findall(r"k-hat = ([0-9.]+)", t)]
        if khats:
            out.append(f"{label}: {status} x{len(texts)} (PSIS k-hat {', '.join(khats)})")
        else:
            out.append(f"{label}: {status} x{len(texts)}: {texts[0][:160]}")
    return out


# ----------------------------------------------------------------------------- targets


@dataclass
class Target:
    """A benchmark posterior: a NumPyro model, its arguments and its latent sites."""

    name: str
    model: object
    args: tuple
    kwargs: dict
    latent: list[str]
    description: str = ""
    extra: dict = field(default_factory=dict)

    def log_density(self):
        """ppl_posteriors' LogDensity of the target (unconstrained, Jacobian included)."""
        return pp.log_density(self.model, *self.args, **self.kwargs)


def gauss100_model(scale_tril):
    """100-d N(0, Sigma) with Sigma = L L^T (``scale_tril`` = L)."""
    numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(scale_tril.shape[0]), scale_tril=scale_tril))


def gauss100_sigma(dim: int = 100, condition: float = 1000.0, seed: int = 20240601) -> np.ndarray:
    """A fixed random covariance: Q diag(lam) Q^T with Q Haar-orthogonal (seeded) and
    lam log-spaced from 1/sqrt(condition) to sqrt(condition) (condition number ``condition``,
    geometric mean 1, marginal sds between ~0.18 and ~5.6 for condition 1000)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.sign(np.diag(r))
    lam = np.geomspace(condition**-0.5, condition**0.5, dim)
    sigma = (q * lam) @ q.T
    return 0.5 * (sigma + sigma.T)


def _logreg() -> Target:
    X, y, names = breast_cancer()
    return Target(
        "logreg",
        logistic_regression,
        (X,),
        {"y": y},
        ["b0", "w"],
        "breast-cancer logistic regression, b0 ~ N(0,5), w ~ N(0,1), D=31",
    )


def _eight_schools() -> Target:
    d = eight_schools()
    return Target(
        "eight_schools",
        eight_schools_noncentered,
        (d["sigma"],),
        {"y": d["y"]},
        ["mu", "tau", "theta_z"],
        "eight schools, non-centred, D=10",
    )


def _gauss100() -> Target:
    sigma = gauss100_sigma()
    L = np.linalg.cholesky(sigma)
    return Target(
        "gauss100",
        gauss100_model,
        (L,),
        {},
        ["x"],
        "100-d N(0, Sigma), cond(Sigma)=1000",
        {"sigma": sigma},
    )


TARGETS = {"logreg": _logreg, "eight_schools": _eight_schools, "gauss100": _gauss100}


def get_target(name: str) -> Target:
    return TARGETS[name]()


def data_check(target: Target) -> float:
    """Sum of |x| over the target's data arrays: a cheap fingerprint that
    ``mcmc_b2_nutpie.py`` (another virtualenv, no JAX) records so that ``mcmc_b2.py`` can
    verify that both sampled the same posterior."""
    arrays = list(target.args) + list(target.kwargs.values())
    return float(sum(np.abs(np.asarray(a, dtype=np.float64)).sum() for a in arrays))


# ----------------------------------------------------------------------------- draws


def flatten(draws: dict, names: list[str], sample_ndim: int) -> tuple[np.ndarray, list[str]]:
    """Stack the sites ``names`` of ``draws`` (leading ``sample_ndim`` axes are samples) into
    a matrix (num_draws, P) with labels ``"w[3]"``; sites in the order of ``names``."""
    cols, labels = [], []
    for name in names:
        a = np.asarray(draws[name], dtype=np.float64)
        lead = a.shape[:sample_ndim]
        event = a.shape[sample_ndim:]
        cols.append(a.reshape((int(np.prod(lead)), -1)))
        if event == ():
            labels.append(name)
        else:
            labels.extend(f"{name}[{','.join(map(str, i))}]" for i in np.ndindex(*event))
    return np.concatenate(cols, axis=1), labels


def run_pp_approximation(target: Target, ld, method, seed: int, num_draws: int) -> dict:
    """One timed ``pp.infer`` call of a Laplace or VI ``method``, then ``num_draws`` more draws
    from its stored approximation, constrained with the model's transforms.

    Returns the table fields (compile/run/wall/jit seconds, flat draws and labels, PSIS
    k-hat, NumericalWarning messages) plus the idata and the caught warnings.
    """
    import ppl_posteriors as pp

    with capture_warnings() as caught, CompileTimer() as ct:
        t0 = time.perf_counter()
        idata = pp.infer(target.model, *target.args, method=method, rng_key=seed, progress=False,
                         **target.kwargs)
        wall = time.perf_counter() - t0
    unc = pp.sample_approximation(idata, seed + 777, num_draws).unconstrained_posterior
    position = {n: np.asarray(unc[n].values[0]) for n, _ in ld.layout}
    draws = jax.jit(jax.vmap(ld.constrain))(position)
    flat, labels = flatten(draws, target.latent, 1)
    a = idata.attrs
    return {"compile_s": float(a["compile_time"]), "run_s": float(a["run_time"]), "wall_s": wall,
            "jit_s": ct.seconds, "flat": flat, "labels": labels,
            "khat": float(a.get("psis_khat", np.nan)), "messages": numerical_warnings(caught),
            "idata": idata, "caught": caught}


def ess_min(draws: dict, names: list[str]) -> tuple[float, float]:
    """(min bulk ESS, min tail ESS) with ArviZ over every element of the sites ``names``;
    ``draws[name]`` has shape (chain, draw, ...)."""
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = az.convert_to_dataset({n: np.asarray(draws[n]) for n in names})
        bulk = float(np.nanmin(az.ess(ds, method="bulk").to_array().values))
        tail = float(np.nanmin(az.ess(ds, method="tail").to_array().values))
    return bulk, tail


def rhat_max(draws: dict, names: list[str]) -> float:
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = az.convert_to_dataset({n: np.asarray(draws[n]) for n in names})
        return float(np.nanmax(az.rhat(ds).to_array().values))


def accuracy(flat: np.ndarray, labels: list[str], ref: dict) -> dict:
    """Errors of draws ``flat`` (n, P) against the reference's moments.

    mean_err = max_p |mean_p - ref mean_p| / ref sd_p; sd_err = max_p |sd_p / ref sd_p - 1|;
    also the parameter where each maximum is reached. Non-finite draws make both inf.
    """
    if not np.all(np.isfinite(flat)):
        n_bad = int(np.sum(~np.all(np.isfinite(flat), axis=1)))
        return {"mean_err": np.inf, "mean_err_at": f"{n_bad} non-finite draws", "sd_err": np.inf, "sd_err_at": ""}
    if list(labels) != list(ref["labels"]):
        raise ValueError(f"labels {labels[:5]}... do not match the reference's {list(ref['labels'])[:5]}...")
    m, s = flat.mean(0), flat.std(0, ddof=1)
    e_mean = np.abs(m - ref["mean"]) / ref["sd"]
    e_sd = np.abs(s / ref["sd"] - 1.0)
    i, j = int(np.argmax(e_mean)), int(np.argmax(e_sd))
    return {"mean_err": float(e_mean[i]), "mean_err_at": labels[i], "sd_err": float(e_sd[j]), "sd_err_at": labels[j]}


# ----------------------------------------------------------------------------- peers' plumbing


def numpyro_logdensity(target: Target, rng_key, num_chains: int | None = None):
    """numpyro's potential as a BlackJAX log density, as the BlackJAX docs do.

    Returns (logdensity_fn, init_positions, constrain_fn): init positions are numpyro's
    default uniform(-2, 2) on the unconstrained space, with a leading chain axis when
    ``num_chains`` is given; ``constrain_fn(position)`` gives every latent and
    deterministic site (one position, vmap it for draws).
    """
    from numpyro.infer.util import initialize_model

    keys = jax.random.split(rng_key, num_chains) if num_chains else rng_key
    init, potential_gen, postprocess_gen, _ = initialize_model(
        keys, target.model, model_args=target.args, model_kwargs=target.kwargs, dynamic_args=True
    )
    potential = potential_gen(*target.args, **target.kwargs)
    constrain = postprocess_gen(*target.args, **target.kwargs)

    def logdensity_fn(position):
        return -potential(position)

    return logdensity_fn, init.z, constrain


# ----------------------------------------------------------------------------- NUTS reference


def nuts_reference(target: Target, num_chains: int = 4, num_samples: int = 5000, num_warmup: int = 2000,
                   seed: int = 12345, verbose: bool = True) -> dict:
    """Long NUTS reference draws of ``target``'s latent sites, cached in bench/out/.

    Sampler: numpyro NUTS (independent of ppl_posteriors), float64, target acceptance
    0.9, diagonal mass matrix, ``num_chains`` vectorized chains x ``num_samples`` draws
    after ``num_warmup`` warmup. The .npz holds the constrained draws of each latent site
    (chain, draw, ...), the flattened moments (``labels``, ``mean``, ``sd``) and
    diagnostics (max R-hat, min bulk / tail ESS, divergences).
    """
    from numpyro.infer import MCMC, NUTS

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"ref_{target.name}_{num_chains}x{num_samples}_w{num_warmup}_s{seed}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        ref = {k: z[k] for k in z.files}
        ref["labels"] = [str(s) for s in ref["labels"]]
        ref["draws"] = {n: ref.pop(f"draws_{n}") for n in target.latent}
        ref["path"] = str(path)
        if verbose:
            print(f"[reference] {target.name}: loaded {path.name} (max R-hat {float(ref['rhat']):.4f}, "
                  f"min bulk ESS {float(ref['ess_bulk']):.0f})", flush=True)
        return ref
    if verbose:
        print(f"[reference] {target.name}: computing numpyro NUTS {num_chains} x ({num_warmup} + "
              f"{num_samples}) draws -> {path.name} ...", flush=True)
    t0 = time.perf_counter()
    mcmc = MCMC(
        NUTS(target.model, target_accept_prob=0.9, max_tree_depth=10),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(seed), *target.args, **target.kwargs)
    samples = mcmc.get_samples(group_by_chain=True)
    draws = {n: np.asarray(samples[n]) for n in target.latent}
    n_div = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    flat, labels = flatten(draws, target.latent, 2)
    bulk, tail = ess_min(draws, target.latent)
    rhat = rhat_max(draws, target.latent)
    out = {
        "labels": np.asarray(labels),
        "mean": flat.mean(0),
        "sd": flat.std(0, ddof=1),
        "rhat": np.asarray(rhat),
        "ess_bulk": np.asarray(bulk),
        "ess_tail": np.asarray(tail),
        "divergences": np.asarray(n_div),
        "seconds": np.asarray(time.perf_counter() - t0),
        **{f"draws_{n}": v for n, v in draws.items()},
    }
    np.savez_compressed(path, **out)
    if verbose:
        print(f"[reference] {target.name}: {time.perf_counter() - t0:.1f} s, max R-hat {rhat:.4f}, "
              f"min bulk ESS {bulk:.0f}, min tail ESS {tail:.0f}, divergences {n_div}", flush=True)
        if rhat > 1.01 or n_div > 0:
            print(f"[reference] WARNING: {target.name} reference is suspect (R-hat {rhat:.4f}, "
                  f"{n_div} divergences)", flush=True)
    return nuts_reference(target, num_chains, num_samples, num_warmup, seed, verbose=False)


# ----------------------------------------------------------------------------- output


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke check, not a measurement")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions after the warm-up (default 3; 1 with --quick)")
    return p


def header(title: str) -> None:
    import arviz
    import blackjax
    import optax

    print("=" * 100)
    print(title)
    print(
        f"python {platform.python_version()}, jax {jax.__version__} ({jax.default_backend()}, "
        f"{os.cpu_count()} CPUs), numpyro {numpyro.__version__}, blackjax {blackjax.__version__}, "
        f"optax {optax.__version__}, arviz {arviz.__version__}, ppl_posteriors {pp.__version__}; float64"
    )
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S')}; command: {' '.join(sys.argv)}")
    print("=" * 100, flush=True)


def print_table(title: str, df: pd.DataFrame, floatfmt: str = "{:.4g}") -> None:
    print()
    print(f"--- {title}")
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_colwidth", 60):
        print(df.to_string(index=False, float_format=lambda v: floatfmt.format(v)))
    print(flush=True)


def save_table(name: str, df: pd.DataFrame, meta: dict | None = None) -> Path:
    """Write ``df`` to bench/out/{name}.csv (and the run's settings to {name}.json)."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.csv"
    df.to_csv(path, index=False)
    if meta is not None:
        (OUT_DIR / f"{name}.json").write_text(json.dumps(meta, indent=2, default=str))
    return path
