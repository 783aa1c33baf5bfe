"""Resuming a VI fit: the optimiser state stored with the result, and starting points.

A VI result's ``approximation`` group holds the fitted guide (what ``sample_approximation``
draws from) and, next to it, the state the optimisation loop ended in:

* ``resume_params`` (P,): the last iterate of the guide parameters, flattened
  (``jax.flatten_util.ravel_pytree``; the returned guide is the average of the final
  iterates, see ``average_fraction``, so the last iterate is stored apart);
* ``resume_opt_state`` (Q,): the optax state after the last step, flattened the same
  way (Adam: its step count and first and second moments);
* ``resume_step``: the global step count.

``init_from=result`` continues from them: the same parameters, the optimiser's state
(Adam's moments and its count, so an optax schedule continues where it stopped) and the
global step, from which each step's random key is derived (``fold_in(key, step)``). With
the same ``rng_key``, ``optimizer`` and ``average_fraction=0``, n steps then m resumed
steps give exactly the fit of n + m steps (tests/test_vi_quality.py). The state survives
``to_netcdf``. A stored state that does not fit the optimiser (another optimiser or
guide) is not used: the fit then starts from the stored guide with a fresh optimiser
state, and ``attrs["resumed"]`` is 0.

Starting points (``init=``) other than the model's initial position: ``"map"`` centres
the guide at the posterior mode (``pp.laplace.mode.find_map``: BFGS then Newton
polishing, on the full data) with sd ``init_scale``; ``"laplace"`` also sets its scales
from H = -∇² log p at the mode (:meth:`Guide.init_laplace`): the Laplace approximation
N(mode, H⁻¹) as the start (full-rank: L = chol(H⁻¹); mean-field: σ_i = H_ii^(-1/2), the
mean-field reverse-KL optimum for a Gaussian target; flows: the standardising affine
layer at the mode with the Laplace marginal sds). Where H is not positive definite the
guide starts at the end point with ``init_scale``, and a message says so.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = ["MAP_OPTIONS", "Resumable", "initial_params", "mode_and_hessian", "params_from", "resume_state",
           "start_from", "unravel_opt_state"]

# options of the mode search of init="map" / "laplace" (pp.laplace.mode.find_map)
MAP_OPTIONS = {"max_steps": 500, "newton_steps": 2}

STATE_VARS = ("resume_params", "resume_opt_state", "resume_step")


class Resumable:
    """A fitted approximation with the loop's final state: stored next to it in the
    ``approximation`` group (``to_arrays``); every other attribute is the approximation's."""

    def __init__(self, approx, last_params, opt_state, step):
        self.approx = approx
        self.flat_params = ravel_pytree(last_params)[0]
        self.flat_opt_state = ravel_pytree(opt_state)[0]
        self.step = int(step)

    @property
    def kind(self) -> str:
        return self.approx.kind

    def to_arrays(self):
        out = dict(self.approx.to_arrays())
        out["resume_params"] = (("resume_param",), self.flat_params)
        out["resume_opt_state"] = (("resume_opt",), self.flat_opt_state)
        out["resume_step"] = ((), np.asarray(self.step, np.int64))
        return out

    def __getattr__(self, name):
        return getattr(self.__dict__["approx"], name)


def resume_state(idata, params_template, optimizer):
    """``(params, opt_state_flat, step)`` stored in ``idata`` when they fit ``params_template``
    (the guide's parameters, a pytree) and ``optimizer``; ``(None, None, 0)`` if the result
    stores no state, ``(None, "mismatch", 0)`` if it does not fit."""
    from ..results import compat

    ds = compat.get_group(idata, "approximation")
    if not all(k in ds.data_vars for k in STATE_VARS):
        return None, None, 0
    flat_p = np.asarray(ds["resume_params"].values)
    flat_o = np.asarray(ds["resume_opt_state"].values)
    template_flat, unravel = ravel_pytree(params_template)
    if flat_p.shape != template_flat.shape:
        return None, "mismatch", 0
    params = unravel(jnp.asarray(flat_p, template_flat.dtype))
    opt_shape = jax.eval_shape(optimizer.init, params)
    size = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(opt_shape))
    if flat_o.shape != (size,):
        return None, "mismatch", 0
    return params, jnp.asarray(flat_o), int(ds["resume_step"].values)


