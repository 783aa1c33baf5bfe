"""Results: RawPosterior and its conversion to ArviZ InferenceData."""

from .approximation import load_approximation, register_approximation
from .arviz import sample_approximation, to_inference_data
from .raw import RawPosterior

__all__ = [
    "RawPosterior",
    "load_approximation",
    "register_approximation",
    "sample_approximation",
    "to_inference_data",
]
