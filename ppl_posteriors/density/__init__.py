"""Log densities of NumPyro models on the unconstrained space."""

from .init import initial_positions
from .log_density import LogDensity, ModelSplit, build_log_density, log_density

__all__ = ["LogDensity", "ModelSplit", "build_log_density", "initial_positions", "log_density"]
