"""Progress bars for jitted loops and timed compilation.

A :class:`Progress` owns a tqdm bar on the host; ``tick(i)`` inside a ``lax.scan``
body calls back to it through ``jax.debug.callback`` every ``total // 50`` steps
(a ``lax.cond`` on an unbatched counter, so a few microseconds per step and one
call per step for all vmapped chains together). A disabled bar compiles no
callback at all. ``PPL_POSTERIORS_PROGRESS=0`` disables every bar.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp

__all__ = ["Progress", "progress_enabled", "timed_call"]


def progress_enabled(progress: bool) -> bool:
    """``progress`` unless the environment variable PPL_POSTERIORS_PROGRESS is 0/false."""
    env = os.environ.get("PPL_POSTERIORS_PROGRESS", "").strip().lower()
    return bool(progress) and env not in ("0", "false", "no", "off")


class Progress:
    """A tqdm bar over ``phases`` = [(label, num_steps), ...] driven from jitted code."""

    def __init__(self, desc: str, phases: list[tuple[str, int]], enabled: bool = True):
        self.desc = desc
        self.phases = [(label, int(n)) for label, n in phases if n > 0]
        self.total = sum(n for _, n in self.phases)
        self.enabled = progress_enabled(enabled) and self.total > 0
        self.every = max(1, self.total // 50)
        self._bar = None

    def __enter__(self):
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self._label(0), unit="step", leave=True)
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _label(self, done: int) -> str:
        start = 0
        for label, n in self.phases:
            if done < start + n:
                return f"{self.desc} {label}"
            start += n
        return f"{self.desc} {self.phases[-1][0]}" if self.phases else self.desc

    def _update(self, i) -> None:
        bar = self._bar
        if bar is None:
            return
        done = int(i) + 1
        bar.set_description(self._label(done - 1), refresh=False)
        bar.update(done - bar.n)

    def tick(self, i) -> None:
        """Call inside jitted code with the global 0-based step index ``i`` (unbatched)."""
        if not self.enabled:
            return
        last = self.total - 1

        def report(i):
            jax.debug.callback(self._update, i)

        jax.lax.cond(((i + 1) % self.every == 0) | (i == last), report, lambda i: None, i)


def timed_call(fn, *args):
    """Compile ``jax.jit(fn)`` for ``args``, run it, and time both phases.

    Returns
    -------
    (output, compile_seconds, run_seconds)
    """
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    t1 = time.perf_counter()
    out = compiled(*args)
    out = jax.block_until_ready(out)
    t2 = time.perf_counter()
    return out, t1 - t0, t2 - t1


def as_key(rng_key) -> jax.Array:
    """A new-style typed key from ``None`` (key 0), an int seed, a typed key or a raw uint32 key.

    Raises
    ------
    ConfigError
        For anything else.
    """
    import numpy as np

    from ._errors import ConfigError

    if rng_key is None:
        return jax.random.key(0)
    if isinstance(rng_key, (int, np.integer)) and not isinstance(rng_key, bool):
        return jax.random.key(int(rng_key))
    dtype = getattr(rng_key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return rng_key
    if dtype is not None and np.dtype(dtype) == np.uint32 and np.shape(rng_key) == (2,):
        return jax.random.wrap_key_data(jnp.asarray(rng_key))
    raise ConfigError(
        f"rng_key must be a jax.random.key(...), a jax.random.PRNGKey(...) or an int seed; got {rng_key!r}"
    )
