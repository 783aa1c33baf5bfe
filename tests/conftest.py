"""Test configuration: float64 everywhere, no progress bars, posteriordb location."""

import os
import sys

os.environ.setdefault("PPL_POSTERIORS_PROGRESS", "0")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from reference import posteriordb_dir  # noqa: E402

# tests/multidevice needs 4 devices (nox -s multidevice sets XLA_FLAGS before JAX starts);
# the default single-device run does not collect it
collect_ignore = ["multidevice"] if jax.device_count() < 4 else []


@pytest.fixture(scope="session")
def pdb():
    """The posteriordb loader module (``load.py``) of ../shared/posteriordb."""
    d = posteriordb_dir()
    if d is None:
        pytest.skip("posteriordb not found: set PPL_POSTERIORDB or place it at ../shared/posteriordb")
    sys.path.insert(0, str(d))
    import load

    return load


@pytest.fixture
def eight_schools_data():
    from ppl_posteriors.datasets import eight_schools

    return eight_schools()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop compiled programs after each test module: the in-process cache never evicts, and
    a worker that keeps every module's executables grows to several GB."""
    yield
    import ppl_posteriors as pp

    pp.clear_cache()
    jax.clear_caches()
