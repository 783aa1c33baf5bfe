"""What every method returns before it becomes InferenceData."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from .._errors import Status

__all__ = ["KHAT_DRAWS", "RawPosterior"]

# Laplace and VI draw at least this many points for the PSIS k-hat diagnostic, so that
# its estimate (and the 0.7 threshold it is held to) does not depend on num_samples.
KHAT_DRAWS = 4000


class RawPosterior(NamedTuple):
    """Draws of one method on the unconstrained space.

    Attributes
    ----------
    position : dict
        ``{latent site: array (chain, draw, *unconstrained shape)}``.
    sample_stats : dict
        ``{ArviZ name: array (chain, draw)}``, e.g. ``diverging``, ``lp``.
    approximation : object or None
        What defines q for Laplace and VI (see ``results.approximation``).
    status : Status
        Worst numerical outcome.
    info : dict
        ``messages`` (list of str), ``grad_evals``, ``compile_time`` (s),
        ``run_time`` (s) and method-specific entries; scalars go to ``idata.attrs``.
        ``khat_log_weights`` (Laplace, VI): log p - log q of >= KHAT_DRAWS draws of q,
        for the PSIS k-hat diagnostic.
    """

    position: dict[str, jax.Array]
    sample_stats: dict[str, Any]
    approximation: Any
    status: Status
    info: dict[str, Any]
