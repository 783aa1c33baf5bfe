"""Chains on host devices: ``chain_layout="per_device"`` (``jax.shard_map``, each device its
own loop) gives the draws of the unsharded run, compiles once, restarts stuck chains
across devices, and leaves cross-chain tuning (ChEES) on the global view.

Run with 4 devices (``nox -s multidevice`` sets
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before JAX starts).
"""

import dataclasses
import os
import re
import subprocess
import sys

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from test_mesh import _data, logreg  # the same small logistic regression  # noqa: E402

import ppl_posteriors as pp

pytestmark = [pytest.mark.multidevice, pytest.mark.filterwarnings("ignore::ppl_posteriors.NumericalWarning")]

if jax.device_count() < 4:  # a collection error, not a skip: this module needs 4 devices
    raise RuntimeError("tests/multidevice needs 4 devices: run `nox -s multidevice`")


def _one_device(cfg):
    """``cfg`` with its chains vmapped on one device (without a mesh, ``"auto"`` would put
    them on the host devices)."""
    return dataclasses.replace(cfg, chain_layout="lockstep")


def _close(a, b):
    # sharding changes XLA's fusion, so draws agree to round-off carried through the chains
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_per_device_equals_unsharded_and_compiles_once(monkeypatch, capfd):
    X, y = _data()
    mesh = pp.make_mesh(chain=4)
    kw = dict(num_chains=8, num_warmup=100, num_samples=50)  # 2 chains per device, vmapped there
    ref = pp.infer(logreg, X, y=y, method=_one_device(pp.NUTS(**kw)), rng_key=3, progress=False)
    lock = pp.infer(logreg, X, y=y, method=pp.NUTS(**kw, chain_layout="lockstep"), rng_key=3, progress=False,
                    mesh=mesh)
    monkeypatch.setenv("PPL_POSTERIORS_PROGRESS", "plain")  # a progress bar from inside shard_map
    cfg = pp.NUTS(**kw)  # chain_layout="auto": per device on a chain-only mesh
    out = pp.infer(logreg, X, y=y, method=cfg, rng_key=3, mesh=mesh)
    assert "NUTS: 150/150 (100%" in capfd.readouterr().err
    _close(out.posterior["w"].values, ref.posterior["w"].values)
    _close(lock.posterior["w"].values, ref.posterior["w"].values)
    _close(out.sample_stats["lp"].values, ref.sample_stats["lp"].values)
    np.testing.assert_array_equal(out.sample_stats["tree_depth"].values, ref.sample_stats["tree_depth"].values)
    assert out.attrs["programs_compiled"] >= 1
    assert out.attrs["chain_layout"] == "per_device" and lock.attrs["chain_layout"] == "lockstep"
    again = pp.infer(logreg, X, y=y, method=cfg, rng_key=4, mesh=mesh)  # new key: no tracing, no compiling
    assert again.attrs["programs_compiled"] == 0 and again.attrs["cache_hit"] == 1
    assert not np.allclose(again.posterior["w"].values, out.posterior["w"].values)


def _collectives(cfg, mesh):
    """op_names of the cross-device collectives in the compiled sampling program."""
    from ppl_posteriors.runtime import cache

    X, y = _data()
    pp.infer(logreg, X, y=y, method=cfg, rng_key=0, progress=False, mesh=mesh)
    text = [e for k, e in cache._PROGRAMS.items() if k[1] == cfg and k[2] == "sample"][-1].compiled.as_text()
    found = []
    for line in text.splitlines():
        if re.search(r"= \S+ (all-reduce|all-gather|collective-permute|all-to-all)\(", line):
            name = re.search(r'op_name="([^"]+)"', line)
            found.append(name.group(1) if name else "")
    return found


def test_per_device_loops_do_not_synchronise():
    mesh = pp.make_mesh(chain=4)
    kw = dict(num_chains=4, num_warmup=0, num_samples=20, restart_stuck=False)
    per_device = _collectives(pp.NUTS(**kw), mesh)
    lockstep = _collectives(pp.NUTS(**kw, chain_layout="lockstep"), mesh)
    # lockstep: the predicate of every vmapped NUTS while-loop (the trajectory doublings and
    # their inner loops) is reduced across devices at every step
    assert sum("vmap()/while" in n for n in lockstep) >= 2
    # per device: none inside the chain loop (the one left is the start-point redraw loop,
    # run once before sampling)
    assert not any("vmap()/while" in n for n in per_device), per_device


