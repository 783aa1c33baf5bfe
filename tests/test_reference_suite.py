"""Slow tier (``nox -s reference``): NUTS with default settings on every posteriordb
posterior in ../shared/posteriordb, against the reference draws.

A posterior passes if every parameter's mean and sd agree with the reference within
five combined Monte Carlo standard errors, OR if the library flagged the run
(divergences, R-hat) with a NumericalWarning -- a biased answer must never be silent.
Centred eight schools must be flagged. The table is printed (run with -s) and
written to bench/out/reference_suite.md.
"""

import time
import warnings

import jax
import numpy as np
import pytest
from reference import ROOT, compare_with_reference, posteriordb_dir

import ppl_posteriors as pp

pytestmark = pytest.mark.slow

_NAMES = []
if posteriordb_dir() is not None:
    import sys

    sys.path.insert(0, str(posteriordb_dir()))
    from load import list_posteriors

    _NAMES = list_posteriors()

_ROWS = []


@pytest.mark.parametrize("posterior", _NAMES)
def test_reference_posterior(pdb, posterior):
    data, ref, model = pdb.load(posterior)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always", pp.NumericalWarning)
        idata = pp.infer(model, data, method="nuts", rng_key=jax.random.key(0), progress=False)
    wall = time.perf_counter() - t0
    flagged = [str(w.message) for w in caught if issubclass(w.category, pp.NumericalWarning)]
    rows, failures = compare_with_reference(idata, ref)
    max_z = max(abs(r[1]) for r in rows)
    max_sd = max(abs(r[2]) for r in rows)
    _ROWS.append((posterior, max_z, max_sd, int(idata.attrs["num_divergent"]),
                  float(idata.attrs["rhat_max"]), wall, "pass" if not failures else "MISMATCH",
                  "flagged" if flagged else ""))
    _write_table()
    if posterior == "eight_schools-eight_schools_centered":
        assert any("diverged" in m for m in flagged), "centred eight schools must warn about divergences"
    assert not failures or flagged, "silently biased:\n" + "\n".join(failures)


def _write_table():
    lines = [
        "| posterior | max abs(Δmean)/sd | max abs(Δsd)/sd | divergences | max R-hat | wall s | vs reference | warning |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p, z, s, d, r, w, ok, fl in _ROWS:
        lines.append(f"| {p} | {z:.3f} | {s:.3f} | {d} | {r:.3f} | {w:.1f} | {ok} | {fl} |")
    text = "\n".join(lines)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "reference_suite.md").write_text(text + "\n")
    print("\n" + text)
