"""Stan's windowed warmup (step size by dual averaging, mass matrix by windowed
Welford estimates), taken from BlackJAX.

BlackJAX's ``window_adaptation(...).run`` runs the whole warmup as one scan with
no hook for a progress bar or for sharing one program with the sampling phase, so
we drive BlackJAX's own pieces -- ``window_adaptation.base`` (init / update /
final) and ``build_schedule`` -- from our loop (``mcmc.loop``). ``base`` is marked
deprecated in BlackJAX 1.7 in favour of ``staged_adaptation``, whose engine is not
public; the pinned version range and ``tests/test_contracts.py`` catch churn.

Reference: Stan Reference Manual, "HMC algorithm parameters" (adaptation);
Hoffman & Gelman (2014), JMLR 15:1593-1623 (dual averaging).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
from blackjax.adaptation import window_adaptation as _wa

__all__ = ["WindowAdaptation", "window_adaptation"]


class WindowAdaptation(NamedTuple):
    """Pure functions of Stan's warmup.

    init(position, initial_step_size) -> state;
    update(state, stage_row, position, acceptance_rate) -> state, with ``stage_row``
    one row (stage, is_window_end) of ``schedule``;
    final(state) -> (step_size, inverse_mass_matrix);
    schedule: int array (num_warmup, 2).
    """

    init: Callable
    update: Callable
    final: Callable
    schedule: jnp.ndarray


def window_adaptation(num_warmup: int, target_accept: float, dense_mass: bool) -> WindowAdaptation:
    """Stan's warmup for ``num_warmup`` steps (windows 75 / 25 doubling / 50, rescaled if short)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        init, update, final = _wa.base(not dense_mass, target_accept)
    schedule = jnp.asarray(_wa.build_schedule(num_warmup), dtype=jnp.int32).reshape(num_warmup, 2)
    return WindowAdaptation(init, update, final, schedule)
