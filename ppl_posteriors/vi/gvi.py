"""Generalized variational inference: any loss plus w times KL to the prior, ``pp.GeneralizedVI``.

The prior is a NumPyro model of the latent sites; ``loss(values, *args, **kwargs) ->
scalar`` takes the constrained site values (a dict: latent and deterministic sites)
and the model's own arguments, as ``pp.infer(prior_model, data, method=...)`` got them.
GVI minimises over the guide's parameters φ

    L(φ) = E_{q_φ}[loss(θ)] + w · KL(q_φ ‖ π),

whose minimiser over all densities is the Gibbs posterior q*(θ) ∝ π(θ) exp(-loss(θ)/w)
(Knoblauch, Jewson & Damoulas 2022, "An optimization-centric view on Bayes' rule",
JMLR 23(132), §3; Bissiri, Holmes & Walker 2016, JRSS-B 78:1103-1130). With w = 1 and
loss = -log p(y | θ) it is the negative ELBO of standard VI. The reference density π
is the model's log density on the unconstrained space (Jacobian included, so the KL is
that of the constrained distributions): its prior, plus the likelihood of any observed
sites it has (then q* ∝ π(θ, y) exp(-loss/w), and loss = 0, w = 1 is standard VI).

KL(q‖π) is taken in closed form when q is Gaussian (mean-field, full-rank, low-rank)
and every latent site of a model without observed or factor sites has a Normal prior
whose parameters do not depend on other latent sites (found from the program's
dataflow), π = N(m, diag s²) on the flat space:

    KL = -H[q] + ½ Σ_i (Var_q z_i + (E_q z_i - m_i)²) / s_i² + Σ_i log s_i + D/2 log 2π;

otherwise by Monte Carlo with the same draws as the loss, -H[q] - mean_s log π(z_s)
(closed-form entropy where the guide has one, else mean_s log q(z_s)), pathwise.

Gradients of E_q[loss] (S = ``num_particles`` draws z_s = T_φ(ε_s)):

* ``estimator="pathwise", diff_mode="reverse"``: reverse-mode through the loss.
* ``diff_mode="forward"``: ∇_z loss by forward mode, D Jacobian-vector products
  evaluated ``jacobian_chunk_size`` at a time (``jax.lax.map`` with ``batch_size``;
  memory independent of the simulator's number of outputs and steps), then the chain
  rule through T_φ by the surrogate Σ_s ⊥(∇_z loss(z_s)) · z_s(φ) (blackbirds'
  ``diff_mode="forward"``; Quera-Bofarull et al. 2023, "Some challenges of calibrating
  differentiable agent-based models", arXiv:2307.01085).
* ``estimator="score"`` (for simulators that are not differentiable: the loss is never
  differentiated): E[(loss(z_s) - b_s) ∇_φ log q_φ(z_s)] with the leave-one-out
  baseline b_s (Kool, van Hoof & Welling 2019), so ``num_particles >= 2``.

``initialize_to_prior`` first fits q to π alone (minimising the KL term for
``prior_steps`` steps), as blackbirds' ``initialize_estimator_to_prior``.

Reference implementation: blackbirds (Quera-Bofarull, Dyer et al.), ``blackbirds.infer.vi``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import ConfigError, closest
from ..model.args import merge_args
from ..model.sites import SiteKind
from ..registry import MethodConfig, register_method
from ..results.raw import KHAT_DRAWS, RawPosterior
from .config import FullRankVI, LowRankVI, MeanFieldVI, VIConfig
from .fit import fit
from .guide import Guide
from .objectives import Objective

__all__ = ["GeneralizedVI", "gaussian_prior", "kl_closed_form", "kl_monte_carlo", "surrogate"]

sg = jax.lax.stop_gradient
_LOG2PI = math.log(2 * math.pi)
GAUSSIAN = {"meanfield": MeanFieldVI, "fullrank": FullRankVI, "lowrank": LowRankVI}
OBJECTIVE = Objective("gvi", None, False, False)


# ------------------------------------------------------------------------------ KL


def kl_closed_form(guide: Guide, m: jax.Array, s: jax.Array):
    """``kl(params, z, log_q) -> KL(q‖N(m, diag s²))`` in closed form (module docstring);
    needs ``guide.moments`` and ``guide.entropy``. m, s (D,)."""

    def kl(params, z, log_q):
        mean, var = guide.moments(params)
        d = mean.shape[-1]
        return (-guide.entropy(params) + 0.5 * jnp.sum((var + (mean - m) ** 2) / s**2)
                + jnp.sum(jnp.log(s)) + 0.5 * d * _LOG2PI)

    return kl


def kl_monte_carlo(guide: Guide, log_prior):
    """``kl(params, z, log_q) -> -H[q] - mean log π(z)`` from draws z (S, D) of q (pathwise);
    ``log_prior`` (D,) -> scalar. -H[q] is ``-guide.entropy`` or mean log q."""

    def kl(params, z, log_q):
        neg_h = -guide.entropy(params) if guide.entropy is not None else jnp.mean(log_q)
        return neg_h - jnp.mean(jax.vmap(log_prior)(z))

    return kl


def _live(closed) -> bool:
    """Whether any output of a closed jaxpr depends on its inputs (forward dataflow;
    sub-programs count as one operation: conservative)."""
    jaxpr = closed.jaxpr
    live = {id(v) for v in jaxpr.invars}
    for eqn in jaxpr.eqns:
        if any(id(v) in live for v in eqn.invars):
            live.update(id(v) for v in eqn.outvars)
    return any(id(v) in live for v in jaxpr.outvars)


def gaussian_prior(ld, model, args, kwargs):
    """``(m, s)`` (D,) if π is N(m, diag s²) on the flat space (every latent site Normal,
    unscaled, with parameters free of other latent sites; no observed or factor sites),
    else None. Runs inside a program (the data may be traced)."""
    from numpyro import distributions as dist

    from ..model.trace import from_unconstrained, replay

    if any(s.kind in (SiteKind.OBSERVED, SiteKind.FACTOR) for s in ld.sites):
        return None

    def normal_params(x):
        recs = replay(model, args, kwargs, from_unconstrained(ld.unravel(x)))
        locs, scales = {}, {}
        for name, shape in ld.layout:
            rec = recs[name]
            fn = rec.fn
            while isinstance(fn, (dist.Independent, dist.ExpandedDistribution)):
                fn = fn.base_dist
            if type(fn) is not dist.Normal or rec.scale is not None:
                return None
            locs[name] = jnp.broadcast_to(fn.loc, shape)
            scales[name] = jnp.broadcast_to(fn.scale, shape)
        return ld.ravel(locs), ld.ravel(scales)

    x0 = ld.ravel(ld.init_position)
    if normal_params(x0) is None:
        return None
    if _live(jax.make_jaxpr(normal_params)(x0)):
        return None  # hierarchical: a prior parameter is another latent site
    return normal_params(x0)


# ------------------------------------------------------------------------------ estimators


def _forward_grad(f, x, chunk):
    """∇f(x) (D,) by D forward-mode JVPs, ``chunk`` at a time (None: all at once)."""
    d = x.shape[-1]
    basis = jnp.eye(d, dtype=x.dtype)
    return jax.lax.map(lambda e: jax.jvp(f, (x,), (e,))[1], basis, batch_size=min(chunk or d, d))


def surrogate(guide: Guide, params, rng_key, loss_flat, kl, w: float, estimator: str = "pathwise",
              diff_mode: str = "reverse", jacobian_chunk_size: int | None = None, num_particles: int = 1):
    """``(surrogate loss, value)``: the gradient of the first in ``params`` estimates ∇L(φ),
    the second is L's Monte Carlo value (stopped), L = E_q[loss] + w KL(q‖π) (nats).

    ``loss_flat`` (D,) -> scalar on the flat unconstrained space; ``kl(params, z, log_q)``
    from :func:`kl_closed_form` or :func:`kl_monte_carlo`. See the module docstring.
    """
    s = num_particles
    z, log_q = guide.sample_and_log_prob(rng_key, params, s)
    kl_value = kl(params, z, log_q)
    if estimator == "score":
        zs = sg(z)
        losses = sg(jax.vmap(loss_flat)(zs))
        lq = guide.log_prob(params, zs)
        base = (jnp.sum(losses) - losses) / (s - 1)
        term = jnp.mean((losses - base) * lq)
        part = term - sg(term) + jnp.mean(losses)
    elif diff_mode == "forward":
        zs = sg(z)
        losses = jax.vmap(loss_flat)(zs)
        grads = jax.vmap(lambda x: _forward_grad(loss_flat, x, jacobian_chunk_size))(zs)
        term = jnp.mean(jnp.sum(sg(grads) * (z - zs), -1))
        part = term + sg(jnp.mean(losses))
    else:
        part = jnp.mean(jax.vmap(loss_flat)(z))
    total = part + w * kl_value
    return total, sg(total)


# ------------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True)
class GeneralizedVI(MethodConfig):
    """Generalized variational inference: minimise E_q[loss] + w · KL(q ‖ prior).

    Called as ``pp.infer(prior_model, *data, method=pp.GeneralizedVI(loss=loss))`` where
    ``prior_model`` samples the latent sites (its observed sites, if any, join the
    reference density; see ``pp.vi.gvi``). The result's draws are from the fitted q; its
    PSIS k-hat compares q with the Gibbs posterior ∝ prior · exp(-loss / w).

    Parameters
    ----------
    loss : callable or None
        ``loss(values, *args, **kwargs) -> scalar`` (nats-like units, any real): values =
        ``{site: constrained value}``, args / kwargs = the model's arguments. Part of the
        compile-cache key (by identity): keep it in a variable; a new lambda each call
        compiles again. None: no loss (q fits the model's own density: with observed
        sites, standard VI with the ELBO).
    w : float, default 1.0
        Weight of the KL term (> 0); q* ∝ prior · exp(-loss / w).
    guide : str, AutoGuide class or callable, default "meanfield"
        "meanfield", "fullrank", "lowrank", or a flow name of ``pp.FlowVI`` ("maf",
        "rqs_coupling", "nsf", ...); or a NumPyro AutoGuide class / guide function
        (as ``pp.NumPyroGuideVI``; pathwise only).
    guide_options : dict, optional
        Options of that guide: ``{"rank": 2}`` (lowrank), ``{"flow_layers": 2, ...}``
        (flows, as ``pp.FlowVI``), the AutoGuide's keyword arguments.
    estimator : {"pathwise", "score"}, default "pathwise"
        "score" never differentiates the loss (simulators that are not differentiable);
        needs ``num_particles >= 2`` and a guide with log q at a point.
    diff_mode : {"reverse", "forward"}, default "reverse"
        How the pathwise estimator differentiates the loss; "forward" uses D JVPs.
    jacobian_chunk_size : int or None
        JVPs evaluated together in forward mode (None: all D); only with "forward".
    kl : {"auto", "analytic", "mc"}, default "auto"
        Closed-form KL where available (Gaussian guide, Normal prior sites), else Monte
        Carlo; "analytic" raises ConfigError where not available.
    initialize_to_prior : bool, default False
        First fit q to the prior (minimise KL(q‖prior)) for ``prior_steps`` steps, with
        a fresh optimiser state after. Useful where the loss is only defined near the
        prior (simulators); otherwise it slows convergence when the posterior is much
        narrower than the prior (Adam's second moments remember the large early
        gradients: on a 20-point normal mean, 2000 steps ended 10 % above the posterior
        sd from the prior, on it from the default start).
    prior_steps : int, default 500
    num_steps, optimizer, num_particles, clip_norm, init_scale, num_samples,
    convergence_window, average_fraction, rtol, max_steps_without_improvement, throw
        As for ``pp.MeanFieldVI``.

    Raises
    ------
    ConfigError
        A ``loss`` that is not callable, invalid option values, impossible
        estimator / diff_mode / guide combinations, ``kl="analytic"`` where no closed
        form exists (at the call).
    """

    loss: Any = None
    w: float = 1.0
    guide: Any = "meanfield"
    guide_options: Any = ()
    estimator: str = "pathwise"
    diff_mode: str = "reverse"
    jacobian_chunk_size: int | None = None
    kl: str = "auto"
    initialize_to_prior: bool = False
    prior_steps: int = 500
    num_steps: int = 5000
    optimizer: Any = None
    num_particles: int = 1
    clip_norm: float | None = None
    init_scale: float = 0.1
    num_samples: int = 1000
    convergence_window: int | None = None
    average_fraction: float = 0.2
    rtol: float = 1e-4
    max_steps_without_improvement: int | None = None
    throw: bool = True

    def __post_init__(self):
        if isinstance(self.guide_options, dict):
            object.__setattr__(self, "guide_options", tuple(sorted(self.guide_options.items())))
        self._require(self.loss is None or callable(self.loss), "loss", "give loss(values, *model_args) -> "
                      "scalar, e.g. a negative log-likelihood or a simulator's distance to the data")
        self._require(self.w > 0, "w", "must be > 0")
        self._choice("estimator", ("pathwise", "score"))
        self._choice("diff_mode", ("reverse", "forward"))
        self._choice("kl", ("auto", "analytic", "mc"))
        self._positive_int("num_steps", "num_particles", "num_samples", "prior_steps")
        if self.jacobian_chunk_size is not None:
            self._positive_int("jacobian_chunk_size")
            self._require(self.diff_mode == "forward", "jacobian_chunk_size", "only applies with diff_mode='forward'")
        if self.estimator == "score":
            self._require(self.diff_mode == "reverse", "diff_mode",
                          "estimator='score' never differentiates the loss; leave diff_mode='reverse'")
            self._require(self.num_particles >= 2, "num_particles",
                          "estimator='score' uses a leave-one-out baseline: give num_particles >= 2")
        # the shared loop options and the guide: validated by the VI config they come from
        self._vi_config()

    def _vi_config(self) -> VIConfig:
        common = dict(num_steps=self.num_steps, optimizer=self.optimizer, num_particles=self.num_particles,
                      clip_norm=self.clip_norm, init_scale=self.init_scale, num_samples=self.num_samples,
                      convergence_window=self.convergence_window, average_fraction=self.average_fraction,
                      rtol=self.rtol, max_steps_without_improvement=self.max_steps_without_improvement,
                      throw=self.throw)
        opts = dict(self.guide_options)
        if not isinstance(self.guide, str):
            from .numpyro_guide import NumPyroGuideVI

            if self.estimator == "score":
                raise ConfigError("GeneralizedVI(estimator='score') needs log q at a given point, which a "
                                  "NumPyro guide cannot evaluate; use estimator='pathwise' or guide='meanfield'")
            return NumPyroGuideVI(guide=self.guide, guide_kwargs=opts, **common)
        if self.guide in GAUSSIAN:
            cfg = GAUSSIAN[self.guide](**opts, **common)
        else:
            from .flows import FLOWS, SBI_NAMES, UNAVAILABLE, FlowVI

            if self.guide not in FLOWS and self.guide not in SBI_NAMES and self.guide not in UNAVAILABLE:
                raise ConfigError(f"GeneralizedVI(guide={self.guide!r}) is unknown; "
                                  f"{closest(self.guide, list(GAUSSIAN) + list(FLOWS) + list(SBI_NAMES))}")
            cfg = FlowVI(flow=self.guide, **opts, **common)
        if self.estimator == "score" and not cfg.guide_info()[1]:
            raise ConfigError(f"GeneralizedVI(estimator='score'): the {cfg.guide_info()[0]} guide cannot "
                              "evaluate log q at a given point; use estimator='pathwise' or another guide")
        return cfg

    def run(self, rng_key, rt) -> RawPosterior:
        vi = self._vi_config()
        spec, model = rt.template.spec, rt.template.model
        guide = vi._build_guide(rt.log_density, (model, *merge_args(spec, tuple(rt.arrays))))
        optimizer, anneal = vi._optimizer()  # clipping included
        num_average = int(self.average_fraction * self.num_steps)
        window = self.convergence_window or max(50, self.num_steps // 10)
        patience = self.max_steps_without_improvement
        smoothing = max(10, min(window, (patience or window) // 2))
        n_draws = max(self.num_samples, KHAT_DRAWS)

        def program(ld, ctx, key, arrays):
            args, kwargs = merge_args(spec, tuple(arrays))
            g = vi._build_guide(ld, (model, args, kwargs))

            def loss_flat(x):
                if self.loss is None:
                    return jnp.zeros((), x.dtype)
                return jnp.asarray(self.loss(ld.constrain(ld.unravel(x)), *args, **kwargs), x.dtype).reshape(())

            prior = None
            if self.kl != "mc" and g.moments is not None and g.entropy is not None:
                prior = gaussian_prior(ld, model, args, kwargs)
            if self.kl == "analytic" and prior is None:
                raise ConfigError(
                    "GeneralizedVI(kl='analytic'): no closed form here; it needs a Gaussian guide and a "
                    "model whose latent sites all have Normal priors free of other latent sites (and no "
                    "observed or factor sites); use kl='auto' or 'mc'"
                )
            kl = kl_closed_form(g, *prior) if prior is not None else kl_monte_carlo(g, ld.flat_logdensity_fn)

            def objective(params, k):
                return surrogate(g, params, k, loss_flat, kl, self.w, self.estimator, self.diff_mode,
                                 self.jacobian_chunk_size, self.num_particles)

            def prior_objective(params, k):
                z, log_q = g.sample_and_log_prob(k, params, self.num_particles)
                value = kl(params, z, log_q)
                return value, sg(value)

            k_fit, k_draw = jax.random.split(key)
            params = g.init(jax.random.fold_in(key, 2), ld.ravel(ld.init_position))
            if self.initialize_to_prior:
                params = fit(prior_objective, params, optimizer, self.prior_steps, jax.random.fold_in(key, 3),
                             maximise=False).params
            res = fit(objective, params, optimizer, self.num_steps, k_fit, ctx.progress, num_average,
                      rtol=self.rtol, patience=patience, smoothing=smoothing, maximise=False, anneal=anneal)
            draws, log_q = g.sample_and_log_prob(k_draw, res.params, n_draws)
            losses = jax.vmap(loss_flat)(draws)
            lp = jax.vmap(ld.posterior_logdensity_fn)(ld.unravel(draws)) - losses / self.w
            return res, draws, lp, lp - log_q, jnp.mean(losses), jnp.asarray(prior is not None)

        res, draws, lp, log_weight, mean_loss, analytic = rt.call(
            "gvi", program, rng_key, tuple(rt.arrays), phases=[("steps", self.num_steps)], desc="GeneralizedVI"
        )
        n_run = int(res.num_steps_run)
        trace = np.asarray(res.trace)[:n_run]
        approx = guide.approximation(res.params)._replace(trace=trace, trace_name="gvi")
        status, messages = VIConfig._status(vi, trace, OBJECTIVE, window, bool(res.stopped_early), res.params, lp)
        s = self.num_particles
        info = {
            "messages": messages,
            "grad_evals": 0 if self.estimator == "score" else n_run * s,
            "logdensity_evals": n_run * s,
            "objective": "gvi",
            "estimator": self.estimator,
            "diff_mode": self.diff_mode,
            "kl": "analytic" if bool(analytic) else "mc",
            "guide": guide.name,
            "num_steps_run": n_run,
            "stopped_early": bool(res.stopped_early),
            "gvi_final": float(np.mean(trace[-min(window, n_run):])),
            "loss_final": float(mean_loss),  # E_q[loss] from the draws of the returned q
            "khat_log_weights": log_weight,
        }
        m = self.num_samples
        position = rt.log_density.unravel(draws[None, :m])
        stats = {"lp": lp[None, :m], "log_weight": log_weight[None, :m]}
        return RawPosterior(position, stats, approx, status, info)


register_method("generalized_vi", GeneralizedVI, "generalized VI: E_q[any loss] + w KL(q‖prior) (Gibbs posterior)")
