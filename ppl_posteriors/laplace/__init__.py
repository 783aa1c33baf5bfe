"""Laplace approximations: curvature (hessian, ggn, fisher, mc_fisher) x structure (full, diag,
lowrank, kron), evidence and prior calibration, predictives; streaming transforms
(``streaming``: diag_fisher, dense_fisher, diag_ggn, dense_ggn). See docs/laplace.md."""

from . import streaming
from .config import Laplace
from .evidence import PriorFit, optimize_prior
from .gaussian import DenseGaussian, laplace_log_evidence
from .kfac import dense
from .mode import MAPResult, find_map
from .streaming import Transform, dense_fisher, dense_ggn, diag_fisher, diag_ggn
from .structures import DiagGaussian, FullGaussian, KronGaussian, LowRankGaussian

__all__ = [
    "DenseGaussian",
    "DiagGaussian",
    "FullGaussian",
    "KronGaussian",
    "Laplace",
    "LowRankGaussian",
    "MAPResult",
    "PriorFit",
    "Transform",
    "dense",
    "dense_fisher",
    "dense_ggn",
    "diag_fisher",
    "diag_ggn",
    "find_map",
    "laplace_log_evidence",
    "optimize_prior",
    "streaming",
]
