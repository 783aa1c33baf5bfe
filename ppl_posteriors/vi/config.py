"""``pp.MeanFieldVI``: ADVI with a mean-field Gaussian guide on the unconstrained space.

Maximises the reverse-KL ELBO (see :mod:`ppl_posteriors.vi.objectives`) with an optax
optimiser and pathwise gradients (closed-form entropy, or the sticking-the-landing
estimator with ``stl=True``), returning the average of the final iterates.

References: Kucukelbir et al. (2017), JMLR 18:1-45 (ADVI); Roeder, Wu & Duvenaud
(2017), NeurIPS (STL); Blei, Kucukelbir & McAuliffe (2017), JASA 112:859-877.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import optax

from .._errors import Status
from ..registry import MethodConfig, register_method
from ..results.raw import KHAT_DRAWS, RawPosterior
from ..runtime.programs import approximation_weights
from . import meanfield
from .fit import elbo_converged, fit
from .objectives import elbo

__all__ = ["MeanFieldVI"]


@dataclasses.dataclass(frozen=True)
class MeanFieldVI(MethodConfig):
    """Mean-field Gaussian variational inference (ADVI).

    Parameters
    ----------
    num_steps : int, default 5000
        Optimisation steps.
    optimizer : optax.GradientTransformation or None
        None means ``optax.adam(1e-2)``.
    num_particles : int, default 1
        Draws of the guide per ELBO estimate.
    stl : bool, default False
        Sticking-the-landing gradient estimator instead of the closed-form entropy.
        Its gradient vanishes when q equals the posterior, but for a mean-field q of a
        correlated posterior we measured slower, noisier convergence of the means
        (correlated 3-d Gaussian, 20,000 steps, 5 seeds: max error 0.02-0.30 sd with
        STL, 0.006-0.04 sd without), and no gain on logistic regression (bench/b3_vi.py).
    init_scale : float, default 0.1
        Initial sd of every coordinate (unconstrained units); the mean starts at the
        unconstrained origin.
    num_samples : int, default 1000
        Draws from the fitted guide, returned as one chain.
    convergence_window : int or None
        Steps per window of the convergence test (see ``vi.fit.elbo_converged``);
        None means max(50, num_steps // 10).
    average_fraction : float, default 0.2
        Return the average of the iterates over this final fraction of the steps
        (Polyak-Ruppert averaging; 0 returns the last iterate).
    throw : bool, default True
        Raise ``NumericalError`` when the ELBO or the parameters become non-finite.
        An ELBO still rising at the end is a ``NumericalWarning`` (``Status.NOT_CONVERGED``).

    Raises
    ------
    ConfigError
        Invalid option values.
    """

    num_steps: int = 5000
    optimizer: Any = None
    num_particles: int = 1
    stl: bool = False
    init_scale: float = 0.1
    num_samples: int = 1000
    convergence_window: int | None = None
    average_fraction: float = 0.2
    throw: bool = True

    def __post_init__(self):
        self._positive_int("num_steps", "num_particles", "num_samples")
        self._require(self.init_scale > 0, "init_scale", "must be > 0")
        if self.optimizer is not None:
            self._require(
                isinstance(self.optimizer, optax.GradientTransformation),
                "optimizer",
                "must be an optax.GradientTransformation, e.g. optax.adam(1e-2)",
            )
        self._require(0.0 <= self.average_fraction < 1.0, "average_fraction", "must be in [0, 1)")
        if self.convergence_window is not None:
            self._positive_int("convergence_window")

    def run(self, rng_key, rt) -> RawPosterior:
        optimizer = self.optimizer if self.optimizer is not None else optax.adam(1e-2)
        num_average = int(self.average_fraction * self.num_steps)

        def program(ld, ctx, key):
            # minibatch_logdensity_fn draws the indices of subsampled plates from the key
            # (scaled by N/B); for a model without such plates it is logdensity_fn
            def f(x, k):
                return ld.minibatch_logdensity_fn(ld.unravel(x), k)

            def loss(params, key):
                k_data = jax.random.fold_in(key, 1)  # minibatch indices; key itself draws the guide
                return -elbo(lambda x: f(x, k_data), params, key, self.num_particles, self.stl)

            k_fit, k_draw = jax.random.split(key)
            params0 = meanfield.init(ld.ravel(ld.init_position), self.init_scale)
            params, losses = fit(loss, params0, optimizer, self.num_steps, k_fit, ctx.progress, num_average)
            approx = meanfield.MeanFieldGaussian.from_params(params)
            return approx, -losses, approx.sample_flat(k_draw, max(self.num_samples, KHAT_DRAWS))

        approx, elbo_trace, draws = rt.call(
            "fit", program, rng_key, phases=[("steps", self.num_steps)], desc="MeanFieldVI"
        )
        lp, log_weight = approximation_weights(rt, approx, draws)
        khat_log_weights = log_weight
        n = self.num_samples
        draws, lp, log_weight = draws[:n], lp[:n], log_weight[:n]
        ld = rt.log_density

        elbo_trace = np.asarray(elbo_trace)
        window = self.convergence_window or max(50, self.num_steps // 10)
        converged, increase = elbo_converged(elbo_trace, window)
        finite = all(np.all(np.isfinite(np.asarray(a))) for a in (approx.mean, approx.scale, lp))
        if not finite or not np.all(np.isfinite(elbo_trace[-window:])):
            first = int(np.argmax(~np.isfinite(elbo_trace))) if not np.all(np.isfinite(elbo_trace)) else None
            where = f" (first at step {first})" if first is not None else ""
            status, messages = Status.NON_FINITE, [
                f"the ELBO, the variational parameters or the draws' log density became "
                f"non-finite{where}; lower the learning rate, use a smaller init_scale, or "
                "check the model's support"
            ]
        elif not converged:
            status, messages = Status.NOT_CONVERGED, [
                f"the ELBO still rose by {increase:.3g} nats between the last two windows of "
                f"{window} steps; increase num_steps or the learning rate"
            ]
        else:
            status, messages = Status.SUCCESS, []
        info = {
            "messages": messages,
            "grad_evals": self.num_steps * self.num_particles,
            # ELBO of the returned (averaged) guide, from its draws: mean of log p - log q
            "elbo_final": float(np.mean(np.asarray(khat_log_weights))),
            "khat_log_weights": khat_log_weights,
        }
        position = ld.unravel(draws[None])
        stats = {"lp": lp[None], "log_weight": log_weight[None]}
        return RawPosterior(position, stats, approx._replace(elbo=elbo_trace), status, info)


register_method("meanfield_vi", MeanFieldVI, "ADVI: mean-field Gaussian VI, reverse-KL ELBO, pathwise gradients")
