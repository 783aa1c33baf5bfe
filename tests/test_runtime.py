"""The runtime: data are jit arguments, and a second call neither traces nor compiles."""

import warnings

import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl_posteriors as pp

# small configs so that every registered method runs in a second or two
SMALL = {
    "nuts": pp.NUTS(num_chains=2, num_warmup=50, num_samples=50),
    "hmc": pp.HMC(num_chains=2, num_warmup=50, num_samples=50, num_integration_steps=4),
    "mala": pp.MALA(num_chains=2, num_warmup=50, num_samples=50),
    "barker": pp.Barker(num_chains=2, num_warmup=50, num_samples=50),
    "rmh": pp.RMH(num_chains=2, num_warmup=50, num_samples=50),
    "mclmc": pp.MCLMC(num_chains=2, num_warmup=50, num_samples=50),
    "adjusted_mclmc": pp.AdjustedMCLMC(num_chains=2, num_warmup=50, num_samples=50),
    "elliptical_slice": pp.EllipticalSlice(num_chains=2, num_warmup=20, num_samples=50),
    "chees_hmc": pp.ChEESHMC(num_chains=4, num_warmup=50, num_samples=50),
    "slice": pp.Slice(num_chains=2, num_warmup=50, num_samples=50),
    "smc": pp.SMC(num_particles=200, num_mcmc_steps=2),
    "sgld": pp.SGLD(num_chains=2, num_warmup=50, num_samples=50, step_size=1e-3),
    "sghmc": pp.SGHMC(num_chains=2, num_warmup=50, num_samples=50, step_size=1e-2, num_integration_steps=4),
    "sgnht": pp.SGNHT(num_chains=2, num_warmup=50, num_samples=50, step_size=1e-2),
    "baoab": pp.BAOAB(num_chains=2, num_warmup=50, num_samples=50, step_size=1e-2),
    "laplace": pp.Laplace(num_samples=50),
    "meanfield_vi": pp.MeanFieldVI(num_steps=100, num_samples=50),
    "fullrank_vi": pp.FullRankVI(num_steps=100, num_samples=50),
    "lowrank_vi": pp.LowRankVI(rank=1, num_steps=100, num_samples=50),
    "flow_vi": pp.FlowVI(flow="rqs_coupling", flow_layers=1, nn_width=8, num_steps=50, num_samples=50),
    "numpyro_guide_vi": pp.NumPyroGuideVI(guide=numpyro.infer.autoguide.AutoNormal, num_steps=100, num_samples=50),
    # one loss object (hashable by identity): a ridge penalty on top of the model's own likelihood
    "generalized_vi": pp.GeneralizedVI(loss=lambda v, x, scale, y=None: 0.5 * (v["b"] ** 2).sum(),
                                       num_steps=100, num_samples=50),
}


def _counting_model(gaussian_prior: bool = False):
    calls = []

    def m(x, scale, y=None):
        calls.append(1)  # one entry per execution of the model: tracing, or a Python run
        b = numpyro.sample("b", dist.Normal(0.0, scale).expand([x.shape[1]]).to_event(1))
        # elliptical slice needs a Gaussian prior on every latent site: known noise there
        s = 0.3 if gaussian_prior else numpyro.sample("s", dist.HalfNormal(1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(x @ b, s), obs=y)

    return m, calls


def test_every_registered_method_has_a_small_config():
    assert set(SMALL) == set(pp.methods()), "add a small config for the new method to SMALL"


def _data(seed, n=20):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    return x, x @ np.array([1.0, -0.5]) + 0.3 * rng.normal(size=n)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_second_call_neither_traces_nor_compiles(name):
    m, calls = _counting_model(gaussian_prior=name == "elliptical_slice")
    x, y = _data(0)
    cfg = SMALL[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NumericalWarning)  # tiny runs: ESS warnings
        first = pp.infer(m, x, 2.0, y=y, method=cfg, rng_key=0)
        n_first = len(calls)
        assert n_first > 0 and first.attrs["cache_hit"] == 0 and first.attrs["compile_time"] > 0
        # a new key, then new data of the same shapes, then an equal config object
        again = pp.infer(m, x, 2.0, y=y, method=cfg, rng_key=1)
        x2, y2 = _data(1)
        other = pp.infer(m, x2, 2.0, y=y2, method=type(cfg)(**cfg.__dict__), rng_key=1)
    assert len(calls) == n_first, f"{name}: the model was traced again"
    for idata in (again, other):
        assert idata.attrs["cache_hit"] == 1 and idata.attrs["compile_time"] == 0.0
    # the results follow the new key and the new data, not the cached ones
    assert not np.allclose(first.posterior["b"].values, again.posterior["b"].values)
    np.testing.assert_array_equal(other.observed_data["y"].values, y2)
    assert not np.allclose(other.posterior["b"].values.mean(), again.posterior["b"].values.mean())
    # a new static value or new shapes compile again
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NumericalWarning)
        pp.infer(m, x, 3.0, y=y, method=cfg)
        n_static = len(calls)
        assert n_static > n_first
        x3, y3 = _data(2, n=25)
        pp.infer(m, x3, 2.0, y=y3, method=cfg)
    assert len(calls) > n_static


