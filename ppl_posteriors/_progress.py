"""Progress bars for jitted loops and timed compilation.

A :class:`Progress` owns a tqdm bar on the host; ``tick(i)`` inside a ``lax.scan``
body calls back to it through ``jax.debug.callback`` every ``total // 50`` steps
(a ``lax.cond`` on an unbatched counter, so a few microseconds per step and one
call per step for all vmapped chains together). ``advance(limit)`` serves loops that
give no index (BlackJAX's tuners): one callback per step, counted on the host. A
disabled bar compiles no callback at all. ``PPL_POSTERIORS_PROGRESS=0`` disables every bar.

A compiled program keeps its :class:`Progress` object (the runtime caches them
together); every ``with bar:`` opens a new bar, so cached programs show one bar
per run. Only process 0 of a multi-process run shows it. Where stderr is not a
terminal and not a notebook (CI, a log file, ``nohup``), a few plain lines replace
the bar (at 0, 25, 50, 75 and 100 %), so logs are not flooded with carriage
returns; ``PPL_POSTERIORS_PROGRESS=plain`` forces them.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp

__all__ = ["Progress", "as_key", "progress_enabled"]


def _style() -> str:
    """"bar" in a terminal or notebook, "plain" lines otherwise."""
    if os.environ.get("PPL_POSTERIORS_PROGRESS", "").strip().lower() == "plain":
        return "plain"
    if "ipykernel" in sys.modules:
        return "bar"
    try:
        return "bar" if sys.stderr.isatty() else "plain"
    except (AttributeError, ValueError):
        return "plain"


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
        self._plain = None  # (t0, next quarter) while a plain-lines run is open
        self._count = 0  # steps counted on the host by advance()

    def __enter__(self):
        self._count = 0
        if not self.enabled or jax.process_index() != 0:
            return self
        if _style() == "plain":
            self._plain = [time.perf_counter(), 1]
            print(f"{self.desc}: {self.total} steps ({self._phase_text()})", file=sys.stderr, flush=True)
        else:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self._label(0), unit="step", leave=True)
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._plain = None

    def _phase_text(self) -> str:
        return ", ".join(f"{label} {n}" for label, n in self.phases)

    def _label(self, done: int) -> str:
        start = 0
        for label, n in self.phases:
            if done < start + n:
                return f"{self.desc} {label}"
            start += n
        return f"{self.desc} {self.phases[-1][0]}" if self.phases else self.desc

    def update(self, i) -> None:
        """Host side: step ``i`` (0-based) is done."""
        done = int(i) + 1
        if self._plain is not None:
            t0, quarter = self._plain
            if done * 4 >= quarter * self.total:
                while quarter <= 4 and done * 4 >= quarter * self.total:
                    quarter += 1
                self._plain[1] = quarter
                pct = 100 * done // self.total
                phase = self._label(done - 1)[len(self.desc):].strip()
                print(f"{self.desc}: {done}/{self.total} ({pct}%, {phase}) "
                      f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            return
        bar = self._bar
        if bar is None:
            return
        bar.set_description(self._label(done - 1), refresh=False)
        bar.update(done - bar.n)

    def advance(self, limit: int) -> None:
        """Call inside jitted code once per step of a loop that gives no step index (a
        library's tuner running its own ``lax.scan``): one host callback per step, counted
        on the host from 0 and shown up to step ``limit`` (the length of its phase)."""
        if self.enabled:
            jax.debug.callback(lambda: self._advance(int(limit)))

    def _advance(self, limit: int) -> None:
        self._count += 1
        if self._count <= limit and (self._count % self.every == 0 or self._count == limit):
            self.update(self._count - 1)

    def tick(self, i) -> None:
        """Call inside jitted code with the global 0-based step index ``i`` (unbatched)."""
        if not self.enabled:
            return
        last = self.total - 1

        def report(i):
            jax.debug.callback(self.update, i)

        jax.lax.cond(((i + 1) % self.every == 0) | (i == last), report, lambda i: None, i)


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
