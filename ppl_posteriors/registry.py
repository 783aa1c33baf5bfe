"""Method registry and the base class of typed method configs.

A method is a frozen dataclass subclassing :class:`MethodConfig` whose ``run``
turns a :class:`~ppl_posteriors.density.LogDensity` into a
:class:`~ppl_posteriors.results.RawPosterior`. ``register_method`` gives it a
name for ``pp.infer(..., method="name")``; ``pp.methods()`` lists the names.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import inspect
import json
from typing import Any, ClassVar, NamedTuple

from ._errors import ConfigError, closest

__all__ = ["MethodConfig", "MethodSpec", "methods", "register_method", "resolve_method"]


class _ConfigMeta(abc.ABCMeta):
    """Turns unknown keyword options into a ConfigError with the closest valid names."""

    @property
    def __signature__(cls):
        # keep the dataclass signature visible to inspect / IDEs despite __call__ below
        sig = inspect.signature(cls.__init__)
        return sig.replace(parameters=list(sig.parameters.values())[1:])

    def __call__(cls, *args, **kwargs):
        if dataclasses.is_dataclass(cls):
            valid = [f.name for f in dataclasses.fields(cls)]
            for key in kwargs:
                if key not in valid:
                    raise ConfigError(f"{cls.__name__} has no option {key!r}; {closest(key, valid)}")
            if len(args) > 0:
                raise ConfigError(
                    f"{cls.__name__} takes keyword options only, e.g. {cls.__name__}({valid[0]}=...)"
                )
        return super().__call__(*args, **kwargs)


class MethodConfig(metaclass=_ConfigMeta):
    """Base class of method configs (frozen dataclasses).

    Subclasses implement ``run(rng_key, rt) -> RawPosterior``, where ``rt`` is a
    :class:`ppl_posteriors.runtime.Runtime`: its ``rt.call(tag, fn, *args)`` runs a
    pure ``fn(log_density, ctx, *args)`` compiled once per (model, config, static
    arguments, shapes) with the data as jit arguments, and ``rt.log_density`` gives
    the metadata (layout, sites). Options are validated in ``__post_init__``
    (raising ConfigError); configs must be hashable (they key the compile cache).
    """

    method_name: ClassVar[str] = ""
    #: takes ``pp.infer(..., batches=pp.Batches(...))`` (stochastic steps on minibatches)
    supports_batches: ClassVar[bool] = False

    @property
    def num_parallel(self) -> int | None:
        """Independent chains or restarts that a mesh's ``"chain"`` axis can split (None: none)."""
        return None

    def default_mesh(self, arrays):
        """The device mesh ``pp.infer`` uses when the caller passes ``mesh=None``
        (``arrays``: the model's array arguments). None: one device. MCMC samplers put
        their chains on CPU host devices when the process has them."""
        return None

    @abc.abstractmethod
    def run(self, rng_key, rt):
        """Run the method through the runtime ``rt``; returns a RawPosterior."""

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-safe values (objects such as optax optimisers as their repr)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, enum.Enum):
                v = v.value
            try:
                json.dumps(v)
            except TypeError:
                v = repr(v)
            out[f.name] = v
        return out

    # -- validation helpers for __post_init__ ------------------------------------------
    def _require(self, ok: bool, option: str, message: str) -> None:
        if not ok:
            raise ConfigError(
                f"{type(self).__name__}({option}={getattr(self, option)!r}): {message}"
            )

    def _positive_int(self, *options: str) -> None:
        for o in options:
            v = getattr(self, o)
            self._require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, o,
                          "must be an integer >= 1")

    def _choice(self, option: str, choices) -> None:
        v = getattr(self, option)
        if v not in choices:
            raise ConfigError(
                f"{type(self).__name__}({option}={v!r}) is not a valid choice; {closest(str(v), choices)}"
            )


class MethodSpec(NamedTuple):
    """A registered method: its ``name`` for ``pp.infer(method=name)``, its config class
    (a :class:`MethodConfig` subclass) and the one-line ``description`` of ``pp.methods()``."""

    name: str
    config_cls: type
    description: str


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type, description: str) -> None:
    """Register ``config_cls`` under ``name`` with a one-line ``description``."""
    if not (isinstance(config_cls, type) and issubclass(config_cls, MethodConfig)):
        raise ConfigError(f"register_method({name!r}): {config_cls!r} is not a MethodConfig subclass")
    config_cls.method_name = name
    _REGISTRY[name] = MethodSpec(name, config_cls, description)


class _MethodTable(dict):
    def __repr__(self) -> str:
        width = max((len(k) for k in self), default=0)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in self.items())


def methods() -> dict[str, str]:
    """Registered method names, each with a one-line description (prints as a table)."""
    return _MethodTable((n, s.description) for n, s in sorted(_REGISTRY.items()))


def resolve_method(method) -> MethodConfig:
    """A registered name -> its config with defaults; a config object -> itself.

    Raises
    ------
    ConfigError
        Unknown name (with the closest registered names), or an object that is no config.
    """
    if isinstance(method, MethodConfig):
        return method
    if isinstance(method, str):
        spec = _REGISTRY.get(method)
        if spec is None:
            raise ConfigError(f"unknown method {method!r}; {closest(method, _REGISTRY)}")
        return spec.config_cls()
    if isinstance(method, type) and issubclass(method, MethodConfig):
        return method()
    raise ConfigError(
        f"method must be a registered name (see pp.methods()) or a config such as "
        f"pp.NUTS(num_chains=4); got {method!r}"
    )
