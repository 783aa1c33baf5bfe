"""Predictives of a Laplace approximation (``Laplace(predictive=(...))``).

* ``"glm"``: the linearised (GLM) predictive of every observed site's distribution
  parameters z: z(θ) ≈ z(θ*) + J (θ − θ*), so z ~ N(z(θ*), J Σ Jᵀ); the mean and the
  per-element variance diag(J Σ Jᵀ) by :func:`ppl_posteriors.linalg.linearized_forward`
  (one VJP per output, Σ applied by the structure: Cholesky, 1/a, Woodbury or K-FAC).
* ``"probit"``: for Bernoulli / Categorical sites with logits, the probit approximation
  of E[σ(f)], f ~ N(μ, v): σ(μ / sqrt(1 + π v / 8)) (softmax per class for
  Categorical, with each logit's marginal variance).
* ``"mc"``: y drawn from the model's observed distributions at each posterior draw.

Output: ``{"glm": {"site.param": {"mean": S, "var": S}}, "probit": {site: probs},
"mc": {site: (1, draws, *y.shape)}}`` with S the parameter's shape broadcast to the data.

References: MacKay (1992), Neural Comput. 4; Immer, Korzepa & Bauer (2021), "Improving
predictions of Bayesian neural nets via local linearization", AISTATS; Spiegelhalter &
Lauritzen (1990) and Lu et al. (2020) for the (multi-class) probit approximation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from ..linalg import linearized_forward
from .outer import canonical

__all__ = ["predictives"]


def _glm(cfg, ld, approx):
    index = approx.index
    cov, precision = approx.cov_spec()

    def params(x):
        pos = ld.unravel(approx.mean.at[index].set(x))
        out = {}
        for name, d in ld.split.observed_dists(pos).items():
            c = canonical(d, ld.split.observed[name], None, name)
            for k in c.fields:
                out[f"{name}.{k}"] = c.params[k]
        return out

    x0 = approx.mean[index]
    res = {}
    for key in params(x0):
        lf = linearized_forward(lambda x, key=key: params(x)[key], x0, cov, diagonal=True,
                                precision=precision, batch_size=cfg.batch_size)
        res[key] = {"mean": lf.mean, "var": lf.cov}
    return res


def _probit(ld, glm):
    out = {}
    for name, d in ld.split.observed_dists(ld.init_position).items():
        c = canonical(d, ld.split.observed[name], None, name)
        g = glm.get(f"{name}.logits")
        if g is None:
            continue
        f = g["mean"] / jnp.sqrt(1 + math.pi * g["var"] / 8)
        if c.cls is dist.BernoulliLogits:
            out[name] = jax.nn.sigmoid(f)
        elif c.cls is dist.CategoricalLogits:
            out[name] = jax.nn.softmax(f, -1)
    return out


def _mc(ld, draws, key):
    def one(x, k):
        return {n: d.sample(k) for n, d in ld.split.observed_dists(ld.unravel(x)).items()}

    keys = jax.random.split(key, draws.shape[0])
    return jax.tree.map(lambda v: v[None], jax.vmap(one)(draws, keys))


def predictives(rt, cfg, approx, draws, key) -> dict:
    """Compute ``cfg.predictive`` (see module docstring) for a fitted approximation."""

    def program(ld, ctx, approx, draws, key):
        out = {}
        if "glm" in cfg.predictive or "probit" in cfg.predictive:
            if not hasattr(approx, "cov_spec"):  # DenseGaussian over every coordinate
                from .structures import FullGaussian

                approx = FullGaussian(approx.mean, jnp.arange(approx.mean.shape[0]), approx.precision, approx.cholesky)
            glm = _glm(cfg, ld, approx)
            if "glm" in cfg.predictive:
                out["glm"] = glm
            if "probit" in cfg.predictive:
                out["probit"] = _probit(ld, glm)
        if "mc" in cfg.predictive:
            out["mc"] = _mc(ld, draws, key)
        return out

    out = rt.call("laplace_predictive", program, approx, draws, key)
    return jax.tree.map(np.asarray, out)