def minor_mode(b):
    """z ~ N(b, 1), and a minor mode N(-3.5, 0.5^2) of weight e^-20 whose basin holds z < 0."""
    z = numpyro.sample("z", dist.ImproperUniform(dist.constraints.real, (), ()))
    trap = -20.0 + np.log(2.0) - 2.0 * (z + 3.5) ** 2
    numpyro.factor("lp", jax.numpy.logaddexp(-0.5 * (z - b) ** 2, trap))


def test_restart_across_devices():
    cfg = pp.NUTS(num_chains=8, num_warmup=200, num_samples=100)
    ref = pp.infer(minor_mode, 9.36, method=_one_device(cfg), rng_key=0, progress=False)
    out = pp.infer(minor_mode, 9.36, method=cfg, rng_key=0, progress=False, mesh=pp.make_mesh(chain=4))
    assert ref.attrs["num_restarted_chains"] >= 1
    assert out.attrs["restarted_chains"] == ref.attrs["restarted_chains"]
    assert out.attrs["status_messages"] == ref.attrs["status_messages"]  # same donors, same iterations
    _close(out.posterior["z"].values, ref.posterior["z"].values)
    assert abs(out.posterior["z"].values.mean() - 9.36) < 0.3


def test_chees_tunes_on_the_global_view():
    X, y = _data()
    cfg = pp.ChEESHMC(num_chains=8, num_warmup=50, num_samples=30)
    ref = pp.infer(logreg, X, y=y, method=_one_device(cfg), rng_key=1, progress=False)
    out = pp.infer(logreg, X, y=y, method=cfg, rng_key=1, progress=False, mesh=pp.make_mesh(chain=4))
    assert out.attrs["trajectory_length"] == pytest.approx(ref.attrs["trajectory_length"], rel=1e-6)
    _close(out.posterior["w"].values, ref.posterior["w"].values)


def test_per_device_needs_a_chain_only_mesh():
    X, y = _data()
    with pytest.raises(pp.ConfigError, match="chain_layout='per_device' needs a mesh"):
        pp.infer(logreg, X, y=y, method=pp.NUTS(num_chains=4, num_warmup=10, num_samples=10,
                                                chain_layout="per_device"),
                 progress=False, mesh=pp.make_mesh(chain=2, data=2))


