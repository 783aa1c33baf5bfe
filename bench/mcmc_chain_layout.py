"""Chain layout on CPU host devices: vmapped chains vs sharded lockstep vs per-device loops.

Issue 10 item 6. NUTS, 4 chains x ``--warmup`` x ``--samples`` on B2's eight schools
(non-centred) and gauss100, three layouts of the same config and keys:

* ``vmap``: no mesh, one device, the chains vmapped (every chain waits for the longest
  NUTS tree of the batch at every transition);
* ``lockstep``: ``mesh=pp.make_mesh(chain=D)``, ``chain_layout="lockstep"``: XLA (GSPMD)
  splits the vmapped loop over D = ``--devices`` host devices, still in lockstep;
* ``per_device``: the same mesh, ``chain_layout="per_device"``: ``jax.shard_map``, each
  device runs its own loop on its chain.

Each layout is compiled by a first call, then timed over ``--reps`` calls with new keys
(cached program: run only): wall time (``time.perf_counter``) and CPU time of the process
(``time.process_time``, all threads), their medians, and min bulk ESS per wall second.
Host devices share the machine's cores: on a machine with fewer free cores than devices,
per-device loops cannot run at the same time and wall times mostly measure contention.

    python bench/mcmc_chain_layout.py [--devices 4] [--reps 3] [--warmup 1000] [--samples 1000]
        [--targets eight_schools,gauss100] [--layouts vmap,lockstep,per_device]
"""

# ruff: noqa: I001, E402
from __future__ import annotations

import argparse
import os
import sys

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--devices", type=int, default=4)
parser.add_argument("--reps", type=int, default=3)
parser.add_argument("--warmup", type=int, default=1000)
parser.add_argument("--samples", type=int, default=1000)
parser.add_argument("--targets", default="eight_schools,gauss100")
parser.add_argument("--layouts", default="vmap,lockstep,per_device")
args = parser.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"

import time
import warnings

import common as C  # sets float64  # isort: skip
import numpy as np

import ppl_posteriors as pp


def run(target, layout, seed):
    mesh = None if layout == "vmap" else pp.make_mesh(chain=args.devices)
    cfg = pp.NUTS(num_chains=4, num_warmup=args.warmup, num_samples=args.samples,
                  chain_layout="lockstep" if layout == "vmap" else layout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w0, c0 = time.perf_counter(), time.process_time()
        idata = pp.infer(target.model, *target.args, method=cfg, rng_key=seed, progress=False, mesh=mesh,
                         **target.kwargs)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    bulk, tail = C.ess_min({n: idata.posterior[n].values for n in target.latent}, target.latent)
    return dict(wall=wall, cpu=cpu, sample_time=float(idata.attrs["run_time"]), bulk=bulk, tail=tail,
                grads=int(idata.attrs["grad_evals"]), compiled=int(idata.attrs["programs_compiled"]))


def main():
    print(f"{os.cpu_count()} cores, {len(__import__('jax').devices())} host devices, "
          f"4 chains x {args.warmup} warmup x {args.samples} draws, reps {args.reps}", flush=True)
    rows = []
    for name in args.targets.split(","):
        target = C.get_target(name)
        for layout in args.layouts.split(","):
            run(target, layout, 1000)  # compile
            reps = [run(target, layout, s) for s in range(args.reps)]
            med = {k: float(np.median([r[k] for r in reps])) for k in reps[0]}
            med["ess_per_s"] = med["bulk"] / med["sample_time"]
            rows.append(dict(target=name, layout=layout, **med))
            print(rows[-1], flush=True)
    print()
    print(f"{'target':14s} {'layout':11s} {'wall s':>7s} {'cpu s':>7s} {'run s':>7s} {'bulk ESS':>9s} "
          f"{'tail ESS':>9s} {'ESS/s':>7s} {'grads':>9s}")
    for r in rows:
        print(f"{r['target']:14s} {r['layout']:11s} {r['wall']:7.2f} {r['cpu']:7.2f} {r['sample_time']:7.2f} "
              f"{r['bulk']:9.0f} {r['tail']:9.0f} {r['ess_per_s']:7.0f} {r['grads']:9.0f}")


if __name__ == "__main__":
    sys.exit(main())
