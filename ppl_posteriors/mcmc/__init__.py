"""MCMC: thin adapters over BlackJAX kernels."""

from .adaptation import WindowAdaptation, window_adaptation
from .loop import ChainsResult, run_chains
from .nuts import NUTS

__all__ = ["NUTS", "ChainsResult", "WindowAdaptation", "run_chains", "window_adaptation"]
