"""Results: RawPosterior and its conversion to the installed ArviZ's result type
(``arviz.InferenceData`` with ArviZ 0.23, ``xarray.DataTree`` with ArviZ >= 1)."""

from . import compat
from .approximation import load_approximation, register_approximation
from .arviz import sample_approximation, to_inference_data
from .compat import RESULT_TYPE, from_netcdf, to_netcdf
from .raw import RawPosterior

__all__ = [
    "RESULT_TYPE",
    "RawPosterior",
    "compat",
    "from_netcdf",
    "load_approximation",
    "register_approximation",
    "sample_approximation",
    "to_inference_data",
    "to_netcdf",
]
