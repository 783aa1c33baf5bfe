"""Variational inference."""

from .config import MeanFieldVI
from .fit import elbo_converged, fit
from .meanfield import MeanFieldGaussian, MeanFieldParams
from .objectives import elbo

__all__ = ["MeanFieldGaussian", "MeanFieldParams", "MeanFieldVI", "elbo", "elbo_converged", "fit"]
