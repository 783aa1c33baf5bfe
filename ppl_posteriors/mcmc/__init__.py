"""MCMC: thin adapters over BlackJAX kernels, one chain loop, one adaptation axis."""

from .adaptation import Adaptation, fixed_parameters, tuned_before_loop, window_adaptation
from .barker import Barker
from .base import STATS_NAMES, Sampler, WindowAdapted
from .chees import ChEESHMC
from .elliptical_slice import EllipticalSlice
from .hmc import HMC
from .loop import ChainsResult, run_chains
from .mala import MALA
from .mclmc import MCLMC, AdjustedMCLMC
from .nuts import NUTS
from .rmh import RMH
from .sgmcmc import BAOAB, SGHMC, SGLD, SGNHT, SGMCMCSampler
from .slice import Slice
from .smc import SMC

__all__ = [
    "HMC",
    "SGLD",
    "SGHMC",
    "SGNHT",
    "BAOAB",
    "SGMCMCSampler",
    "SMC",
    "Slice",
    "ChEESHMC",
    "EllipticalSlice",
    "MCLMC",
    "AdjustedMCLMC",
    "MALA",
    "RMH",
    "Barker",
    "NUTS",
    "STATS_NAMES",
    "Adaptation",
    "ChainsResult",
    "Sampler",
    "WindowAdapted",
    "fixed_parameters",
    "run_chains",
    "tuned_before_loop",
    "window_adaptation",
]
