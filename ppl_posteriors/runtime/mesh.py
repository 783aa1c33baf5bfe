"""Chains and data over a device mesh: ``pp.make_mesh`` and the placement of arrays.

A mesh is a ``jax.sharding.Mesh`` with axes named ``"chain"`` and/or ``"data"``:

* ``"chain"`` splits independent chains (MCMC) or restarts (Laplace's MAP
  starts) across devices: each device advances its share of the chains;
* ``"data"`` splits the observed data along their plate: every array argument
  whose leading axis has the size of an observed plate is placed in shards along
  that axis, so each device computes its part of the log-likelihood and of its
  gradient, and XLA reduces the parts across devices (an all-reduce).

Programs are compiled with ``jax.jit`` on arguments carrying ``NamedSharding``s
(GSPMD, the modern form of ``pmap``); the chain axis is pinned inside the program
with ``jax.lax.with_sharding_constraint``. Nothing falls back to fewer devices: an
impossible request raises :class:`~ppl_posteriors.ConfigError` with the fix.

Multi-host: call ``jax.distributed.initialize(...)`` in every process first; then
``pp.make_mesh`` spans the devices of all processes, every process calls
``pp.infer`` with the same arguments, and each gets the whole result.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .._errors import ConfigError

__all__ = ["make_mesh", "default_chain_mesh", "check_mesh", "place_arrays", "place", "shard_chains", "gather"]

AXES = ("chain", "data")


def make_mesh(chain: int = 1, data: int = 1, devices=None) -> Mesh:
    """A mesh of ``chain x data`` devices (from ``jax.devices()``: every process's devices).

    Parameters
    ----------
    chain : int
        Devices along the ``"chain"`` axis (chains / restarts are split over them).
    data : int
        Devices along the ``"data"`` axis (observed data are split over them).
    devices : sequence of jax.Device, optional
        Default ``jax.devices()``.

    Raises
    ------
    ConfigError
        Sizes below 1, or more devices requested than exist (names the count and
        how to simulate more on a CPU).
    """
    for name, n in (("chain", chain), ("data", data)):
        if not (isinstance(n, int) and n >= 1):
            raise ConfigError(f"make_mesh({name}={n!r}): must be an integer >= 1")
    devices = list(jax.devices() if devices is None else devices)
    need = chain * data
    if need > len(devices):
        raise ConfigError(
            f"make_mesh(chain={chain}, data={data}) needs {need} devices but {len(devices)} "
            f"exist ({devices[0].platform}); use fewer, or on a CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={need} before importing jax"
        )
    return Mesh(np.array(devices[:need]).reshape(chain, data), AXES)


#: data replicated on every extra device above this many bytes keep the chains on one device
REPLICATE_LIMIT_BYTES = 1 << 30


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_chain_mesh(num_chains: int, arrays=()) -> Mesh | None:
    """The mesh MCMC chains use when the caller passes none: the CPU host devices, if any.

    With ``H > 1`` CPU devices in one process (``PPL_POSTERIORS_HOST_DEVICES``,
    ``XLA_FLAGS=--xla_force_host_platform_device_count``, ``ppl-posteriors --host-devices``),
    the chains go on a ``"chain"`` mesh of ``h`` devices, ``h`` the largest divisor of
    ``num_chains`` with ``h <= min(H, usable cores)`` (a device is a thread: more devices
    than cores only contend). Otherwise -- one device, accelerators, several processes,
    ``h == 1``, or data whose copies on the ``h - 1`` extra devices would exceed
    :data:`REPLICATE_LIMIT_BYTES` -- ``None``: the chains stay vmapped on one device.

    Parameters
    ----------
    num_chains : int
    arrays : sequence of arrays
        The model's array arguments (replicated on every device of a chain mesh).
    """
    if jax.process_count() > 1:
        return None
    devices = jax.local_devices()
    if devices[0].platform != "cpu":
        return None
    cap = min(len(devices), usable_cores())
    h = max(d for d in range(1, min(cap, num_chains) + 1) if num_chains % d == 0)
    nbytes = sum(int(getattr(a, "nbytes", 0)) for a in jax.tree.leaves(arrays))
    if h < 2 or nbytes * (h - 1) > REPLICATE_LIMIT_BYTES:
        return None
    return make_mesh(chain=h, devices=devices[:h])


def _size(mesh, axis) -> int:
    return int(mesh.shape.get(axis, 1)) if mesh is not None else 1


def check_mesh(mesh, template, num_chains: int | None, what: str = "chains") -> None:
    """Refuse an impossible mesh for this model and method (ConfigError with the fix)."""
    if mesh is None:
        return
    if not isinstance(mesh, Mesh):
        raise ConfigError(f"mesh must be a jax.sharding.Mesh (see pp.make_mesh); got {type(mesh).__name__}")
    extra = [a for a in mesh.axis_names if a not in AXES]
    if extra:
        raise ConfigError(f"mesh axis {extra[0]!r} is unknown; name the axes 'chain' and/or 'data' (pp.make_mesh)")
    k = _size(mesh, "chain")
    if k > 1:
        if num_chains is None:
            raise ConfigError(
                f"the mesh has a 'chain' axis of size {k} but this method runs no independent "
                "chains or restarts; use pp.make_mesh(chain=1, data=...)"
            )
        if num_chains % k:
            raise ConfigError(
                f"{num_chains} {what} cannot be split evenly over the mesh's 'chain' axis of size {k}; "
                f"use a multiple of {k} {what}, or pp.make_mesh(chain=d) with d dividing {num_chains}"
            )
    m = _size(mesh, "data")
    if m > 1:
        sizes = _observed_plate_sizes(template)
        if not sizes:
            raise ConfigError(
                f"the mesh has a 'data' axis of size {m} but the model has no plate around an "
                "observed site to split the data along; wrap the likelihood in numpyro.plate, "
                "or use pp.make_mesh(data=1)"
            )
        bad = [n for n in sizes if n % m]
        if bad:
            raise ConfigError(
                f"the observed plate of size {bad[0]} cannot be split evenly over the mesh's 'data' "
                f"axis of size {m}; use a data axis size that divides {bad[0]}"
            )


def _observed_plate_sizes(template) -> set[int]:
    from ..model.sites import SiteKind

    sizes = set()
    for s in template.sites:
        if s.kind is SiteKind.OBSERVED:
            for p in s.plates:
                sizes.add(template.trace.plates[p][0])
    return sizes


def place(x, sharding):
    """``x`` as a global array with ``sharding`` (works across processes: each process
    holds the full value and contributes its addressable shards)."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        data = place(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=impl)
    arr = np.asarray(x)
    return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])


