"""Sessions: tests and multidevice (CI), lint, demo, notebooks, reference (slow tier).

``tests`` runs on Python 3.11 (jax 0.10, arviz 0.23: results are InferenceData) and on
Python 3.12 (jax 0.12, arviz 1.x: results are xarray.DataTree); pip picks the versions from
the markers in pyproject.toml. With pyenv, expose both interpreters first:
``export PYENV_VERSION=3.11.7:3.12.1`` (``.ci/run`` does).
"""

import nox

nox.options.sessions = ["tests", "multidevice"]
nox.options.default_venv_backend = "venv"


PYTHONS = ["3.11", "3.12"]


@nox.session(python=PYTHONS)
def tests(session):
    """Default test run (< 15 min on 2 cores per Python): every tier but the slow reference suite."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "-n", "2", "--durations=15", *session.posargs)


@nox.session(python="3.12")
def multidevice(session):
    """Sharding over 4 simulated host devices and a two-process (multi-host) run, in
    their own processes so that the default run stays single-device. On the newest JAX
    only: sharding and ``jax.distributed`` are JAX's, not ArviZ's, and the sharded code
    has no version branch; the 3.11 path's results code is covered by ``tests``."""
    session.install("-e", ".[test]")
    session.run(
        "pytest", "-q", "-p", "no:xdist", "tests/multidevice", *session.posargs,
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )


@nox.session
def lint(session):
    session.install("ruff>=0.6")
    session.run("ruff", "check", "ppl_posteriors", "tests", "bench", "noxfile.py")


@nox.session
def demo(session):
    """The main job on real data, quick settings."""
    session.install("-e", ".")
    session.run("ppl-posteriors", "demo", "--quick", "--out", "demo_out")


@nox.session
def notebooks(session):
    """Execute every notebook in notebooks/ and save its outputs."""
    session.install("-e", ".[dev]")
    session.run("python", "docs/run_notebooks.py", *session.posargs)


@nox.session
def reference(session):
    """Slow tier: NUTS with defaults on all posteriordb posteriors vs the references; HMC,
    MALA, adjusted MCLMC and SMC on the posteriors where each should work."""
    session.install("-e", ".[test]")
    session.run(
        "pytest", "-q", "-m", "slow", "-s",
        "tests/test_reference_suite.py", "tests/test_reference_samplers.py", *session.posargs,
    )