def unravel_opt_state(optimizer, params, flat):
    """The optimiser state of ``optimizer`` for ``params`` from its flat vector (traceable)."""
    _, unravel = ravel_pytree(optimizer.init(params))
    return unravel(flat)


def mode_and_hessian(ld, x0, map_options: dict):
    """``(mode (D,), H (D, D), ok, mode_ok)``: the end point of the MAP search from ``x0``
    (x0 itself if it failed), H = -∇² log p there, and whether the search gave a finite
    point (``mode_ok``) with a positive definite H (``ok``). Traceable."""
    from ..laplace.mode import find_map

    res = find_map(ld.flat_logdensity_fn, x0, **map_options)
    mode_ok = jnp.all(jnp.isfinite(res.position)) & jnp.isfinite(res.logdensity)
    mode = jnp.where(mode_ok, res.position, x0)
    ok = mode_ok & jnp.all(jnp.isfinite(res.cholesky))
    h = jnp.where(ok, res.precision, jnp.eye(x0.shape[0], dtype=x0.dtype))
    return mode, h, ok, mode_ok


def initial_params(guide, init: str, ld, key, x0, map_options: dict):
    """``(params, ok)``: the guide's starting parameters for ``init`` ("position", "map",
    "laplace"; see the module docstring) from the model's initial point ``x0`` (D,);
    ``ok`` is False where the MAP search or the Hessian failed (traceable)."""
    if init == "position":
        return guide.init(key, x0), jnp.asarray(True)
    mode, h, pd_ok, mode_ok = mode_and_hessian(ld, x0, map_options)
    at_mode = guide.init(key, mode)
    if init == "map" or guide.init_laplace is None:
        return at_mode, mode_ok
    laplace = guide.init_laplace(key, mode, h)
    params = jax.tree.map(lambda a, b: jnp.where(pd_ok, a, b), laplace, at_mode)
    return params, pd_ok


def params_from(guide, idata, ld):
    """Guide parameters from the approximation stored in ``idata`` (``init_from``).

    Raises
    ------
    ConfigError
        The stored result is of another model (latent sites or shapes) or guide.
    """
    from .._errors import ConfigError
    from ..results.approximation import load_approximation

    approx, layout = load_approximation(idata)
    if tuple(layout) != tuple(ld.layout):
        raise ConfigError(f"init_from: the stored result's latent sites {[n for n, _ in layout]} and shapes "
                          f"differ from this model's {[n for n, _ in ld.layout]}")
    params = None if guide.from_approximation is None else guide.from_approximation(approx)
    if params is None:
        raise ConfigError(f"init_from: a stored {approx.kind!r} approximation cannot start the {guide.name} "
                          "guide; resume with the config that produced it")
    return params


def start_from(init_from, guide, ld, optimizer):
    """``(init, resumed, messages)`` for ``init_from`` (a result or None): ``init`` is None
    (a fresh fit) or ``(params, opt_state_flat or None, start step)``; ``resumed`` is 1
    when the stored optimiser state is continued."""
    if init_from is None:
        return None, 0, []
    params = params_from(guide, init_from, ld)
    last, opt_flat, step = resume_state(init_from, params, optimizer)
    if last is None:
        msg = [] if opt_flat is None else [
            "init_from: the stored optimiser state does not fit this optimiser or guide; the fit restarted "
            "the optimiser from the stored guide"]
        return (params, None, jnp.zeros((), jnp.int32)), 0, msg
    return (last, opt_flat, jnp.asarray(step, jnp.int32)), 1, []
