"""Normalizing-flow guides from flowjax, and ``pp.FlowVI``.

q_φ = T_φ # N(0, I_D) followed by an affine map z = μ + s ⊙ y (μ starts at the model's
initial position, s at ``init_scale``), so the flow works on a standardised scale. The
flows are flowjax's (Ward 2023, https://github.com/danielward27/flowjax), built with
``invert=False`` so that drawing (the direction VI needs at every step) is the fast
direction; log q at a given point (score, STL and DReG estimators) runs the inverse.

Families (``flow=``) and their sources:

* ``"maf"``: masked autoregressive flow with affine transformers (Papamakarios, Pavlakou
  & Murray 2017, NeurIPS; used here in the inverse-autoregressive direction, Kingma et
  al. 2016).
* ``"rqs_coupling"`` (sbi's ``"nsf"``): rational-quadratic spline coupling flow (Durkan,
  Bekasov, Murray & Papamakarios 2019, "Neural spline flows", NeurIPS).
* ``"rqs_autoregressive"``: the autoregressive variant of the same spline flow.
* ``"bnaf"`` (sbi's ``"naf"``): block neural autoregressive flow (De Cao, Aziz & Titov
  2019, UAI), flowjax's member of the neural-autoregressive family (Huang et al. 2018).
  Drawing only: log q at a given point needs a numerical inverse, so pathwise gradients.
* ``"coupling"``: affine (RealNVP) coupling flow (Dinh, Sohl-Dickstein & Bengio 2017, ICLR).
* ``"nice"``: additive coupling flow (Dinh, Krueger & Bengio 2015, NICE).
* ``"planar"``: planar flow (Rezende & Mohamed 2015, ICML); drawing only.
* ``"gaussian"``, ``"gaussian_diag"`` (sbi's names): the full-rank and mean-field guides.

Not available (flowjax has no such family): ``"unaf"`` (unconstrained monotonic neural
networks, Wehenkel & Louppe 2019), ``"sospf"`` (sum-of-squares polynomial flow, Jaini et
al. 2019), ``"gf"`` (Gaussianization flow, Meng et al. 2020).
"""

from __future__ import annotations

import dataclasses
import json
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import paramax
from jax.flatten_util import ravel_pytree

from .._errors import ConfigError, closest
from ..registry import register_method
from ..results.approximation import register_approximation
from . import fullrank, meanfield
from .config import VIConfig, _doc
from .guide import Guide
from .meanfield import _trace_of, _with_trace

__all__ = ["FLOWS", "FlowApproximation", "FlowVI", "build_flow", "guide"]

FLOWS = ("maf", "rqs_coupling", "rqs_autoregressive", "bnaf", "coupling", "nice", "planar", "gaussian", "gaussian_diag")
SBI_NAMES = {"nsf": "rqs_coupling", "naf": "bnaf"}
UNAVAILABLE = {
    "unaf": "unconstrained monotonic neural networks (Wehenkel & Louppe 2019) are not in flowjax",
    "sospf": "sum-of-squares polynomial flows (Jaini et al. 2019) are not in flowjax",
    "gf": "Gaussianization flows (Meng et al. 2020) are not in flowjax",
}
_NO_INVERSE = ("bnaf", "planar")


def build_flow(key, spec: dict):
    """The flowjax ``Transformed`` distribution of ``spec`` (flow, dim, options) on R^dim."""
    from flowjax import bijections as fb
    from flowjax import flows as ff
    from flowjax.distributions import Normal, Transformed

    d = spec["dim"]
    base = Normal(jnp.zeros(d))
    name, layers, width, depth = spec["flow"], spec["flow_layers"], spec["nn_width"], spec["nn_depth"]
    nn = dict(flow_layers=layers, nn_width=width, nn_depth=depth, invert=False)
    spline = fb.RationalQuadraticSpline(knots=spec["knots"], interval=spec["interval"])
    k1, k2 = jax.random.split(key)
    if name == "maf":
        flow = ff.masked_autoregressive_flow(k1, base_dist=base, **nn)
    elif name == "rqs_autoregressive":
        flow = ff.masked_autoregressive_flow(k1, base_dist=base, transformer=spline, **nn)
    elif name == "rqs_coupling":
        flow = ff.coupling_flow(k1, base_dist=base, transformer=spline, **nn)
    elif name == "coupling":
        flow = ff.coupling_flow(k1, base_dist=base, **nn)
    elif name == "nice":
        flow = ff.coupling_flow(k1, base_dist=base, transformer=fb.Loc(0.0), **nn)
    elif name == "bnaf":
        flow = ff.block_neural_autoregressive_flow(
            k1, base_dist=base, nn_depth=depth, nn_block_dim=spec["nn_block_dim"], flow_layers=layers, invert=False
        )
    elif name == "planar":
        flow = ff.planar_flow(k1, base_dist=base, flow_layers=layers, invert=False)
    else:  # pragma: no cover - FlowVI validates the name
        raise ConfigError(f"unknown flow {name!r}")
    if spec.get("affine") == "triangular":
        affine = fb.TriangularAffine(jnp.zeros(d), jnp.eye(d))
    else:
        affine = fb.Affine(jnp.zeros(d), jnp.ones(d))
    return Transformed(base, fb.Chain([flow.bijection, affine]))


