"""One process of the two-process test (tests/multidevice/test_multihost.py).

Usage: python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz
With NUM_PROCESSES=1 it runs alone on all its local devices (the reference).
"""

import os
import sys

pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // nproc}"
os.environ["PPL_POSTERIORS_PROGRESS"] = "0"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
if nproc > 1:
    jax.distributed.initialize(f"localhost:{port}", num_processes=nproc, process_id=pid)

import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

import ppl_posteriors as pp  # noqa: E402


def logreg(X, y=None):
    b0 = numpyro.sample("b0", dist.Normal(0.0, 2.0))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=b0 + X @ w), obs=y)


rng = np.random.default_rng(0)
X = rng.normal(size=(64, 3))
y = (rng.uniform(size=64) < 1 / (1 + np.exp(-(X @ np.array([1.0, -1.0, 0.5]))))).astype(np.int32)
assert jax.device_count() == 4, jax.devices()
mesh = pp.make_mesh(chain=2, data=2)
cfg = pp.NUTS(num_chains=4, num_warmup=100, num_samples=100)
import warnings  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", pp.NumericalWarning)
    idata = pp.infer(logreg, X, y=y, method=cfg, rng_key=5, mesh=mesh)
np.savez(out, w=idata.posterior["w"].values, lp=idata.sample_stats["lp"].values,
         process_count=jax.process_count())