def test_arguments_that_are_neither_arrays_nor_hashable_are_named():
    import pandas as pd

    m, _ = _counting_model()
    x, y = _data(0)
    with pytest.raises(pp.ConfigError, match=r"model argument kwargs\['y'\] is a set"):
        pp.infer(m, x, 2.0, y={1, 2}, method="laplace")
    with pytest.raises(pp.ConfigError, match=r"model argument args\[0\] is a DataFrame.*to_numpy"):
        pp.infer(m, pd.DataFrame(x), 2.0, y=y, method="laplace")


def test_static_wrapper_gives_the_model_concrete_values():
    def m(group, y=None):
        n_groups = int(np.max(group)) + 1  # needs a concrete array
        a = numpyro.sample("a", dist.Normal(0.0, 1.0).expand([n_groups]).to_event(1))
        with numpyro.plate("data", len(group)):
            numpyro.sample("y", dist.Normal(a[group], 1.0), obs=y)

    group = np.array([0, 1, 2, 1, 0])
    y = np.array([0.1, 1.0, 2.0, 1.2, -0.3])
    with pytest.raises(pp.ModelError, match="pp.static"):
        pp.infer(m, group, y=y, method="laplace")
    idata = pp.infer(m, pp.static(group), y=y, method="laplace")
    assert idata.posterior["a"].shape[-1] == 3
    assert pp.static(group) == pp.static(group.copy()) and hash(pp.static(group)) == hash(pp.static(group.copy()))


_CACHE_SCRIPT = """
import jax, numpy as np, numpyro, numpyro.distributions as dist
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name) if "cache_hits" in name else None)
import ppl_posteriors as pp
def m(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", 5):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
idata = pp.infer(m, y=np.arange(5.0), method=pp.MeanFieldVI(num_steps=200), progress=False)
print("HITS", len(hits))
"""


def test_persistent_cache_is_written_and_read_by_a_fresh_process(tmp_path):
    import os
    import subprocess
    import sys

    with pytest.raises(pp.ConfigError, match="not a directory"):
        (tmp_path / "file").write_text("x")
        pp.set_compilation_cache(tmp_path / "file")
    env = dict(os.environ, PPL_POSTERIORS_CACHE_DIR=str(tmp_path / "cache"), PPL_POSTERIORS_PROGRESS="0")

    def run():
        out = subprocess.run([sys.executable, "-c", _CACHE_SCRIPT], env=env, capture_output=True,
                             text=True, timeout=300, check=True).stdout
        return int(out.split("HITS")[1])

    assert run() == 0  # cold: compiles and writes
    assert any((tmp_path / "cache").iterdir())
    assert run() >= 1  # warm: the executables come from disk


def test_nan_in_new_data_is_caught_on_a_cached_call():
    m, calls = _counting_model()
    x, y = _data(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NumericalWarning)
        pp.infer(m, x, 2.0, y=y, method=SMALL["laplace"])
    bad = y.copy()
    bad[3] = np.nan
    n = len(calls)
    with pytest.raises(pp.ModelError, match=r"observed site 'y' has 1 NaN"):
        pp.infer(m, x, 2.0, y=bad, method=SMALL["laplace"])
    assert len(calls) == n  # found by the cached observed-data program, without tracing
