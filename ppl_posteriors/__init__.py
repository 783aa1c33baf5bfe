"""ppl_posteriors: Bayesian inference for NumPyro models, returning ArviZ InferenceData.

>>> import ppl_posteriors as pp
>>> idata = pp.infer(model, x, y=y, method="nuts", rng_key=jax.random.key(0))
"""

# first: reads PPL_POSTERIORS_HOST_DEVICES before anything starts JAX's backend
from ._host import set_host_device_count  # noqa: I001
from . import datasets, examples, linalg
from ._errors import ConfigError, ModelError, NumericalError, NumericalWarning, Status
from .api import infer, log_density
from .density import LogDensity, ModelSplit
from .laplace import Laplace, optimize_prior
from .map import find_map
from .mcmc import (
    BAOAB,
    HMC,
    MALA,
    MCLMC,
    NUTS,
    RMH,
    SGHMC,
    SGLD,
    SGNHT,
    SMC,
    AdjustedMCLMC,
    Barker,
    ChEESHMC,
    EllipticalSlice,
    Slice,
)
from .model import Site, SiteKind, model
from .model.args import static
from .registry import MethodConfig, methods, register_method
from .results import RawPosterior, sample_approximation
from .runtime import Batches, cache_info, clear_cache, make_mesh, set_compilation_cache
from .vi import FlowVI, FullRankVI, GeneralizedVI, LowRankVI, MeanFieldVI, NumPyroGuideVI

__version__ = "0.1.0"

__all__ = [
    "Batches",
    "NUTS",
    "AdjustedMCLMC",
    "Barker",
    "ChEESHMC",
    "EllipticalSlice",
    "HMC",
    "MALA",
    "MCLMC",
    "RMH",
    "SMC",
    "SGLD",
    "SGHMC",
    "SGNHT",
    "BAOAB",
    "Slice",
    "ConfigError",
    "Laplace",
    "LogDensity",
    "MeanFieldVI",
    "FullRankVI",
    "LowRankVI",
    "FlowVI",
    "GeneralizedVI",
    "NumPyroGuideVI",
    "find_map",
    "MethodConfig",
    "ModelError",
    "ModelSplit",
    "NumericalError",
    "NumericalWarning",
    "RawPosterior",
    "Site",
    "SiteKind",
    "Status",
    "infer",
    "log_density",
    "optimize_prior",
    "methods",
    "model",
    "register_method",
    "set_host_device_count",
    "datasets",
    "examples",
    "linalg",
    "sample_approximation",
    "cache_info",
    "clear_cache",
    "make_mesh",
    "set_compilation_cache",
    "static",
]