def place_arrays(mesh, template, arrays) -> tuple:
    """The model's array arguments on the mesh: split along ``"data"`` where the leading
    axis is an observed plate's size, replicated otherwise.

    Without a ``"data"`` axis (size 1) in a single process they are left as given
    (uncommitted): XLA replicates them, and programs that run per device under
    ``jax.shard_map`` (MCMC's ``chain_layout="per_device"``) can close over them -- an
    argument placed on the mesh carries the mesh in its type, which clashes with the
    manual mesh inside ``shard_map`` (e.g. in ``jnp.tril``)."""
    if mesh is None or (_size(mesh, "data") == 1 and jax.process_count() == 1):
        return tuple(arrays)
    sizes = _observed_plate_sizes(template) if _size(mesh, "data") > 1 else set()
    out = []
    for a in arrays:
        split = a.ndim >= 1 and a.shape[0] in sizes
        out.append(place(a, NamedSharding(mesh, P("data") if split else P())))
    return tuple(out)


def replicate(mesh, tree):
    """Every leaf of ``tree`` replicated on the mesh (keys and other small inputs)."""
    if mesh is None:
        return tree
    return jax.tree.map(lambda x: place(x, NamedSharding(mesh, P())), tree)


def shard_chains(mesh, tree):
    """Inside a program: pin the leading (chain) axis of every leaf to the mesh's ``"chain"`` axis."""
    if mesh is None or _size(mesh, "chain") == 1:
        return tree
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P("chain"))), tree
    )


def gather(tree):
    """Outputs as host-readable arrays in every process (multi-process: all-gathered)."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return x

    return jax.tree.map(one, tree)
