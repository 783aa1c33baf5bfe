"""Run the B1 (Laplace for a neural net), B2 (NUTS), B3 (VI) and B4 (Laplace for PPL
models) benchmarks one after another.

Each script runs in its own Python process (fresh JAX caches, no cross-talk), its output
is shown live and also written to bench/out/<script>[_quick].log; the tables are in
bench/out/*.csv. The NUTS reference used by B3 and B4 is computed once and cached in
bench/out/ (delete the ref_*.npz files to recompute it).

    python bench/run_all.py [--quick] [--only b1,b2,b3,b4] [--timeout SECONDS] [-- extra args]

Extra arguments after ``--`` are passed to every script (e.g. ``-- --reps 5``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
SCRIPTS = {"b1": "laplace_b1.py", "b2": "mcmc_b2.py", "b3": "vi_b3.py", "b4": "laplace_b4.py"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke check (~6 min on 2 cores)")
    p.add_argument("--only", default="b1,b2,b3,b4", help="comma-separated subset of b1,b2,b3,b4")
    p.add_argument("--timeout", type=float, default=None, help="per-script timeout in seconds")
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    summary, failed = [], False
    for key in args.only.split(","):
        script = SCRIPTS[key.strip()]
        cmd = [sys.executable, str(BENCH / script)] + (["--quick"] if args.quick else []) + extra
        log = OUT / f"{Path(script).stem}{'_quick' if args.quick else ''}.log"
        print(f"\n>>> {' '.join(cmd)}  (log: {log})", flush=True)
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, cwd=BENCH, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    sys.stdout.write(line)
                    fh.write(line)
                    if args.timeout and time.perf_counter() - t0 > args.timeout:
                        raise subprocess.TimeoutExpired(cmd, args.timeout)
                rc = proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = "timeout"
        dt = time.perf_counter() - t0
        summary.append((script, rc, dt))
        failed |= rc != 0
    print("\n>>> summary")
    for script, rc, dt in summary:
        print(f"  {script:16s} exit {rc}  {dt:7.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
