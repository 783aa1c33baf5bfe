"""Execute the notebooks in notebooks/ in place and save their outputs.

    python docs/run_notebooks.py                      # every notebooks/*.ipynb
    python docs/run_notebooks.py notebooks/01_quickstart.ipynb
    python docs/run_notebooks.py --kernel my-kernel   # a registered kernelspec instead

Each notebook runs top to bottom in a fresh kernel with its own folder as the
working directory (nbclient, ``--timeout`` seconds per cell, default 600). By
default the kernel is this interpreter (``sys.executable``), so the notebooks run
against the environment that runs this script (e.g. the nox session's), whatever
``python3`` kernelspec happens to be registered. A notebook is written back only
if every cell ran; the script exits with status 1 if any notebook failed (the
failing cell and its traceback are printed) and 2 on bad arguments.
Progress bars are switched off (``PPL_POSTERIORS_PROGRESS=0``) so the saved
outputs are clean, and no per-cell timing metadata is recorded, so re-running an
unchanged notebook changes only its outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def _kernel_manager(kernel_name: str | None):
    """A kernel manager for ``kernel_name``, or for this interpreter when None."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    if kernel_name is None:
        # no kernel directories: only ipykernel's native spec is found, which
        # launches sys.executable -m ipykernel_launcher
        ksm = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)
        return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ksm)
    return AsyncKernelManager(kernel_name=kernel_name)


def run_notebook(path: Path, *, timeout: int, kernel_name: str | None) -> tuple[bool, float]:
    """Execute ``path`` in place; returns (ok, seconds). Writes the file only when ok."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        km=_kernel_manager(kernel_name),
        timeout=timeout,
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
        store_widget_state=False,
    )
    t0 = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        print(f"FAILED {path} after {time.perf_counter() - t0:.1f} s:\n{e}", file=sys.stderr)
        return False, time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return True, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: every notebooks/*.ipynb)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    parser.add_argument("--kernel", default=None,
                        help="registered kernelspec name (default: this Python interpreter)")
    args = parser.parse_args(argv)

    paths = args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb"))
    paths = [p.resolve() for p in paths]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print(f"no such notebook: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    if not paths:
        print(f"no notebooks in {NOTEBOOKS}", file=sys.stderr)
        return 2

    os.environ["PPL_POSTERIORS_PROGRESS"] = "0"  # inherited by the kernels
    failed = []
    for path in paths:
        print(f"running {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ...", flush=True)
        ok, seconds = run_notebook(path, timeout=args.timeout, kernel_name=args.kernel)
        print(f"  {'ok' if ok else 'FAILED'} in {seconds:.1f} s", flush=True)
        if not ok:
            failed.append(path)
    if failed:
        print(f"{len(failed)} of {len(paths)} notebook(s) failed: {', '.join(p.name for p in failed)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
