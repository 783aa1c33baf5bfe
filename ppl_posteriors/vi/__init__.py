"""Variational inference: guide × objective × estimator, one fit loop.

Guides: :mod:`.meanfield`, :mod:`.fullrank`, :mod:`.lowrank`, :mod:`.flows` (flowjax).
Objectives: :mod:`.objectives`. Estimators: :mod:`.estimators`. Loop: :mod:`.fit`.
Configs: :class:`MeanFieldVI`, :class:`FullRankVI`, :class:`LowRankVI`, :class:`FlowVI`,
:class:`NumPyroGuideVI` (:mod:`.numpyro_guide`), :class:`GeneralizedVI` (:mod:`.gvi`).
"""

from . import estimators, objectives
from .config import FullRankVI, LowRankVI, MeanFieldVI, VIConfig
from .estimators import surrogate
from .fit import FitResult, elbo_converged, fit
from .flows import FlowVI
from .guide import Guide
from .gvi import GeneralizedVI
from .meanfield import MeanFieldGaussian, MeanFieldParams
from .numpyro_guide import NumPyroGuideVI

__all__ = [
    "FitResult",
    "FlowVI",
    "FullRankVI",
    "GeneralizedVI",
    "Guide",
    "LowRankVI",
    "MeanFieldGaussian",
    "MeanFieldParams",
    "MeanFieldVI",
    "NumPyroGuideVI",
    "VIConfig",
    "elbo_converged",
    "estimators",
    "fit",
    "objectives",
    "surrogate",
]