def test_host_device_count_helper_and_cli():
    pp.set_host_device_count(4)  # what JAX runs with: nothing to do
    with pytest.raises(pp.ConfigError, match="already runs with 4 device"):
        pp.set_host_device_count(2)
    with pytest.raises(pp.ConfigError, match="integer >= 1"):
        pp.set_host_device_count(0)
    out = subprocess.run([sys.executable, "-m", "ppl_posteriors.cli", "--host-devices", "3", "devices"],
                         capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "3 cpu device(s)" in out.stdout


_TWO_CHAINS_PER_DEVICE = """
import jax, jax.numpy as jnp, numpy as np, numpyro, numpyro.distributions as dist
import ppl_posteriors as pp
jax.config.update("jax_enable_x64", True)
D = 25
cov = np.diag(np.geomspace(0.1, 10.0, D))
def model():
    numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(D), covariance_matrix=cov))
cfg = pp.{sampler}(num_chains=8, num_warmup=200, num_samples=200, mass_matrix="{mass_matrix}")
out = pp.infer(model, method=cfg, rng_key=0, progress=False, mesh=pp.make_mesh(chain=4))
assert out.attrs["chain_layout"] == "per_device", out.attrs["chain_layout"]
var = out.posterior["x"].values.reshape(-1, D).var(axis=0)
print("RATIO", float(np.min(var / np.diag(cov))), float(np.max(var / np.diag(cov))))
"""


@pytest.mark.parametrize(("sampler", "mass_matrix", "band"),
                         [("NUTS", "low_rank", (0.7, 1.35)), ("NUTS", "dense", (0.7, 1.35)), ("MALA", "dense", (0.1, 3.0)),
                          ("Barker", "dense", (0.1, 3.0))])
def test_two_chains_per_device_with_a_factored_metric_finishes(sampler, mass_matrix, band):
    # Two chains per device with a metric that needs LAPACK (eigh for low rank, Cholesky for
    # dense): a batched LAPACK call waits on the CPU client's thread pool, which the device
    # loops hold, and the run hung forever on 2 cores. Now the factors are computed chain by
    # chain; the subprocess turns a hang into a failure.
    code = _TWO_CHAINS_PER_DEVICE.format(sampler=sampler, mass_matrix=mass_matrix)
    proc = subprocess.run([sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=600, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lo, hi = map(float, re.search(r"RATIO (\S+) (\S+)", proc.stdout).groups())
    # NUTS: 1600 draws, each variance ratio within ~0.2 of 1 (bulk ESS >~ 400 per coordinate);
    # MALA and Barker mix slowly here (0.25-1.5, the same unsharded), so its band only catches a broken metric
    assert band[0] < lo and hi < band[1], (lo, hi)


def test_without_a_mesh_mcmc_chains_go_on_the_host_devices(monkeypatch):
    from ppl_posteriors.runtime import mesh as mesh_module

    def devices_for(num_chains, cores, arrays=()):
        monkeypatch.setattr(mesh_module, "usable_cores", lambda: cores)
        m = mesh_module.default_chain_mesh(num_chains, arrays)
        return 1 if m is None else int(m.devices.size)

    # the largest divisor of the chains within min(devices, cores)
    assert [devices_for(4, 4), devices_for(4, 3), devices_for(3, 4), devices_for(8, 16), devices_for(1, 4)] == [4, 2, 3, 4, 1]
    monkeypatch.setattr(mesh_module, "REPLICATE_LIMIT_BYTES", 1000)  # data too big to copy per device
    # 3 extra copies of 80 bytes fit, of 8000 bytes do not
    assert devices_for(4, 4, (np.zeros(10),)) == 4 and devices_for(4, 4, (np.zeros(1000),)) == 1
    monkeypatch.undo()

    monkeypatch.setattr(mesh_module, "usable_cores", lambda: 2)
    X, y = _data()
    kw = dict(num_chains=4, num_warmup=100, num_samples=50)
    ref = pp.infer(logreg, X, y=y, method=_one_device(pp.NUTS(**kw)), rng_key=3, progress=False)
    out = pp.infer(logreg, X, y=y, method=pp.NUTS(**kw), rng_key=3, progress=False)
    assert (ref.attrs["num_devices"], ref.attrs["chain_layout"]) == (1, "lockstep")
    assert (out.attrs["num_devices"], out.attrs["chain_layout"]) == (2, "per_device")
    _close(out.posterior["w"].values, ref.posterior["w"].values)
    vi = pp.infer(logreg, X, y=y, method=pp.MeanFieldVI(num_steps=10, num_samples=10), progress=False)
    assert vi.attrs["num_devices"] == 1  # only MCMC chains move by themselves


D_GAUSS = 4


def gaussian(y):  # a Gaussian prior (elliptical slice needs one) and a Gaussian likelihood
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([D_GAUSS]).to_event(1))
    numpyro.sample("y", dist.Normal(x.sum(), 1.0), obs=y)


@pytest.mark.parametrize("method", ["nuts", "hmc", "mala", "barker", "rmh", "slice", "mclmc", "adjusted_mclmc",
                                    "chees_hmc", "elliptical_slice", "hmc+dense"])
def test_every_sampler_runs_per_device_with_the_draws_of_one_device(method):
    # without a mesh, "auto" puts the chains of every sampler on the host devices, so every
    # sampler must run there (two chains per device: the case that once hung on LAPACK)
    name, _, dense = method.partition("+")
    cls = type(pp.infer.__globals__["resolve_method"](name))
    cfg = cls(num_chains=4, num_warmup=10, num_samples=10, **({"mass_matrix": "dense"} if dense else {}))
    ref = pp.infer(gaussian, 1.0, method=_one_device(cfg), rng_key=1, progress=False)
    out = pp.infer(gaussian, 1.0, method=cfg, rng_key=1, progress=False, mesh=pp.make_mesh(chain=2))
    assert out.attrs["chain_layout"] == "per_device"
    np.testing.assert_allclose(out.posterior["x"].values, ref.posterior["x"].values, rtol=1e-8, atol=1e-8)
