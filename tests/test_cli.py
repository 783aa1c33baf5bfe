"""The main job: `ppl-posteriors demo --quick` writes netcdf files and forest plots."""

import arviz as az

from ppl_posteriors.cli import main


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for slug in ("logreg", "eight_schools"):
        assert (tmp_path / f"{slug}_forest.png").stat().st_size > 10_000
        for method in ("nuts", "laplace", "meanfield_vi"):
            idata = az.from_netcdf(str(tmp_path / f"{slug}_{method}.nc"))
            assert idata.attrs["method"] == method
    assert "posterior mean and sd" in out and "max |Δmean|/sd" in out
    assert "demo finished" in out
