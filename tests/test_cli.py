"""The main job: `ppl-posteriors demo --quick` writes netcdf files and forest plots."""

from ppl_posteriors.cli import main
from ppl_posteriors.results import compat


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for slug in ("logreg", "eight_schools"):
        assert (tmp_path / f"{slug}_forest.png").stat().st_size > 10_000
        for method in ("nuts", "laplace", "meanfield_vi"):
            idata = compat.from_netcdf(tmp_path / f"{slug}_{method}.nc")
            assert isinstance(idata, compat.RESULT_TYPE) and idata.attrs["method"] == method
            assert "posterior" in compat.group_names(idata)
    assert "posterior mean and sd" in out and "max |Δmean|/sd" in out
    assert "demo finished" in out
