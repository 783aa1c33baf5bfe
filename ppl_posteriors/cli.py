"""``ppl-posteriors`` command line.

    ppl-posteriors [--host-devices N] demo [--quick] [--out DIR]
    ppl-posteriors [--host-devices N] devices

``--host-devices N`` gives JAX N CPU devices (``--xla_force_host_platform_device_count``);
the flag must be set before JAX starts, and importing this module has started it, so
the command restarts itself once with ``PPL_POSTERIORS_HOST_DEVICES=N`` in the
environment. The demo then runs its NUTS chains on a ``pp.make_mesh(chain=...)`` mesh
over those devices, each device its own chains (``chain_layout="per_device"``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings


def _demo(args) -> int:
    os.environ.setdefault("XLA_FLAGS", "")
    import jax

    jax.config.update("jax_enable_x64", True)
    import pandas as pd

    import ppl_posteriors as pp
    from ppl_posteriors import datasets, examples
    from ppl_posteriors.results.compare import method_table, parameter_table, plot_forest
    from ppl_posteriors.results.compat import to_netcdf

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    progress = not args.no_progress
    mesh = None
    if args.quick:
        configs = {
            "NUTS": pp.NUTS(num_chains=2, num_warmup=500, num_samples=500),
            "Laplace": pp.Laplace(num_samples=1000),
            "ADVI": pp.MeanFieldVI(num_steps=2000, num_samples=1000),
        }
    else:
        configs = {
            "NUTS": pp.NUTS(num_chains=4, num_warmup=1000, num_samples=1000),
            "Laplace": pp.Laplace(num_samples=4000),
            "ADVI": pp.MeanFieldVI(num_steps=5000, num_samples=4000),
        }

    devices = len(jax.devices())
    if devices > 1:
        chains = configs["NUTS"].num_chains
        mesh = pp.make_mesh(chain=max(d for d in range(1, devices + 1) if chains % d == 0))
        print(f"NUTS chains on {dict(mesh.shape)['chain']} host devices (chain_layout='per_device')")
    X, y, names = datasets.breast_cancer()
    logreg = pp.model(coords={"feature": names})(examples.logistic_regression)
    es = datasets.eight_schools()
    problems = [
        ("logreg", "Bayesian logistic regression, breast cancer (569 x 30, standardised)",
         logreg, (X,), {"y": y}, ["b0", "w"], ["b0", "w"]),
        ("eight_schools", "Eight schools, non-centred (Rubin 1981)",
         examples.eight_schools_noncentered, (es["sigma"],), {"y": es["y"]},
         ["mu", "tau", "theta"], ["mu", "tau", "theta"]),
    ]
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 20)
    key = jax.random.key(args.seed)
    t_all = time.perf_counter()
    for slug, title, model, margs, mkwargs, table_vars, plot_vars in problems:
        print(f"\n=== {title} ===", flush=True)
        results = {}
        for label, cfg in configs.items():
            key, sub = jax.random.split(key)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", pp.NumericalWarning)
                kw = {"mesh": mesh} if label == "NUTS" and mesh is not None else {}
                idata = pp.infer(model, *margs, method=cfg, rng_key=sub, progress=progress, **kw, **mkwargs)
            for w in caught:
                if issubclass(w.category, pp.NumericalWarning):
                    print(f"  warning ({label}): {w.message}")
            results[label] = idata
            path = os.path.join(out, f"{slug}_{cfg.method_name}.nc")
            to_netcdf(idata, path)
        if slug == "eight_schools":  # compiled programs are cached: the same call again pays only the run
            print("\nagain with a new key (cached programs: no tracing, no compiling):")
            for label, cfg in configs.items():
                key, sub = jax.random.split(key)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", pp.NumericalWarning)
                    kw = {"mesh": mesh} if label == "NUTS" and mesh is not None else {}
                    again = pp.infer(model, *margs, method=cfg, rng_key=sub, progress=False, **kw, **mkwargs)
                first = results[label].attrs
                print(f"  {label:8s} first call {first['wall_time']:6.2f} s (compile {first['compile_time']:5.2f} s)"
                      f" -> again {again.attrs['wall_time']:6.3f} s (cache hit: {bool(again.attrs['cache_hit'])})")
        table = parameter_table(results, table_vars)
        if slug == "logreg":  # the intercept and the five largest coefficients by |NUTS mean|
            top = table[("NUTS", "mean")].drop("b0").abs().sort_values(ascending=False).index[:5]
            table = table.loc[["b0", *top]]
        print("\nposterior mean and sd (constrained space):")
        print(table.round(3).to_string())
        print("\nmethods (accuracy against NUTS over all of", ", ".join(table_vars) + "):")
        print(method_table(results, table_vars, reference="NUTS").round(3).to_string())
        png = plot_forest(results, plot_vars if slug != "logreg" else ["b0", "w"],
                          os.path.join(out, f"{slug}_forest.png"), title=title)
        print(f"\nwrote {png} and {len(results)} netcdf files in {out}")
    print(f"\ndemo finished in {time.perf_counter() - t_all:.1f} s")
    return 0


def _devices(args) -> int:
    import jax

    devices = jax.devices()
    print(f"{len(devices)} {devices[0].platform} device(s): {', '.join(str(d) for d in devices)}")
    return 0


def _restart_with_host_devices(n: int, argv) -> None:
    """Re-execute this command with ``PPL_POSTERIORS_HOST_DEVICES=n`` unless JAX has n CPU devices."""
    from ._errors import ConfigError
    from ._host import ENV, host_device_count

    if not (isinstance(n, int) and n >= 1):
        raise ConfigError(f"--host-devices {n}: give an integer >= 1")
    if host_device_count() == n:
        return
    if os.environ.get(ENV) == str(n):  # already restarted once: the flag did not take
        raise ConfigError(f"--host-devices {n}: JAX still has {host_device_count()} CPU devices after restarting "
                          f"with {ENV}={n}; is another XLA_FLAGS device count set?")
    env = dict(os.environ, **{ENV: str(n)})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "ppl_posteriors.cli", *argv], env)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="ppl-posteriors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host-devices", type=int, default=None, metavar="N",
                        help="give JAX N CPU devices (chains run on them in parallel); "
                             "restarts the command with PPL_POSTERIORS_HOST_DEVICES=N")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("devices", help="list JAX's devices (with --host-devices N: N CPU devices)")
    demo = sub.add_parser(
        "demo",
        help="NUTS, Laplace and ADVI on logistic regression (breast cancer) and eight schools",
    )
    demo.add_argument("--quick", action="store_true", help="fewer draws and steps (CI smoke run)")
    demo.add_argument("--out", default="demo_out", help="folder for netcdf files and plots")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if args.host_devices is not None:
        _restart_with_host_devices(args.host_devices, argv)
    if args.command == "devices":
        return _devices(args)
    if args.command == "demo":
        return _demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
