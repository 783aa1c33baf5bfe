"""``pp.EllipticalSlice``: elliptical slice sampling from BlackJAX, for Gaussian priors.

For a posterior π(z) ∝ N(z; m, Σ) L(z), each transition draws ν ~ N(m, Σ) and moves
along the ellipse z(θ) = m + (z - m) cos θ + (ν - m) sin θ, shrinking a bracket on θ
until L(z(θ)) exceeds a uniform slice level (Murray, Adams & MacKay 2010, AISTATS,
"Elliptical slice sampling"). No step size, no gradients, no tuning; only likelihood
evaluations (``n_steps``). ``blackjax.elliptical_slice``.

The prior N(m, Σ) is found from the model: the log prior of the latent sites on the
unconstrained space (``LogDensity.split.log_prior``) must be a quadratic function,
i.e. every latent site has a (multivariate) normal prior with real support whose
parameters are constants or linear-Gaussian functions of other latent sites. Then
Σ⁻¹ = -∇² log prior and m = Σ ∇ log prior(0). Each site's prior term is checked for
being quadratic at random points; the sites that are not are named in a
``ModelError``. The likelihood is ``LogDensity.split.log_likelihood``.

The Cholesky factor C of Σ (ν = m + C ε), the precision Σ⁻¹ and log |2πΣ| are computed
once, before sampling; the kernel is BlackJAX's ``elliptical_proposal`` with that
factor, where ``blackjax.elliptical_slice(cov=Σ)`` would factor Σ at every transition
of every chain: O(D³) per step, and a batched LAPACK call that jaxlib 0.10 can deadlock
on (docs/runtime.md, "Known problem").
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.base import SamplingAlgorithm
from blackjax.mcmc.elliptical_slice import elliptical_proposal
from blackjax.mcmc.elliptical_slice import init as es_init
from blackjax.util import generate_gaussian_noise

from .._errors import ModelError
from ..model.sites import SiteKind
from ..registry import register_method
from .adaptation import fixed_parameters
from .base import Sampler

__all__ = ["EllipticalSlice", "gaussian_prior"]

_CHECK_POINTS = 8
_TOL = 1e-6


def gaussian_prior(ld, ctx, key):
    """The prior N(m, Σ) of the flat unconstrained vector, and how Gaussian it is.

    Returns ``({"mean": m (D,), "chol": C (D, D) lower with C Cᵀ = Σ, "prec": Σ⁻¹ (D, D),
    "log_norm": -½ log |2πΣ|}, {site: relative deviation of its prior term from a
    quadratic}, whether the precision is positive definite)``.
    """
    prior_sites = [s.name for s in ld.sites if s.kind in (SiteKind.LATENT, SiteKind.FACTOR)]

    def terms(x):
        t = ld.site_terms(ld.unravel(x))
        return jnp.stack([t[n] for n in prior_sites])

    d = ld.dim
    x0 = jnp.zeros((d,))
    t0, g, h = terms(x0), jax.jacfwd(terms)(x0), jax.hessian(terms)(x0)  # (S,), (S, D), (S, D, D)
    prec = -h.sum(0)
    chol = jnp.linalg.cholesky(prec)
    eye = jnp.eye(d, dtype=prec.dtype)
    cov = jax.scipy.linalg.cho_solve((chol, True), eye)
    mean = cov @ g.sum(0)
    ok = jnp.all(jnp.isfinite(chol))
    # check each site term against its quadratic expansion at points spread over the prior
    sd = jnp.sqrt(jnp.where(ok, jnp.diag(cov), 1.0))
    xs = mean + sd * 3.0 * jax.random.normal(key, (_CHECK_POINTS, d), dtype=prec.dtype)
    xs = jnp.where(ok, xs, jax.random.normal(key, (_CHECK_POINTS, d), dtype=prec.dtype) * 3.0)
    exact = jax.vmap(terms)(xs)
    quad = t0 + xs @ g.T + 0.5 * jnp.einsum("kd,sde,ke->ks", xs, h, xs)
    dev = jnp.max(jnp.abs(exact - quad) / (1.0 + jnp.abs(exact)), axis=0)
    dev = jnp.where(jnp.isfinite(dev), dev, jnp.inf)
    chol_cov = jnp.linalg.cholesky(cov)
    log_norm = jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * d * jnp.log(2 * jnp.pi)  # log|Σ⁻¹|^½
    prior = {"mean": mean, "chol": chol_cov, "prec": prec, "log_norm": log_norm}
    return prior, dict(zip(prior_sites, dev, strict=True)), ok


@dataclasses.dataclass(frozen=True)
class EllipticalSlice(Sampler):
    """Elliptical slice sampling for models whose prior is Gaussian on the unconstrained space.

    Parameters
    ----------
    num_chains, num_warmup, num_samples, init_radius
        See :class:`~ppl_posteriors.mcmc.base.Sampler`; there is nothing to tune, so
        ``num_warmup`` iterations are burn-in only (default 1000).

    Raises
    ------
    ConfigError
        Invalid option values.
    ModelError
        A latent site whose prior is not Gaussian on the unconstrained space (e.g. a
        ``HalfNormal`` scale, whose log transform is not linear, or a normal whose
        scale is another latent site), or a factor site; the message names them.
    """

    display_name = "EllipticalSlice"
    uses_gradients = False

    def setup(self, rt):
        prior, dev, ok = rt.call("gaussian_prior", gaussian_prior, jax.random.key(0))
        bad = [name for name, v in dev.items() if not float(v) < _TOL]
        if bad:
            raise ModelError(
                f"elliptical slice sampling needs a Gaussian prior on the unconstrained space, but "
                f"the prior of {', '.join(map(repr, bad))} is not (a normal prior with constant "
                "parameters, or linear-Gaussian in other latent sites, is needed; a positive or "
                "bounded site is transformed non-linearly, and a factor is not a prior). Use "
                "pp.NUTS, or reparameterise with a standard-normal latent site"
            )
        if not bool(ok):
            raise ModelError(
                "elliptical slice sampling needs a proper Gaussian prior, but the prior precision of "
                "the latent sites is not positive definite (an improper or flat prior?); use pp.NUTS"
            )
        return prior

    def target(self, ld, extras):
        return ld.split.log_likelihood

    def adaptation(self, logdensity_fn, ld, extras):
        return fixed_parameters(
            lambda n: jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), extras), self.num_warmup
        )

    def build(self, logdensity_fn, tuned):
        # blackjax.elliptical_slice with the factor of Σ given rather than computed per step
        mean, chol = tuned["mean"], tuned["chol"]
        step = elliptical_proposal(
            logdensity_fn, lambda key, x: generate_gaussian_noise(key, x, mean, chol), mean
        )
        return SamplingAlgorithm(lambda x, rng_key=None: es_init(x, logdensity_fn), step)

    def stats(self, state, info, tuned):
        r = jax.flatten_util.ravel_pytree(state.position)[0] - tuned["mean"]
        log_prior = tuned["log_norm"] - 0.5 * r @ tuned["prec"] @ r
        return {"lp": state.logdensity + log_prior, "n_steps": jnp.asarray(info.subiter, jnp.int32)}

    def extra_info(self, stats, tuned):
        return {"mean_likelihood_evals": float(np.mean(stats["n_steps"]))}


register_method(
    "elliptical_slice", EllipticalSlice, "Elliptical slice sampling (BlackJAX) for models with a Gaussian prior"
)