def _set_affine(flow, loc, scale):
    """The flow with its last (affine) layer set to z = loc + scale · y: ``scale`` (D,) or,
    for a triangular affine layer, a lower-triangular (D, D) or (D,) (diagonal)."""
    from flowjax import bijections as fb

    if isinstance(flow.bijection.bijections[-1], fb.TriangularAffine):
        affine = fb.TriangularAffine(loc, scale if scale.ndim == 2 else jnp.diag(scale))
    else:
        affine = fb.Affine(loc, scale)
    return eqx.tree_at(lambda f: f.bijection.bijections[-1], flow, affine)


def guide(spec: dict, init_scale: float = 0.1) -> Guide:
    """A flowjax flow as a :class:`~ppl_posteriors.vi.guide.Guide` (parameters: the flow's
    float arrays; its structure is fixed by ``spec``)."""
    _, static = eqx.partition(build_flow(jax.random.key(0), spec), eqx.is_inexact_array)

    def dist(params):
        return paramax.unwrap(eqx.combine(params, static))

    def init(key, loc):
        flow = _set_affine(build_flow(key, spec), loc, jnp.full_like(loc, init_scale))
        return eqx.filter(flow, eqx.is_inexact_array)

    def sample_and_log_prob(key, params, n):
        return dist(params).sample_and_log_prob(key, (n,))

    def log_prob(params, z):
        return dist(params).log_prob(z)

    def approximation(params):
        flat, _ = ravel_pytree(params)
        return FlowApproximation(flat, json.dumps(spec, sort_keys=True))

    def from_approximation(a):
        if not isinstance(a, FlowApproximation) or json.loads(a.spec) != json.loads(json.dumps(spec)):
            return None
        _, unravel = ravel_pytree(eqx.filter(build_flow(jax.random.key(0), spec), eqx.is_inexact_array))
        return unravel(jnp.asarray(a.flow_params))

    def init_laplace(key, mode, h):
        # the standardising affine layer at the mode with the Laplace marginal sds sqrt(diag H⁻¹),
        # or (affine="triangular") with L = chol(H⁻¹): the flow starts at the Laplace approximation
        cov = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), jnp.eye(h.shape[0], dtype=h.dtype))
        tri = spec.get("affine") == "triangular"
        scale = jnp.linalg.cholesky(0.5 * (cov + cov.T)) if tri else jnp.sqrt(jnp.diag(cov))
        flow = _set_affine(build_flow(key, spec), mode, scale)
        return eqx.filter(flow, eqx.is_inexact_array)

    has_inverse = spec["flow"] not in _NO_INVERSE
    return Guide(f"flow:{spec['flow']}", init, sample_and_log_prob, log_prob if has_inverse else None,
                 None, approximation, from_approximation=from_approximation, init_laplace=init_laplace)


@register_approximation
class FlowApproximation(NamedTuple):
    """Fitted flow: its float parameters flattened (P,), the JSON ``spec`` that rebuilds
    its structure (flow family, D, layers, widths), and optionally the objective trace."""

    flow_params: jax.Array
    spec: str
    trace: jax.Array | None = None
    trace_name: str = "elbo"

    kind = "flowjax_flow"

    def _dist(self):
        spec = json.loads(self.spec)
        params, static = eqx.partition(build_flow(jax.random.key(0), spec), eqx.is_inexact_array)
        _, unravel = ravel_pytree(params)
        return paramax.unwrap(eqx.combine(unravel(jnp.asarray(self.flow_params)), static))

    def sample_flat(self, rng_key, num_samples: int) -> jax.Array:
        return self._dist().sample(rng_key, (num_samples,))

    def log_prob(self, z) -> jax.Array:
        return self._dist().log_prob(z)

    def to_arrays(self):
        out = {"flow_params": (("flow_param",), self.flow_params), "spec": ((), np.array(self.spec))}
        return _with_trace(out, self)

    @classmethod
    def from_arrays(cls, arrays) -> FlowApproximation:
        return cls(jnp.asarray(arrays["flow_params"]), str(np.asarray(arrays["spec"])), *_trace_of(arrays))


