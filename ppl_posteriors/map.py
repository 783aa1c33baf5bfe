"""``pp.find_map``: multi-start MAP of a NumPyro model, compiled once through the runtime.

The search is :func:`ppl_posteriors.laplace.mode.find_map_multistart` (optimistix BFGS
from ``num_starts`` Stan-style uniform(-r, r) starts on the unconstrained space,
vmapped, then safeguarded Newton polishing and the saddle-free Newton decrement as the
stationarity test; Nocedal & Wright 2006, ch. 6). By default the density has no
log-Jacobian, so the result is the mode of the posterior density of the constrained
values (Stan's ``optimizing``, NumPyro's ``AutoDelta``); ``jacobian=True`` gives the
mode on the unconstrained space instead (the centre of ``pp.Laplace``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ._errors import Status
from ._progress import as_key
from .density import model_template
from .density.init import draw_initial_positions
from .laplace.mode import find_map_multistart
from .registry import MethodConfig
from .runtime import Runtime

__all__ = ["find_map"]


@dataclasses.dataclass(frozen=True)
class _MAP(MethodConfig):
    """The search's options (the compile-cache key of ``find_map``; not a registered method)."""

    num_starts: int = 4
    init_radius: float = 2.0
    max_steps: int = 1000
    mode_tol: float = 0.01
    jacobian: bool = False

    def __post_init__(self):
        self._positive_int("num_starts", "max_steps")
        self._require(self.init_radius >= 0, "init_radius", "must be >= 0")
        self._require(self.mode_tol > 0, "mode_tol", "must be > 0")

    def run(self, rng_key, rt):  # pragma: no cover - find_map calls _program directly
        raise NotImplementedError

    def _program(self, ld, ctx, key):
        x0, ok = draw_initial_positions(ld.flat_logdensity_fn, key, self.num_starts, ld.dim, self.init_radius)
        ms = find_map_multistart(ld.flat_logdensity_fn, x0, ok, mode_tol=self.mode_tol,
                                 same_mode_tol=max(0.1, 2 * self.mode_tol), max_steps=self.max_steps)
        values = ld.constrain(ld.unravel(ms.best.position))
        return values, ms.best.logdensity, ms.best.decrement, ms.tier, ms.index, ms.at_mode


_TIER_STATUS = {3: Status.SUCCESS, 2: Status.INDEFINITE_CURVATURE, 1: Status.MAP_NOT_CONVERGED, 0: Status.NON_FINITE}


def find_map(model, *args, num_starts: int = 4, rng_key=None, init_radius: float = 2.0, max_steps: int = 1000,
             mode_tol: float = 0.01, jacobian: bool = False, return_info: bool = False, **kwargs):
    """Maximum a posteriori values of a NumPyro model's latent sites, from several starts.

    Parameters
    ----------
    model : callable
        A NumPyro model; ``*args, **kwargs`` are its own arguments (as for ``pp.infer``;
        the keywords below belong to ``find_map``). The search is compiled once per
        (model, static arguments, shapes, options): new data of the same shapes reuse it.
    num_starts : int, default 4
        Independent BFGS searches from uniform(-init_radius, init_radius) starts on the
        unconstrained space; the best is kept (stationary with a positive definite
        Hessian first, then the highest log density).
    rng_key : jax key, int or None
        Draws the starts; None means ``jax.random.key(0)``.
    init_radius : float, default 2.0
    max_steps : int, default 1000
        BFGS iterations per start.
    mode_tol : float, default 0.01
        Largest Newton decrement (posterior sd units) that counts as stationary.
    jacobian : bool, default False
        Include the log-Jacobian of the constraining transforms (False: the mode of the
        constrained density, as Stan's ``optimizing``).
    return_info : bool, default False
        Also return a dict: ``logdensity`` at the MAP, its Newton ``decrement``, the
        per-start ``tier`` (S,) (3 stationary + positive definite Hessian, 2 stationary,
        1 finite, 0 not finite), the chosen start ``index``, and ``num_at_mode`` (starts
        that reached the same mode).

    Returns
    -------
    values : dict
        ``{site: numpy array}`` of every latent and deterministic site at the MAP,
        constrained.
    status : Status
        ``SUCCESS`` (stationary, positive definite Hessian); ``INDEFINITE_CURVATURE``
        (stationary, Hessian not positive definite: a saddle or a flat direction);
        ``MAP_NOT_CONVERGED`` (no start reached a stationary point); ``NON_FINITE``.
    info : dict
        Only with ``return_info=True`` (see there).

    Raises
    ------
    ConfigError
        Invalid options (``num_starts`` < 1, ...). ModelError: see ``pp.infer``.
    """
    cfg = _MAP(num_starts=num_starts, init_radius=init_radius, max_steps=max_steps, mode_tol=mode_tol,
               jacobian=jacobian)
    template, arrays = model_template(model, args, kwargs, jacobian)
    rt = Runtime(template, arrays, cfg, progress=False)
    values, lp, dec, tier, index, at_mode = rt.call("find_map", cfg._program, as_key(rng_key))
    tier = np.asarray(tier)
    out = {k: np.asarray(v) for k, v in values.items()}
    status = _TIER_STATUS[int(tier[int(index)])]
    if not return_info:
        return out, status
    info = {"logdensity": float(lp), "decrement": float(dec), "tier": tier, "index": int(index),
            "num_at_mode": int(np.sum(np.asarray(at_mode)))}
    return out, status, info
