"""CPU host devices: split the machine's cores into N JAX devices, before JAX starts.

JAX on a CPU sees one device unless XLA is told otherwise with the flag
``--xla_force_host_platform_device_count=N`` in the environment variable ``XLA_FLAGS``,
read once, when JAX's CPU backend starts (the first array or ``jax.devices()`` call).
Importing ``ppl_posteriors`` starts it (BlackJAX creates arrays at import), so the count
must be set before that import, in one of three ways:

* ``PPL_POSTERIORS_HOST_DEVICES=4 python script.py`` (read at the top of
  ``ppl_posteriors/__init__.py``, before anything imports JAX's backend);
* ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` likewise;
* ``ppl-posteriors --host-devices 4 <command>`` (the CLI restarts itself with the flag).

:func:`set_host_device_count` sets the flag when the backend has not started, does
nothing when it runs with that count already, and otherwise raises ``ConfigError``
with these fixes. This module imports nothing from JAX at import time.
"""

from __future__ import annotations

import os
import re
import sys

__all__ = ["host_device_count", "set_host_device_count"]

ENV = "PPL_POSTERIORS_HOST_DEVICES"
_FLAG = "--xla_force_host_platform_device_count"


def _backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())


def host_device_count() -> int:
    """Number of CPU devices JAX has (starts JAX's backend if it has not started)."""
    import jax

    return len(jax.devices("cpu"))


def set_host_device_count(n: int) -> None:
    """Give JAX ``n`` CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=n``).

    MCMC chains then go on these devices without a ``mesh=`` (at most one device per
    usable core: :func:`ppl_posteriors.runtime.mesh.default_chain_mesh`), each device
    its own loop (``chain_layout="per_device"``): no chain waits for another's longest
    NUTS tree. Each device runs on its own thread;
    XLA's intra-op threads share the cores, so more devices than free cores gains
    nothing. Other flags in ``XLA_FLAGS`` are kept; a previous count is replaced.

    Parameters
    ----------
    n : int
        Devices, >= 1.

    Raises
    ------
    ConfigError
        ``n`` is not a positive integer, or JAX's backend already started with another
        number of devices (``import ppl_posteriors`` starts it): set
        ``PPL_POSTERIORS_HOST_DEVICES=n`` or ``XLA_FLAGS`` in the environment before
        Python imports ``ppl_posteriors`` or uses JAX, or run the CLI with
        ``--host-devices n``.

    References
    ----------
    ``numpyro.set_host_device_count`` does the same (and has the same limitation).
    """
    from ._errors import ConfigError

    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise ConfigError(f"set_host_device_count({n!r}): give an integer >= 1")
    if _backend_started():
        have = host_device_count()
        if have == n:
            return
        raise ConfigError(
            f"set_host_device_count({n}): JAX's CPU backend already runs with {have} device(s) "
            "(it starts when ppl_posteriors is imported, or at JAX's first array), and the count "
            f"cannot change afterwards. Set it before Python starts JAX: "
            f"`{ENV}={n} python ...`, or os.environ['XLA_FLAGS'] = '{_FLAG}={n}' at the top of "
            f"the script before importing jax / ppl_posteriors, or `ppl-posteriors --host-devices {n} ...`"
        )
    flags = re.sub(rf"{_FLAG}=\S*", "", os.environ.get("XLA_FLAGS", "")).strip()
    os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={n}".strip()


def _apply_environment() -> None:
    """At package import: honour ``PPL_POSTERIORS_HOST_DEVICES`` (before JAX's backend starts)."""
    value = os.environ.get(ENV, "").strip()
    if value:
        from ._errors import ConfigError

        try:
            n = int(value)
        except ValueError:
            raise ConfigError(f"{ENV}={value!r}: give an integer >= 1") from None
        set_host_device_count(n)


_apply_environment()  # at import: ppl_posteriors/__init__.py imports this module first