def resolve_flow(name: str) -> str:
    """Our flow name for ``name`` (ours or sbi's); ConfigError naming why if unavailable."""
    if name in UNAVAILABLE:
        raise ConfigError(f"FlowVI(flow={name!r}) is not available: {UNAVAILABLE[name]}; available: {', '.join(FLOWS)}")
    canon = SBI_NAMES.get(name, name)
    if canon not in FLOWS:
        raise ConfigError(f"FlowVI(flow={name!r}) is unknown; {closest(str(name), list(FLOWS) + list(SBI_NAMES))}")
    return canon


@_doc
@dataclasses.dataclass(frozen=True)
class FlowVI(VIConfig):
    """Variational inference with a normalizing-flow guide (flowjax) on the unconstrained space.

    Parameters
    ----------
    flow : str, default "maf"
        "maf", "rqs_coupling" (sbi "nsf"), "rqs_autoregressive", "bnaf" (sbi "naf"),
        "coupling", "nice", "planar", "gaussian", "gaussian_diag". sbi's "unaf", "sospf"
        and "gf" raise ConfigError (flowjax has no such family). See ``pp.vi.flows``.
    flow_layers : int, default 4
        Number of flow layers.
    nn_width, nn_depth : int, default 32, 1
        Width and hidden layers of the conditioner networks (nn_depth: BNAF's depth too).
    knots : int, default 8
        Spline knots (rqs flows).
    interval : float, default 4.0
        Splines act on [-interval, interval] (standardised units) and are the identity outside.
    nn_block_dim : int, default 8
        Block size of BNAF.
    affine : str, default "diagonal"
        The last layer z = μ + S y: "diagonal" S (per-coordinate scales) or "triangular"
        (lower-triangular S, O(D²): the flow then contains every full-rank Gaussian; with
        ``init="laplace"`` it starts at the Laplace approximation, S = chol(H⁻¹)).
    {common}

    Raises
    ------
    ConfigError
        Unknown or unavailable flow, invalid option values, or an estimator that needs
        log q at a given point with a flow that has no analytic inverse ("bnaf", "planar").
    """

    flow: str = "maf"
    flow_layers: int = 4
    nn_width: int = 32
    nn_depth: int = 1
    knots: int = 8
    interval: float = 4.0
    nn_block_dim: int = 8
    affine: str = "diagonal"

    def __post_init__(self):
        resolve_flow(self.flow)
        self._choice("affine", ("diagonal", "triangular"))
        self._positive_int("flow_layers", "nn_width", "nn_depth", "knots", "nn_block_dim")
        self._require(self.interval > 0, "interval", "must be > 0")
        super().__post_init__()

    def guide_info(self):
        name = resolve_flow(self.flow)
        return f"flow {name!r}", name not in _NO_INVERSE

    def default_learning_rate(self):
        return 1e-2 if resolve_flow(self.flow).startswith("gaussian") else 1e-3

    def make_guide(self, dim: int) -> Guide:
        name = resolve_flow(self.flow)
        if name == "gaussian":
            return fullrank.guide(self.init_scale)
        if name == "gaussian_diag":
            return meanfield.guide(self.init_scale)
        if dim < 2 and name in ("rqs_coupling", "coupling", "nice"):
            raise ConfigError(f"FlowVI(flow={self.flow!r}): a coupling flow needs at least 2 dimensions; "
                              "this model has 1; use flow='maf' or 'rqs_autoregressive'")
        spec = {"flow": name, "dim": int(dim), "flow_layers": self.flow_layers, "nn_width": self.nn_width,
                "nn_depth": self.nn_depth, "knots": self.knots, "interval": float(self.interval),
                "nn_block_dim": self.nn_block_dim}
        if self.affine == "triangular":  # only then: specs stored before the option stay valid
            spec["affine"] = "triangular"
        return guide(spec, self.init_scale)


register_method("flow_vi", FlowVI, "normalizing-flow VI (flowjax MAF, spline, BNAF, coupling flows)")
