"""Log densities of NumPyro models on the unconstrained space."""

from .init import initial_positions
from .log_density import LogDensity, ModelSplit
from .template import ModelTemplate, build_log_density, clear_templates, log_density, model_template

__all__ = [
    "LogDensity",
    "ModelSplit",
    "ModelTemplate",
    "build_log_density",
    "clear_templates",
    "initial_positions",
    "log_density",
    "model_template",
]
