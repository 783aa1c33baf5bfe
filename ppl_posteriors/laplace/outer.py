"""The likelihood's outer curvature, per datum, in the parameters of the observed distributions.

For every observed site the model gives a NumPyro distribution whose parameters z (e.g.
a Normal's ``loc`` and ``scale``, a Bernoulli's ``logits``) are functions of the
position θ. Stripping ``Independent``/``ExpandedDistribution``/``MaskedDistribution``
wrappers and broadcasting every parameter to the element shape of the data makes the
log-likelihood a sum over *data* n (the elements of the site's batch shape) of
log p(y_n | z_n), so each curvature of the likelihood is

    C = Σ_n J_nᵀ L_n L_nᵀ J_n,    J_n = ∂z_n/∂θ (C_n × D),

with an outer factor L_n (C_n × R) per datum:

* ``"ggn"``: L_n L_nᵀ = I_n(z_n), the **Fisher information of the observed
  distribution in z** (closed form for Normal, LogNormal, StudentT, Laplace, Cauchy,
  Bernoulli and Binomial (logits or probs), Categorical (logits or probs), Poisson,
  Gamma, Exponential and Beta; a Monte-Carlo estimate E[s sᵀ] from
  ``num_fisher_samples`` draws of y for any other distribution, recorded in
  ``attrs["ggn_mc_sites"]``). For a parameter in which the distribution is a natural
  exponential family (a Normal's mean with a fixed scale, logits, ...) the Fisher *is*
  the Hessian of -log p(y | z), which does not depend on y, so this is the classical
  GGN Jᵀ ∇²_z(-log p) J; for the other parameters (scales, shapes, probabilities,
  rates) that Hessian is indefinite or depends on y, and the Fisher (always PSD) is
  used. Because the Fisher is invariant to reparametrisation (I_z = Kᵀ I_η K for
  η = η(z)), the GGN equals the exact Hessian of a canonical-link GLM however the
  model parametrises the distribution (``Poisson(exp(η))``, ``Bernoulli(probs=σ(η))``).
* ``"fisher"`` (empirical Fisher): L_n = s_n, the score ∇_z log p(y_n | z_n) at the
  observed datum (R = 1), so C = Σ_n g_n g_nᵀ with g_n = ∇_θ log p(y_n | θ).
* ``"mc_fisher"``: L_n = [s_n(y⁽¹⁾) … s_n(y⁽ˢ⁾)]/√S with y⁽ˢ⁾ ~ p(y | z*) drawn from the
  model: an unbiased estimate of the expected Fisher.

A site's ``numpyro.handlers.scale`` multiplies L L ᵀ; a mask zeroes masked data.

References: Martens (2020), "New insights and perspectives on the natural gradient
method", JMLR 21; Kunstner, Balles & Hennig (2019), "Limitations of the empirical
Fisher approximation", NeurIPS; Lange, Little & Taylor (1989), JASA 84 (StudentT Fisher).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import expit, polygamma
from numpyro.distributions import ExpandedDistribution, Independent, MaskedDistribution

from .._errors import ConfigError

__all__ = ["Canonical", "canonical", "fisher_information", "outer_factors", "z_map"]

_EXCLUDE = {"total_count"}  # count parameters: not differentiable parameters of the likelihood


class Canonical(NamedTuple):
    """An observed distribution with every parameter broadcast to the data's element shape.

    cls : the NumPyro class; params : {name: array elem + param event}; fields : the
    differentiable (float) parameters, sorted; sizes : their per-datum sizes; weight :
    (M,) scale x mask per datum; y : (M, *event) data; elem : element shape (M = prod).
    """

    cls: type
    params: dict
    fields: tuple
    sizes: tuple
    weight: jax.Array
    y: jax.Array
    elem: tuple


def canonical(d, y, scale, site: str) -> Canonical:
    """Strip wrappers of the observed distribution ``d`` of ``site`` and broadcast its parameters."""
    mask = None
    while True:
        if isinstance(d, Independent | ExpandedDistribution):
            d = d.base_dist
        elif isinstance(d, MaskedDistribution):
            m = d._mask
            mask = m if mask is None else mask & m
            d = d.base_dist
        else:
            break
    cls = type(d)
    y = jnp.asarray(y)
    elem = tuple(y.shape[: y.ndim - len(d.event_shape)])
    params = {}
    for k, c in cls.arg_constraints.items():
        v = getattr(d, k, None)
        if v is None or k not in d.__dict__:  # a lazily derived alternative (probs of a logits dist)
            continue
        v = jnp.asarray(v)
        ev = v.shape[v.ndim - c.event_dim :] if c.event_dim else ()
        params[k] = jnp.broadcast_to(v, elem + tuple(ev))
    if not params:
        raise ConfigError(f"observed site {site!r}: cannot read the parameters of {cls.__name__}")
    fields = tuple(sorted(k for k, v in params.items() if k not in _EXCLUDE and jnp.issubdtype(v.dtype, jnp.floating)))
    sizes = tuple(int(params[k][(0,) * len(elem)].size) if elem else int(params[k].size) for k in fields)
    m = math.prod(elem)
    w = jnp.ones(elem, y.dtype if jnp.issubdtype(y.dtype, jnp.floating) else jnp.result_type(float))
    if mask is not None:
        w = w * jnp.broadcast_to(jnp.asarray(mask), elem)
    if scale is not None:
        w = w * scale
    return Canonical(cls, params, fields, sizes, w.reshape(m), y, elem)


def _rebuild(c: Canonical, zparams: dict):
    return c.cls(**{**c.params, **zparams})


def _flatten(c: Canonical, zparams: dict) -> jax.Array:
    """{field: elem + ev} -> (M, C)."""
    m = c.weight.shape[0]
    return jnp.concatenate([zparams[k].reshape(m, -1) for k in c.fields], axis=1)


def _unflatten(c: Canonical, z: jax.Array) -> dict:
    out, i = {}, 0
    for k, n in zip(c.fields, c.sizes, strict=True):
        out[k] = z[..., i : i + n].reshape(z.shape[:-2] + c.params[k].shape)
        i += n
    return out


def z_map(split):
    """position -> {observed site: Z (M_s, C_s)}: the differentiable parameters of every
    observed distribution, one row per datum (the map whose Jacobian is J)."""

    def fn(position):
        dists = split.observed_dists(position)
        out = {}
        for name, d in dists.items():
            c = canonical(d, split.observed[name], split.scales[name], name)
            if c.fields:
                out[name] = _flatten(c, {k: c.params[k] for k in c.fields})
        return out

    return fn


def _block(mats: dict, fields, sizes, m):
    """Assemble (M, C, C) from {(field_i, field_j): (M, c_i, c_j) or (M,)} blocks (missing = 0)."""
    rows = []
    for fi, ci in zip(fields, sizes, strict=True):
        row = []
        for fj, cj in zip(fields, sizes, strict=True):
            b = mats.get((fi, fj), mats.get((fj, fi)))
            if b is None:
                row.append(jnp.zeros((m, ci, cj)))
            else:
                b = b.reshape(m, ci, cj) if (fi, fj) in mats else jnp.swapaxes(b.reshape(m, cj, ci), -1, -2)
                row.append(b)
        rows.append(jnp.concatenate(row, axis=2))
    return jnp.concatenate(rows, axis=1)


def _closed_form(c: Canonical):
    """{(field, field): block} of the Fisher information, or None if not known in closed form."""
    m = c.weight.shape[0]
    p = {k: v.reshape(m, -1) if v.ndim > len(c.elem) else v.reshape(m) for k, v in c.params.items()}
    cls = c.cls
    tg = lambda x: polygamma(1, x)  # noqa: E731  trigamma
    if cls in (dist.Normal, dist.LogNormal):
        s2 = p["scale"] ** 2
        return {("loc", "loc"): 1 / s2, ("scale", "scale"): 2 / s2}
    if cls is dist.Laplace:
        s2 = p["scale"] ** 2
        return {("loc", "loc"): 1 / s2, ("scale", "scale"): 1 / s2}
    if cls is dist.Cauchy:
        s2 = p["scale"] ** 2
        return {("loc", "loc"): 0.5 / s2, ("scale", "scale"): 0.5 / s2}
    if cls is dist.StudentT:  # Lange, Little & Taylor (1989), eq. (A.2)
        nu, s = p["df"], p["scale"]
        return {
            ("loc", "loc"): (nu + 1) / ((nu + 3) * s**2),
            ("scale", "scale"): 2 * nu / ((nu + 3) * s**2),
            ("df", "scale"): -2 / ((nu + 3) * (nu + 1) * s),
            ("df", "df"): 0.25 * (tg(nu / 2) - tg((nu + 1) / 2)) - (nu + 5) / (2 * nu * (nu + 1) * (nu + 3)),
        }
    if cls is dist.BernoulliLogits:
        q = expit(p["logits"])
        return {("logits", "logits"): q * (1 - q)}
    if cls is dist.BernoulliProbs:
        q = p["probs"]
        return {("probs", "probs"): 1 / (q * (1 - q))}
    if cls is dist.BinomialLogits:
        q = expit(p["logits"])
        return {("logits", "logits"): p["total_count"] * q * (1 - q)}
    if cls is dist.BinomialProbs:
        q = p["probs"]
        return {("probs", "probs"): p["total_count"] / (q * (1 - q))}
    if cls is dist.CategoricalLogits:
        q = jax.nn.softmax(p["logits"], -1)
        return {("logits", "logits"): jax.vmap(jnp.diag)(q) - q[:, :, None] * q[:, None, :]}
    if cls is dist.CategoricalProbs:
        return {("probs", "probs"): jax.vmap(jnp.diag)(1 / p["probs"])}
    if cls is dist.Poisson:
        return {("rate", "rate"): 1 / p["rate"]}
    if cls is dist.Exponential:
        return {("rate", "rate"): 1 / p["rate"] ** 2}
    if cls is dist.Gamma:
        a, b = p["concentration"], p["rate"]
        return {("concentration", "concentration"): tg(a), ("concentration", "rate"): -1 / b, ("rate", "rate"): a / b**2}
    if cls is dist.Beta:
        a, b = p["concentration1"], p["concentration0"]
        ab = tg(a + b)
        return {
            ("concentration1", "concentration1"): tg(a) - ab,
            ("concentration1", "concentration0"): -ab,
            ("concentration0", "concentration0"): tg(b) - ab,
        }
    return None


def _scores(c: Canonical, y) -> jax.Array:
    """∇_z log p(y_n | z_n) for data y (..., *c.y.shape) -> (..., M, C)."""

    def one(yy):
        zp = {k: c.params[k] for k in c.fields}
        g = jax.grad(lambda zp: jnp.sum(_rebuild(c, zp).log_prob(yy)))(zp)
        return _flatten(c, g)

    return jax.vmap(one)(y) if y.ndim > c.y.ndim else one(y)


def fisher_information(c: Canonical, rng_key, num_samples: int):
    """(M, C, C) Fisher information per datum, and whether it is a Monte-Carlo estimate."""
    blocks = _closed_form(c)
    m = c.weight.shape[0]
    if blocks is not None:
        keep = {k: v for k, v in blocks.items() if k[0] in c.fields and k[1] in c.fields}
        return _block(keep, c.fields, c.sizes, m), False
    d = _rebuild(c, {})
    ys = jax.lax.stop_gradient(d.sample(rng_key, (num_samples,)))
    s = _scores(c, ys)  # (S, M, C)
    return jnp.einsum("smc,smd->mcd", s, s) / num_samples, True


def _eigh_factor(f):
    lam, q = jnp.linalg.eigh(0.5 * (f + jnp.swapaxes(f, -1, -2)))
    return q * jnp.sqrt(jnp.clip(lam, 0.0))[:, None, :]


def _fisher_factor(c: Canonical, f: jax.Array, is_mc: bool) -> jax.Array:
    """L (M, C, C) with L Lᵀ = f (M, C, C), without LAPACK where a closed form exists.

    * one parameter per datum (C = 1): L = sqrt(f);
    * ``CategoricalLogits``: f = diag(p) - ppᵀ = L Lᵀ with L = diag(√p) - p √pᵀ (the
      factor BackPACK uses; Dangel, Kunstner & Hennig 2020), since √pᵀ√p = 1;
    * f diagonal (checked at run time, an unbatched branch): L = diag(√f_cc);
    * otherwise (cross terms: StudentT's df-scale, Gamma, Beta, Monte-Carlo Fisher) the
      eigendecomposition f = Q Λ Qᵀ, L = Q Λ^½.

    Batched LAPACK ``eigh`` calls can deadlock XLA:CPU's intra-op pool on small machines,
    so the common likelihoods avoid them."""
    m, k = f.shape[0], f.shape[-1]
    if k == 1:
        return jnp.sqrt(jnp.clip(f, 0.0))
    if c.cls is dist.CategoricalLogits and not is_mc:
        p = jax.nn.softmax(c.params["logits"].reshape(m, k), -1)
        sp = jnp.sqrt(p)
        return jax.vmap(jnp.diag)(sp) - p[:, :, None] * sp[:, None, :]
    eye = jnp.eye(k, dtype=f.dtype)
    diagonal = jnp.all(f * (1 - eye) == 0)
    return jax.lax.cond(diagonal, lambda f: eye * jnp.sqrt(jnp.clip(jnp.diagonal(f, 0, -2, -1), 0.0))[:, None, :],
                        _eigh_factor, f)


def outer_factors(split, position, curvature: str, rng_key, num_samples: int):
    """{observed site: L (M, C, R)} at ``position`` (held fixed: no gradient flows), and the
    sites whose GGN outer matrix is a Monte-Carlo Fisher estimate."""
    dists = split.observed_dists(jax.lax.stop_gradient(position))
    out, mc = {}, []
    for i, (name, d) in enumerate(sorted(dists.items())):
        c = canonical(d, split.observed[name], split.scales[name], name)
        if not c.fields:
            continue
        key = jax.random.fold_in(rng_key, i)
        if curvature == "ggn":
            f, is_mc = fisher_information(c, key, num_samples)
            if is_mc:
                mc.append(name)
            L = _fisher_factor(c, f, is_mc)
        elif curvature == "fisher":
            L = _scores(c, c.y)[:, :, None]
        elif curvature == "mc_fisher":
            ys = _rebuild(c, {}).sample(key, (num_samples,))
            L = jnp.moveaxis(_scores(c, ys), 0, -1) / jnp.sqrt(num_samples)
        else:
            raise ConfigError(f"curvature {curvature!r} has no outer factor")
        out[name] = jax.lax.stop_gradient(L * jnp.sqrt(c.weight)[:, None, None])
    return out, mc
