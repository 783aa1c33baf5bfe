"""Compile once: an in-process cache of compiled programs, and JAX's persistent cache.

Every method runs its numerical work through :meth:`Runtime.call`, which jits a
pure function ``fn(log_density, progress_bar, *args)`` with the model's array
arguments as jit *arguments* (the :class:`~ppl_posteriors.density.LogDensity` is
rebuilt from them inside the trace), compiles it ahead of time and keeps the
executable under the key

    (model template, method config, program tag, progress on/off, mesh,
     shapes / dtypes / shardings of the arguments)

where the template stands for (model, static arguments, array shapes and dtypes,
``jacobian``, x64). A second ``pp.infer`` with a new ``rng_key`` or new data of the
same shapes finds the executable and neither traces nor compiles: it pays only
the run. The function passed as ``fn`` must depend on nothing but the config and
its arguments -- the contract that makes the config a sound key.

Configs are compared by value (frozen dataclasses), so ``pp.NUTS(num_chains=4)``
written twice hits the cache; an option that is a new object each time, such as
``optimizer=optax.adam(1e-3)`` written inline, is a new key (keep the optimizer in
a variable to reuse compiled code).

Across processes, :func:`set_compilation_cache` (or the environment variable
``PPL_POSTERIORS_CACHE_DIR``) turns on JAX's persistent compilation cache: XLA
executables are stored on disk under a hash of the program, compile options, JAX
/ jaxlib versions and devices; a fresh process still traces the model, but
loads the executable instead of compiling it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .._progress import Progress, progress_enabled
from . import mesh as _mesh

__all__ = ["Runtime", "cache_info", "clear_cache", "set_compilation_cache"]

_PROGRAMS: dict = {}
_LOCK = threading.Lock()
_STATS = {"hits": 0, "misses": 0}


def _abstract(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    sig = []
    for x in leaves:
        sharding = getattr(x, "sharding", None)
        spec = getattr(sharding, "spec", None)
        sig.append((tuple(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x))), str(spec)))
    return (treedef, tuple(sig))


def _config_key(config):
    try:
        hash(config)
        return config
    except TypeError:  # an unhashable option: this config object only
        return ("id", id(config))


class ProgramContext:
    """What a program gets besides the log density: its progress bar and the mesh.

    ``progress.tick(i)`` inside a scan drives the bar; ``shard_chains(tree)`` pins
    the leading (chain / restart) axis of ``tree``'s leaves to the mesh's ``"chain"``
    axis (identity without a mesh).
    """

    __slots__ = ("progress", "mesh")

    def __init__(self, progress: Progress, mesh=None):
        self.progress, self.mesh = progress, mesh

    def shard_chains(self, tree):
        return _mesh.shard_chains(self.mesh, tree)


class _Entry:
    __slots__ = ("compiled", "bar")

    def __init__(self, compiled, bar):
        self.compiled, self.bar = compiled, bar


class Runtime:
    """One ``pp.infer`` call: the model template, its array arguments, the config.

    Attributes
    ----------
    template : ModelTemplate
    arrays : tuple of jax.Array
        The model's array arguments (jit arguments of every program).
    log_density : LogDensity
        Bound to the concrete arrays: for metadata (``layout``, ``sites``, ``dim``,
        ``param_names()``); calling its functions outside :meth:`call` traces the model.
    compile_time, run_time : float
        Seconds spent compiling (0 on cache hits) and running, summed over calls.
    cache_hits, cache_misses : int
    """

    def __init__(self, template, arrays, config, *, progress: bool = True, mesh=None, batches=None):
        _mesh.check_mesh(mesh, template, getattr(config, "num_parallel", None))
        self.template, self.config = template, config
        self.batches = batches  # a runtime.batches.BatchStream, or None
        self.data_scale = None if batches is None else batches.data_scale
        self.log_density = template.bind(tuple(arrays), data_scale=self.data_scale)
        self.arrays = _mesh.place_arrays(mesh, template, arrays)
        self.progress = progress_enabled(progress)
        self.mesh = mesh
        self.compile_time = 0.0
        self.run_time = 0.0
        self.cache_hits = 0
        self.cache_misses = 0

    def call(
        self,
        tag: str,
        fn: Callable,
        *args,
        phases: list[tuple[str, int]] | None = None,
        desc: str = "",
        full_data: bool = False,
        config: Any = "self",
    ):
        """Run ``fn(log_density, bar, *args)`` compiled, from the cache when possible.

        Parameters
        ----------
        tag : str
            Names the program within the method (a method may run several).
        fn : callable
            Pure: (LogDensity, ProgramContext, *args) -> pytree of arrays.
        *args
            Arrays (pytrees of arrays): keys, initial positions, draws.
        phases : list of (label, steps), optional
            Progress-bar phases; the bar's ``tick(i)`` is passed to ``fn``.
        full_data : bool
            Bind every item of subsampled plates (results, diagnostics).
        config : hashable
            Overrides the method config in the cache key (``None`` shares the
            program across methods, e.g. the conversion to results).

        Returns
        -------
        The outputs of ``fn``, computed (``jax.block_until_ready``).
        """
        cfg = self.config if isinstance(config, str) and config == "self" else config
        args = _mesh.replicate(self.mesh, args)
        entry = self._entry(tag, fn, self.template, self.arrays, args, cfg, full_data,
                            self.progress and bool(phases), desc, phases)
        t0 = time.perf_counter()
        with entry.bar:
            out = _mesh.gather(jax.block_until_ready(entry.compiled(self.arrays, *args)))
        self.run_time += time.perf_counter() - t0
        return out

    def _entry(self, tag, fn, template, arrays, args, cfg, full_data, enabled, desc="", phases=None,
               scaled=True) -> _Entry:
        """The cached executable of ``fn`` for these arguments (compiled on a miss);
        ``scaled=False`` binds a batch without the N / B scale."""
        data_scale = self.data_scale if scaled else None
        key = (
            template,
            _config_key(cfg),
            tag,
            enabled,
            full_data,
            data_scale,
            None if self.mesh is None else (tuple(self.mesh.shape.items()), tuple(d.id for d in self.mesh.devices.flat)),
            _abstract((arrays, args)),
        )
        with _LOCK:
            entry = _PROGRAMS.get(key)
        if entry is None:
            bar = Progress(desc or getattr(cfg, "method_name", tag), phases or [], enabled)
            ctx = ProgramContext(bar, self.mesh)

            def program(arrays, *a):
                return fn(template.bind(arrays, full_data=full_data, data_scale=data_scale), ctx, *a)

            t0 = time.perf_counter()
            compiled = jax.jit(program).lower(arrays, *args).compile()
            self.compile_time += time.perf_counter() - t0
            entry = _Entry(compiled, bar)
            with _LOCK:
                _PROGRAMS[key] = entry
                _STATS["misses"] += 1
            self.cache_misses += 1
        else:
            with _LOCK:
                _STATS["hits"] += 1
            self.cache_hits += 1
        return entry

    def stream(self, tag: str, fn: Callable, carry, rng_key, *, num_steps: int, desc: str = "",
               until: Callable | None = None, check_every: int = 100):
        """Run ``carry, out = fn(log_density, ctx, carry, key)`` once per batch for
        ``num_steps`` steps, cycling over the epochs of the call's :class:`Batches`;
        ``until(carry) -> bool``, checked every ``check_every`` steps, stops early.

        Each step's ``log_density`` is bound to one batch (scaled by N / B). The step is
        compiled once per batch shape and dispatched from a host loop with a host-side
        progress bar; outputs stay on the device until the end.

        Returns
        -------
        (carry, outs)
            The final carry, and ``out`` stacked along a leading (num_steps,) axis.
        """
        if self.batches is None:
            raise RuntimeError("Runtime.stream needs batches (pp.infer(..., batches=pp.Batches(...)))")
        bar = Progress(desc or getattr(self.config, "method_name", tag), [("steps", num_steps)], self.progress)
        keys = jax.random.split(rng_key, num_steps)
        outs, programs = [], {}
        t0 = time.perf_counter()
        compile0 = self.compile_time
        with bar:
            for i, (template, arrays) in zip(range(num_steps), self.batches.stream(), strict=False):
                arrays = _mesh.place_arrays(self.mesh, template, arrays)
                exe = programs.get(template)
                if exe is None:
                    exe = self._entry(tag, fn, template, arrays, (carry, keys[i]), self.config, False, False).compiled
                    programs[template] = exe
                carry, out = exe(arrays, carry, keys[i])
                outs.append(out)
                bar.update(i)
                if until is not None and (i + 1) % check_every == 0 and until(carry):
                    break
            # stacked on the host: one jnp.stack over thousands of outputs would compile for seconds
            carry = jax.block_until_ready(carry)
            outs = jax.tree.map(lambda *o: np.stack(o), *jax.device_get(outs))
        self.run_time += time.perf_counter() - t0 - (self.compile_time - compile0)
        return carry, outs

    def epoch_sum(self, tag: str, fn: Callable, *args, config: Any = None):
        """``Σ over one epoch of fn(log_density, ctx, *args)``, each batch bound without
        the N / B scale, so sums of data terms are full-data sums (results, PSIS weights
        of a batched fit). ``fn`` returns a pytree of arrays; compiled once per batch shape."""
        if self.batches is None:
            raise RuntimeError("Runtime.epoch_sum needs batches")
        total, programs = None, {}
        t0 = time.perf_counter()
        compile0 = self.compile_time
        args = _mesh.replicate(self.mesh, args)
        for template, arrays in self.batches.stream(epochs=1):
            arrays = _mesh.place_arrays(self.mesh, template, arrays)
            exe = programs.get(template)
            if exe is None:
                exe = self._entry(tag, fn, template, arrays, args, config, True, False, scaled=False).compiled
                programs[template] = exe
            out = exe(arrays, *args)
            total = out if total is None else jax.tree.map(jax.numpy.add, total, out)
        total = _mesh.gather(jax.block_until_ready(total))
        self.run_time += time.perf_counter() - t0 - (self.compile_time - compile0)
        return total

    def timing(self) -> dict:
        """Entries for ``idata.attrs``: compile_time, run_time, cache_hit (1 if nothing compiled)."""
        return {
            "compile_time": self.compile_time,
            "run_time": self.run_time,
            "cache_hit": int(self.cache_misses == 0),
            "programs_compiled": self.cache_misses,
        }


def cache_info() -> dict:
    """``{"programs": n, "hits": h, "misses": m}`` of the in-process cache."""
    with _LOCK:
        return {"programs": len(_PROGRAMS), **_STATS}


def clear_cache() -> None:
    """Drop every compiled program and traced model (the next call compiles again)."""
    from ..density import clear_templates

    with _LOCK:
        _PROGRAMS.clear()
        _STATS.update(hits=0, misses=0)
    clear_templates()


def set_compilation_cache(path: str | os.PathLike | None, *, min_compile_time_secs: float = 0.0) -> None:
    """Turn on JAX's persistent compilation cache in ``path`` (None turns it off).

    Executables that took at least ``min_compile_time_secs`` (default 0: all of them,
    the small results programs included) to compile are written
    to ``path`` and loaded by later processes with the same program, JAX / jaxlib
    version, backend and devices (any change there is a new entry; old entries are
    never deleted by JAX, so clear the folder by hand to reclaim disk -- a few MB
    per method and model). Tracing still happens in a fresh process; compiling
    does not. The environment variable ``PPL_POSTERIORS_CACHE_DIR`` does the same
    at import time.

    Raises
    ------
    ConfigError
        If ``path`` exists and is not a directory.
    """
    from .._errors import ConfigError

    if path is None:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_enable_compilation_cache", False)
        return
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"set_compilation_cache({path!r}): not a directory; give a folder path")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


if os.environ.get("PPL_POSTERIORS_CACHE_DIR"):
    set_compilation_cache(os.environ["PPL_POSTERIORS_CACHE_DIR"])
