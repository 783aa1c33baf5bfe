"""Laplace approximations."""

from .config import Laplace
from .gaussian import DenseGaussian, laplace_log_evidence
from .mode import MAPResult, find_map

__all__ = ["DenseGaussian", "Laplace", "MAPResult", "find_map", "laplace_log_evidence"]
