"""Laplace approximations: curvature (hessian, ggn, fisher, mc_fisher) x structure (full, diag,
lowrank, kron), evidence and prior calibration, predictives. See docs/laplace.md."""

from .config import Laplace
from .evidence import PriorFit, optimize_prior
from .gaussian import DenseGaussian, laplace_log_evidence
from .kfac import dense
from .mode import MAPResult, find_map
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
    "dense",
    "find_map",
    "laplace_log_evidence",
    "optimize_prior",
]
