"""Write the cross-version netcdf fixtures of tests/test_results_compat.py.

Run once under each ArviZ version (Python 3.11 with arviz 0.23, Python 3.12 with arviz 1.x):

    python tests/data/make_compat_fixtures.py

It writes ``tests/data/{laplace,meanfield_vi}_arviz{0,1}.nc`` for the installed version:
eight schools (non-centred), 40 draws, so each file is a few tens of kB.
"""

import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("PPL_POSTERIORS_PROGRESS", "0")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import ppl_posteriors as pp  # noqa: E402
from ppl_posteriors.datasets import eight_schools  # noqa: E402
from ppl_posteriors.examples import eight_schools_noncentered  # noqa: E402
from ppl_posteriors.results import compat  # noqa: E402

CONFIGS = {
    "laplace": pp.Laplace(num_samples=40, throw=False),
    "meanfield_vi": pp.MeanFieldVI(num_steps=300, num_samples=40, throw=False),
}


def main(out=Path(__file__).parent) -> int:
    d = eight_schools()
    major = compat.ARVIZ_VERSION.split(".")[0]
    for name, cfg in CONFIGS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = pp.infer(eight_schools_noncentered, d["sigma"], y=d["y"], method=cfg,
                           rng_key=jax.random.key(3), progress=False)
        path = compat.to_netcdf(res, Path(out) / f"{name}_arviz{major}.nc")
        print(f"wrote {path} ({os.path.getsize(path)} bytes, arviz {compat.ARVIZ_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
