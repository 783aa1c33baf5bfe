"""The runtime: compile once per (model, config, static arguments, shapes), data as jit
arguments, the persistent compilation cache, minibatches and the device mesh."""

from .batches import Batches
from .cache import ProgramContext, Runtime, cache_info, clear_cache, set_compilation_cache
from .mesh import make_mesh

__all__ = ["Batches", "ProgramContext", "Runtime", "cache_info", "clear_cache", "make_mesh", "set_compilation_cache"]
