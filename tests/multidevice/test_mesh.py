"""Chains and data over a 4-device mesh give the draws of the unsharded run.

Run in its own process with 4 simulated host devices (``nox -s multidevice``, which
sets ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before JAX starts); the
default test run stays single-device and does not collect this folder.
"""

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl_posteriors as pp

pytestmark = [pytest.mark.multidevice, pytest.mark.filterwarnings("ignore::ppl_posteriors.NumericalWarning")]

if jax.device_count() < 4:  # a collection error, not a skip: this module needs 4 devices
    raise RuntimeError(
        "tests/multidevice needs 4 devices: run `nox -s multidevice`, or set "
        "XLA_FLAGS=--xla_force_host_platform_device_count=4 before JAX is imported"
    )


def logreg(X, y=None):
    b0 = numpyro.sample("b0", dist.Normal(0.0, 2.0))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=b0 + X @ w), obs=y)


def _data(n=64, k=3):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, k))
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(X @ np.array([1.0, -1.0, 0.5]))))).astype(np.int32)
    return X, y


def test_make_mesh_and_impossible_requests():
    mesh = pp.make_mesh(chain=2, data=2)
    assert dict(mesh.shape) == {"chain": 2, "data": 2}
    with pytest.raises(pp.ConfigError, match="needs 8 devices but 4 exist"):
        pp.make_mesh(chain=4, data=2)
    X, y = _data()
    with pytest.raises(pp.ConfigError, match="3 chains cannot be split evenly"):
        pp.infer(logreg, X, y=y, method=pp.NUTS(num_chains=3), mesh=pp.make_mesh(chain=2))

    def no_plate(y=None):
        mu = numpyro.sample("mu", dist.Normal())
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(pp.ConfigError, match="no plate around an observed site"):
        pp.infer(no_plate, y=1.0, method="laplace", mesh=pp.make_mesh(data=4))
    with pytest.raises(pp.ConfigError, match="runs no independent chains"):
        pp.infer(logreg, X, y=y, method="meanfield_vi", mesh=pp.make_mesh(chain=2))


@pytest.mark.parametrize("layout", [dict(chain=4), dict(chain=2, data=2), dict(data=4)])
def test_nuts_sharded_equals_unsharded(layout):
    X, y = _data()
    cfg = pp.NUTS(num_chains=4, num_warmup=100, num_samples=100)
    # without a mesh the chains would go on the host devices; "lockstep" keeps them on one
    ref = pp.infer(logreg, X, y=y, method=pp.NUTS(num_chains=4, num_warmup=100, num_samples=100,
                                                  chain_layout="lockstep"), rng_key=3, progress=False)
    assert ref.attrs["num_devices"] == 1
    out = pp.infer(logreg, X, y=y, method=cfg, rng_key=3, progress=False, mesh=pp.make_mesh(**layout))
    # sharding changes the order of sums (and XLA's fusion), so draws agree to round-off
    # carried through 200 NUTS transitions, not bit for bit
    np.testing.assert_allclose(out.posterior["w"].values, ref.posterior["w"].values, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", [pp.Laplace(num_samples=200), pp.MeanFieldVI(num_steps=300, num_samples=200)])
def test_laplace_and_vi_with_sharded_data(method):
    X, y = _data()
    ref = pp.infer(logreg, X, y=y, method=method, rng_key=1, progress=False)
    out = pp.infer(logreg, X, y=y, method=method, rng_key=1, progress=False, mesh=pp.make_mesh(data=4))
    np.testing.assert_allclose(out.posterior["w"].values, ref.posterior["w"].values, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(out.log_likelihood["y"].values, ref.log_likelihood["y"].values, rtol=1e-8, atol=1e-10)
