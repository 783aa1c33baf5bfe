"""Any NumPyro guide as a :class:`~ppl_posteriors.vi.guide.Guide`, and ``pp.NumPyroGuideVI``.

``guide=`` is a NumPyro ``AutoGuide`` class (``AutoNormal``, ``AutoMultivariateNormal``,
``AutoLowRankMultivariateNormal``, ``AutoIAFNormal``, ``AutoBNAFNormal``, ...), built
on the model as ``cls(model, **guide_kwargs)``, or a user guide function with the
model's signature that declares its parameters with ``numpyro.param`` and samples
every latent site of the model (as for ``numpyro.infer.SVI``).

The guide's ``numpyro.param`` sites become the VI parameters φ, on their unconstrained
space (``biject_to(constraint).inv``), so any optax optimiser applies. One draw runs
the guide with φ substituted (``numpyro.infer.util.log_density``, which also uses the
intermediates of flows), giving the constrained latent values x and
log q(x) = Σ_{guide sample sites} log_prob; the draw on our flat unconstrained space is
z = (biject_to(support_s).inv(x_s))_s and

    log q(z) = log q(x) + Σ_s log |det ∂x_s/∂z_s|,

so log p(z) - log q(z) is the same importance weight as on the constrained space.
Draws are reparametrised wherever the guide's distributions are, so every objective
runs with pathwise gradients; a NumPyro guide cannot evaluate log q at a given point,
so the score, STL and DReG estimators raise ``ConfigError``.

Reference: Bingham et al. (2019), "Pyro: deep universal probabilistic programming",
JMLR 20(28); Phan, Pradhan & Jankowiak (2019), NumPyro (arXiv:1912.11554).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import ConfigError, ModelError
from ..model.sites import SiteKind
from ..registry import register_method
from ..results.approximation import register_approximation
from .config import VIConfig, _doc
from .guide import Guide

__all__ = ["NumPyroGuideApproximation", "NumPyroGuideVI", "check_guide", "guide"]

_CONSTRAINTS: dict = {}


def _is_autoguide_class(g) -> bool:
    from numpyro.infer.autoguide import AutoGuide

    return isinstance(g, type) and issubclass(g, AutoGuide)


def check_guide(owner: str, g, guide_kwargs) -> None:
    """ConfigError unless ``g`` is an AutoGuide class or a guide function."""
    from numpyro.infer.autoguide import AutoGuide

    if isinstance(g, AutoGuide):
        raise ConfigError(
            f"{owner}(guide={type(g).__name__}(...)): pass the AutoGuide class (guide={type(g).__name__}, "
            "guide_kwargs={...}); it is built on the model inside the compiled program"
        )
    if not callable(g) or isinstance(g, str):
        raise ConfigError(f"{owner}(guide={g!r}): expected a NumPyro AutoGuide class or a guide function")
    if guide_kwargs and not _is_autoguide_class(g):
        raise ConfigError(f"{owner}(guide_kwargs=...): only for an AutoGuide class; a guide function takes none")


def guide(guide_fn, guide_kwargs: tuple, ld, model_args) -> Guide:
    """The NumPyro guide ``guide_fn`` (AutoGuide class or function) as a Guide.

    ``model_args = (model, args, kwargs)`` (the arrays traced inside a program); ``ld``
    gives the latent sites' supports and the flat layout. See the module docstring.
    """
    from numpyro import handlers
    from numpyro.distributions.constraints import real
    from numpyro.distributions.transforms import biject_to
    from numpyro.infer.util import log_density

    model, args, kwargs = model_args
    g = guide_fn(model, **dict(guide_kwargs)) if _is_autoguide_class(guide_fn) else guide_fn
    name = getattr(guide_fn, "__name__", type(guide_fn).__name__)
    supports = {s.name: s.support for s in ld.sites if s.kind is SiteKind.LATENT}
    latent = [n for n, _ in ld.layout]
    # the param sites' constraints, found when init traces the guide (inside the program)
    # and kept for the host side, which must not run the model again
    ckey = (model, guide_fn, guide_kwargs, ld.layout)

    def transform(c):
        return None if c is None or c is real else biject_to(c)

    def init(key, loc):
        tr = handlers.trace(handlers.seed(g, key)).get_trace(*args, **kwargs)
        params, found = {}, {}
        for n, site in tr.items():
            if site["type"] == "param":
                c = site["kwargs"].get("constraint")
                found[n] = c
                t = transform(c)
                params[n] = site["value"] if t is None else t.inv(site["value"])
        missing = [n for n in latent if n not in tr or tr[n]["type"] != "sample"]
        if missing:
            raise ModelError(f"the guide {name!r} does not sample the model's latent site(s) {missing}; "
                             "a guide must sample every latent site of the model")
        if not params:
            raise ModelError(f"the guide {name!r} has no numpyro.param sites: nothing to fit")
        _CONSTRAINTS[ckey] = found
        return params

    def constrain(params):
        found = _CONSTRAINTS.get(ckey, {})
        out = {}
        for n, v in params.items():
            t = transform(found.get(n))
            out[n] = v if t is None else t(v)
        return out

    def one(key, cparams):
        log_qx, tr = log_density(handlers.seed(g, key), args, kwargs, cparams)
        pos, log_det = {}, jnp.zeros((), jnp.result_type(float))
        for n in latent:
            x = tr[n]["value"]
            t = biject_to(supports[n])
            u = t.inv(x)
            log_det = log_det + jnp.sum(t.log_abs_det_jacobian(u, x))
            pos[n] = u
        return ld.ravel(pos), log_qx + log_det

    def sample_and_log_prob(key, params, n):
        cparams = constrain(params)
        return jax.vmap(lambda k: one(k, cparams))(jax.random.split(key, n))

    def approximation(params):
        cparams = constrain(params)
        leaves = jax.tree_util.tree_flatten_with_path(cparams)[0]
        names = [p[0].key if len(p) == 1 and hasattr(p[0], "key") else jax.tree_util.keystr(p) for p, _ in leaves]
        flat = jnp.concatenate([jnp.ravel(v) for _, v in leaves]) if leaves else jnp.zeros(0)
        shapes = [[n, list(np.shape(v))] for n, (_, v) in zip(names, leaves, strict=True)]
        exact = exact_moments(cparams, ld.layout)
        spec = {"guide": name, "shapes": shapes, "moments": "exact" if exact else "draws"}
        return NumPyroGuideApproximation(flat, json.dumps(spec), *(exact or (None, None)))

    return Guide(f"numpyro:{name}", init, sample_and_log_prob, None, None, approximation)


@register_approximation
class NumPyroGuideApproximation(NamedTuple):
    """Fitted NumPyro guide: its constrained parameters' leaves flattened (P,), the JSON
    ``spec`` with the guide's name and each leaf's path and shape, q's ``mean`` and
    marginal ``scale`` (sd) (D,) on the flat unconstrained space (exact for AutoNormal,
    AutoDiagonalNormal, AutoMultivariateNormal and AutoLowRankMultivariateNormal, else
    from 4000 draws of q; ``spec["moments"]`` says which), and optionally the objective
    trace. Drawing again needs the guide and the model, which a stored result
    does not hold: rebuild them and run ``numpyro.infer.Predictive(model, guide=guide,
    params=...)`` with the parameters (``params()`` gives them by leaf path)."""

    guide_params: jax.Array
    spec: str
    mean: jax.Array | None = None
    scale: jax.Array | None = None
    trace: jax.Array | None = None
    trace_name: str = "elbo"

    kind = "numpyro_guide"

    def params(self) -> dict:
        """``{param leaf path: constrained value}``: NumPyro's ``svi_result.params`` with
        nested parameters (a flow's network) flattened, keyed by ``jax.tree_util.keystr``."""
        out, i = {}, 0
        for n, shape in json.loads(self.spec)["shapes"]:
            size = int(np.prod(shape))
            out[n] = jnp.reshape(self.guide_params[i:i + size], shape)
            i += size
        return out

    def sample_flat(self, rng_key, num_samples: int):
        raise ConfigError(
            "a fitted NumPyro guide cannot be re-drawn from a stored result without its model: "
            "rebuild the guide and run numpyro.infer.Predictive(model, guide=guide, params=...) "
            "with the parameters of NumPyroGuideApproximation.params()"
        )

    def to_arrays(self):
        from .meanfield import _with_trace

        out = {"guide_params": (("guide_param",), self.guide_params), "spec": ((), np.array(self.spec))}
        if self.mean is not None:
            out["mean"] = (("param",), self.mean)
            out["scale"] = (("param",), self.scale)
        return _with_trace(out, self)

    @classmethod
    def from_arrays(cls, arrays) -> NumPyroGuideApproximation:
        from .meanfield import _trace_of

        moments = [jnp.asarray(arrays[k]) if k in arrays else None for k in ("mean", "scale")]
        return cls(jnp.asarray(arrays["guide_params"]), str(np.asarray(arrays["spec"])), *moments, *_trace_of(arrays))


def exact_moments(cparams: dict, layout) -> tuple[jax.Array, jax.Array] | None:
    """(mean, sd) (D,) of q on the flat unconstrained space from the parameters of NumPyro's
    Gaussian autoguides (their flat order is sorted by site name, as ours); None for others."""
    names = [n for n, _ in layout]

    def flat(suffix):
        return jnp.concatenate([jnp.ravel(cparams[f"{n}_auto_{suffix}"]) for n in names])

    if all(f"{n}_auto_loc" in cparams and f"{n}_auto_scale" in cparams for n in names):  # AutoNormal
        return flat("loc"), flat("scale")
    if "auto_loc" in cparams:
        loc = jnp.ravel(cparams["auto_loc"])
        if "auto_scale_tril" in cparams:  # AutoMultivariateNormal
            return loc, jnp.sqrt(jnp.sum(cparams["auto_scale_tril"] ** 2, -1))
        if "auto_cov_factor" in cparams and "auto_scale" in cparams:  # AutoLowRankMultivariateNormal
            return loc, jnp.sqrt(jnp.sum(cparams["auto_cov_factor"] ** 2, -1) + cparams["auto_scale"] ** 2)
        if "auto_scale" in cparams and jnp.shape(cparams["auto_scale"]) == loc.shape:  # AutoDiagonalNormal
            return loc, jnp.ravel(cparams["auto_scale"])
    return None


@_doc
@dataclasses.dataclass(frozen=True)
class NumPyroGuideVI(VIConfig):
    """Variational inference with any NumPyro guide, fitted by our loop and objectives.

    Parameters
    ----------
    guide : AutoGuide class or callable, default AutoNormal
        ``numpyro.infer.autoguide.AutoNormal`` (or any ``AutoGuide`` subclass), built as
        ``guide(model, **guide_kwargs)``; or a guide function with the model's
        signature (``numpyro.param`` + ``numpyro.sample`` of every latent site). Keep a
        function in a variable: a new function object each call recompiles.
    guide_kwargs : dict, optional
        Options of the AutoGuide class (``{"num_flows": 2}``); stored as sorted pairs.
    {common}

    Notes
    -----
    Every objective runs with ``estimator="pathwise"`` (the default); "score", "stl" and
    "dreg" need log q at a given point, which a NumPyro guide cannot evaluate, and
    raise ConfigError. ``init`` must stay "position" and ``init_scale`` does not apply
    (the guide's own ``init_loc_fn`` and ``init_scale`` do: pass them in ``guide_kwargs``). Batches (``pp.Batches``) are
    refused: the guide is built on the whole model. The stored approximation holds the
    guide's parameters (``NumPyroGuideApproximation.params()``), not a re-drawable q.

    Raises
    ------
    ConfigError
        ``guide`` is not an AutoGuide class or a function, an AutoGuide instance, or an
        estimator that needs log q at a given point.
    ModelError
        The guide misses a latent site of the model (at the first call).
    """

    guide: Any = None
    guide_kwargs: Any = ()

    uses_model_args = True

    def __post_init__(self):
        if isinstance(self.guide_kwargs, dict):
            object.__setattr__(self, "guide_kwargs", tuple(sorted(self.guide_kwargs.items())))
        if self.guide is None:
            from numpyro.infer.autoguide import AutoNormal

            object.__setattr__(self, "guide", AutoNormal)
        check_guide("NumPyroGuideVI", self.guide, self.guide_kwargs)
        self._require(self.init == "position", "init", "a NumPyro guide starts from its own init_loc_fn: pass "
                      "init_loc_fn=numpyro.infer.init_to_median (or another) in guide_kwargs; leave init='position'")
        super().__post_init__()

    def guide_info(self):
        return f"NumPyro guide {getattr(self.guide, '__name__', self.guide)!r}", False

    def _build_guide(self, ld, model_args) -> Guide:
        return guide(self.guide, self.guide_kwargs, ld, model_args)

    def _approximation(self, g: Guide, params, draws):
        approx = g.approximation(params)
        if approx.mean is None:  # not a Gaussian autoguide: q's moments from its draws
            approx = approx._replace(mean=jnp.mean(draws, 0), scale=jnp.std(draws, 0))
        return approx


register_method("numpyro_guide_vi", NumPyroGuideVI, "VI with any NumPyro AutoGuide or guide function (our objectives)")
