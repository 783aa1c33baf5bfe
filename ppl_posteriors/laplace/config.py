"""``pp.Laplace``: Gaussian approximation at the MAP with the exact dense Hessian.

Math: with f(z) = logdensity_fn(z) on the unconstrained space,

    z* = argmax f(z),    P = -∇² f(z*),    p(z | y) ≈ N(z; z*, P⁻¹),

and the Laplace estimate of the evidence log Z ≈ f(z*) + D/2 log 2π - ½ log det P
(recorded as ``idata.attrs["log_evidence"]``; with ``jacobian=True`` it is the
evidence of the model in its constrained parametrisation).

If P is not positive definite the approximation does not exist: the result
carries ``Status.INDEFINITE_CURVATURE`` and, with ``throw=True``, raises
``NumericalError``. It never falls back to the MAP alone or to a clipped matrix.

References: Tierney & Kadane (1986), JASA 81:82-86; MacKay (1992), Neural Comput.
4:448-472; Daxberger et al. (2021), "Laplace Redux", NeurIPS.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import Status
from .._progress import timed_call
from ..registry import MethodConfig, register_method
from ..results.raw import KHAT_DRAWS, RawPosterior
from .gaussian import DenseGaussian, laplace_log_evidence
from .mode import find_map

__all__ = ["Laplace"]


@dataclasses.dataclass(frozen=True)
class Laplace(MethodConfig):
    """Laplace approximation at the MAP with the exact dense Hessian.

    Parameters
    ----------
    num_samples : int, default 1000
        Draws from N(z*, P⁻¹), returned as one chain.
    jacobian : bool, default True
        Include the log-Jacobian of the transforms to the unconstrained space in
        the density (the mode is then the mode of the unconstrained density);
        ``False`` finds the mode in the constrained space.
    max_steps : int, default 1000
        BFGS iteration limit.
    rtol, atol : float or None
        BFGS termination tolerances; None means 1e-8 in float64 and 1e-5 in float32.
    mode_tol : float, default 0.01
        Accept the mode when the Newton decrement (distance to a stationary point,
        in posterior sd) is below this; otherwise ``Status.MAP_NOT_CONVERGED``.
    throw : bool, default True
        Raise ``NumericalError`` on a failure (MAP not found, indefinite Hessian,
        non-finite density); with False the status is only recorded in ``idata.attrs``.

    Raises
    ------
    ConfigError
        Invalid option values.
    """

    num_samples: int = 1000
    jacobian: bool = True
    max_steps: int = 1000
    rtol: float | None = None
    atol: float | None = None
    mode_tol: float = 0.01
    throw: bool = True

    def __post_init__(self):
        self._positive_int("num_samples", "max_steps")
        self._require(self.mode_tol > 0, "mode_tol", "must be > 0")

    def run(self, rng_key, log_density, *, progress: bool = True) -> RawPosterior:
        ld = log_density
        x64 = jnp.result_type(float) == jnp.float64
        rtol = self.rtol if self.rtol is not None else (1e-8 if x64 else 1e-5)
        atol = self.atol if self.atol is not None else (1e-8 if x64 else 1e-5)

        def fit(x0, key):
            res = find_map(ld.flat_logdensity_fn, x0, max_steps=self.max_steps, rtol=rtol, atol=atol)
            approx = DenseGaussian(res.position, res.precision, res.cholesky)
            draws = approx.sample_flat(key, max(self.num_samples, KHAT_DRAWS))
            lp = jax.vmap(ld.posterior_logdensity_fn)(ld.unravel(draws))
            return res, approx, draws, lp, lp - approx.log_prob(draws)

        x0 = ld.ravel(ld.init_position)
        (res, approx, draws, lp, log_weight), compile_time, run_time = timed_call(fit, x0, rng_key)
        khat_log_weights = log_weight
        n = self.num_samples
        draws, lp, log_weight = draws[:n], lp[:n], log_weight[:n]
        status, messages = _diagnose(res, ld, self.mode_tol, lp)
        info = {
            "messages": messages,
            "compile_time": compile_time,
            "run_time": run_time,
            "map_steps": int(res.num_steps),
            "map_logdensity": float(res.logdensity),
            "newton_decrement": float(res.decrement),
            "log_evidence": float(laplace_log_evidence(res.logdensity, res.cholesky)),
            "khat_log_weights": khat_log_weights,
        }
        position = ld.unravel(draws[None])
        stats = {"lp": lp[None], "log_weight": log_weight[None]}
        return RawPosterior(position, stats, approx, status, info)


def _diagnose(res, ld, mode_tol, lp) -> tuple[Status, list[str]]:
    if not (np.isfinite(float(res.logdensity)) and bool(jnp.all(jnp.isfinite(res.position)))):
        return Status.NON_FINITE, [
            f"the MAP search ended at a non-finite log density ({float(res.logdensity)}); "
            "check the model for values outside the support or overflowing likelihoods"
        ]
    if not bool(jnp.all(jnp.isfinite(res.cholesky))):
        evals, evecs = np.linalg.eigh(np.asarray(res.precision))
        names = ld.param_names()
        worst = names[int(np.argmax(np.abs(evecs[:, 0])))]
        return Status.INDEFINITE_CURVATURE, [
            f"the negative Hessian at the mode is not positive definite (smallest eigenvalue "
            f"{evals[0]:.3g}, mostly along {worst!r}); the point found is a saddle or the "
            "density is flat or improper there, so no Gaussian approximation exists. "
            "Reparameterise (e.g. non-centre hierarchical scales) or use NUTS or VI"
        ]
    if not bool(jnp.all(jnp.isfinite(lp))):
        bad = int(jnp.sum(~jnp.isfinite(lp)))
        return Status.NON_FINITE, [
            f"{bad} of {lp.size} draws of the Gaussian have a non-finite posterior density "
            "(they overflow the transforms to the constrained space); the mode is at an "
            "extreme of the unconstrained space, so the approximation is meaningless there"
        ]
    if float(res.decrement) > mode_tol:
        return Status.MAP_NOT_CONVERGED, [
            f"the MAP search stopped {float(res.decrement):.3g} posterior sd (Newton decrement) "
            f"from a stationary point after {int(res.num_steps)} BFGS steps; increase max_steps, "
            "or check whether the density is unbounded (e.g. a funnel whose mode is at a boundary)"
        ]
    return Status.SUCCESS, []


register_method("laplace", Laplace, "Laplace approximation at the MAP with the exact dense Hessian")
