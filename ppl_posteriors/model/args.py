"""The model's arguments split into jit arguments (arrays) and static values.

``pp.infer(model, *args, **kwargs)`` flattens ``(args, kwargs)`` as a JAX pytree
(tuples, lists, dicts and NamedTuples are containers). Each leaf is then

* **an array argument** -- a ``numpy.ndarray``, a ``jax.Array`` or a NumPy scalar
  (``np.float64(1.0)``): it becomes an argument of the compiled program, so new
  values of the same shape and dtype reuse the compiled code;
* **a static argument** -- anything else that is hashable: Python ``int``,
  ``float``, ``bool``, ``str``, ``None``, functions, lists of Python numbers (a list
  is a container of static leaves), and values wrapped in :func:`static`. Static
  values are baked into the program and are part of its cache key: a new value
  compiles again.

A leaf that is neither (a ``pandas.DataFrame``, a ``set``, an object without a hash)
raises :class:`~ppl_posteriors.ConfigError` naming the argument.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from .._errors import ConfigError

__all__ = ["ArgSpec", "merge_args", "split_args", "static"]


class static:  # noqa: N801 - used like a function: pp.static(x)
    """Mark a model argument as static: the model sees the plain value, not a tracer.

    Use it for an array the model turns into Python values (``int(x.max())``,
    ``np.unique(x)``, a shape). The value is part of the compile-cache key (arrays
    are hashed by their bytes), so a new value compiles again.

    Examples
    --------
    >>> pp.infer(model, pp.static(group_index), y=y, method="nuts")
    """

    __slots__ = ("value", "_key")

    def __init__(self, value):
        self.value = value
        if isinstance(value, (np.ndarray, jax.Array, np.generic)):
            arr = np.asarray(value)
            self._key = ("array", arr.shape, arr.dtype.str, arr.tobytes())
        else:
            try:
                hash(value)
            except TypeError as e:
                raise ConfigError(
                    f"pp.static({type(value).__name__}) needs a hashable value or an array"
                ) from e
            self._key = ("value", value)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, static) and self._key == other._key

    def __repr__(self):
        return f"pp.static({self.value!r})"


def _is_array(x) -> bool:
    return isinstance(x, (np.ndarray, jax.Array, np.generic))


class ArgSpec(NamedTuple):
    """Hashable description of ``(args, kwargs)``: tree structure, static leaves, and
    the shape and dtype of every array leaf (so equal specs mean one compiled program)."""

    treedef: Any
    static_leaves: tuple  # (leaf index, value)
    array_leaves: tuple  # (leaf index, shape, dtype string)
    names: tuple  # printable path of every array leaf, e.g. "args[0]", "kwargs['y']"


def _path_name(path) -> str:
    text = jax.tree_util.keystr(path)  # "[0][0]" / "[1]['y']"
    if text.startswith("[0]"):
        return "args" + text[3:]
    if text.startswith("[1]"):
        return "kwargs" + text[3:]
    return text


def split_args(args: tuple, kwargs: dict) -> tuple[tuple, ArgSpec]:
    """``(args, kwargs)`` -> (array leaves as ``jax.Array``, :class:`ArgSpec`).

    Raises
    ------
    ConfigError
        A leaf that is neither an array nor hashable, naming it (``kwargs['df']``).
    """
    pairs, treedef = jax.tree_util.tree_flatten_with_path((tuple(args), dict(kwargs)))
    arrays, static_leaves, array_leaves, names = [], [], [], []
    for i, (path, leaf) in enumerate(pairs):
        if _is_array(leaf):
            a = jax.numpy.asarray(leaf)
            arrays.append(a)
            array_leaves.append((i, a.shape, a.dtype.str))
            names.append(_path_name(path))
            continue
        try:
            hash(leaf)
        except TypeError:
            raise ConfigError(
                f"model argument {_path_name(path)} is a {type(leaf).__name__}, which is neither "
                "an array nor hashable, so it can be neither a jit argument nor part of the "
                "compile-cache key. Pass arrays (e.g. df.to_numpy() or one array per column), "
                "or wrap a value the model needs as a Python object in pp.static(...)."
            ) from None
        static_leaves.append((i, leaf))
    spec = ArgSpec(treedef, tuple(static_leaves), tuple(array_leaves), tuple(names))
    return tuple(arrays), spec


def merge_args(spec: ArgSpec, arrays) -> tuple[tuple, dict]:
    """Inverse of :func:`split_args`: the model's ``(args, kwargs)`` with ``arrays`` in
    place (tracers inside a jitted program), :func:`static` wrappers removed."""
    leaves: list[Any] = [None] * (len(spec.static_leaves) + len(spec.array_leaves))
    for i, v in spec.static_leaves:
        leaves[i] = v.value if isinstance(v, static) else v
    for (i, _, _), a in zip(spec.array_leaves, arrays, strict=True):
        leaves[i] = a
    args, kwargs = jax.tree_util.tree_unflatten(spec.treedef, leaves)
    return tuple(args), dict(kwargs)
