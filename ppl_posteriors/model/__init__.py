"""Tracing NumPyro models into typed sites."""

from .decorator import ModelMeta, model, model_meta
from .sites import Site, SiteKind
from .trace import ModelTrace, trace_model

__all__ = ["ModelMeta", "ModelTrace", "Site", "SiteKind", "model", "model_meta", "trace_model"]
