"""Errors and the numerical status of a result.

Two tiers (DESIGN.md, "Two tiers of error"):

* **Structural misuse** raises at once: :class:`ModelError` for a model that
  cannot be turned into a log density (discrete latent site, NaN in observed
  data, unsupported constraint, a model that raises), :class:`ConfigError` for an
  unknown method or option or an impossible setting. Both name the site or option
  and say how to fix it.
* **Numerical trouble** (indefinite Hessian, a MAP or ELBO that did not converge,
  divergent transitions, non-finite values) is a :class:`Status` kept in the
  result (``idata.attrs["status"]``). Failures that make the result wrong raise
  :class:`NumericalError` when the method's ``throw=True`` (the default);
  diagnostics that leave the result usable but suspect emit
  :class:`NumericalWarning`.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "ModelError",
    "NumericalError",
    "NumericalWarning",
    "Status",
    "closest",
]


class ModelError(ValueError):
    """The model cannot be turned into a log density; the message names the site and the fix."""


class ConfigError(ValueError):
    """An unknown method or option, or an impossible setting; the message lists valid names."""


class NumericalWarning(UserWarning):
    """A diagnostic says the result may be unreliable (divergences, R-hat, slow convergence)."""


class Status(enum.Enum):
    """Numerical outcome of a method, worst first when several apply.

    ``SUCCESS``: nothing to report. Warnings (``DIVERGENCES``, ``POOR_MIXING`` (R-hat),
    ``POOR_APPROXIMATION`` (PSIS k-hat), ``NOT_CONVERGED`` for VI) leave a usable but
    suspect result. Failures
    (``MAP_NOT_CONVERGED``, ``INDEFINITE_CURVATURE``, ``NON_FINITE``) make the
    result wrong and raise :class:`NumericalError` when ``throw=True``.
    """

    SUCCESS = "success"
    DIVERGENCES = "divergences"
    POOR_MIXING = "poor_mixing"
    POOR_APPROXIMATION = "poor_approximation"
    NOT_CONVERGED = "not_converged"
    MAP_NOT_CONVERGED = "map_not_converged"
    INDEFINITE_CURVATURE = "indefinite_curvature"
    NON_FINITE = "non_finite"

    @property
    def is_failure(self) -> bool:
        return self in _FAILURES

    @property
    def severity(self) -> int:
        return 0 if self is Status.SUCCESS else (2 if self.is_failure else 1)

    @staticmethod
    def worst(statuses: Iterable[Status]) -> Status:
        statuses = list(statuses)
        if not statuses:
            return Status.SUCCESS
        return max(statuses, key=lambda s: s.severity)


_FAILURES = {Status.MAP_NOT_CONVERGED, Status.INDEFINITE_CURVATURE, Status.NON_FINITE}


class NumericalError(RuntimeError):
    """A numerical failure made the result wrong.

    Attributes
    ----------
    status : Status
        What went wrong.
    idata : arviz.InferenceData or None
        The (wrong) result, kept for inspection; ``idata.attrs`` holds the messages.
    """

    def __init__(self, message: str, status: Status, idata=None):
        super().__init__(message)
        self.status = status
        self.idata = idata


def closest(name: str, valid: Iterable[str]) -> str:
    """A ``did you mean ...`` hint listing the valid names closest to ``name``."""
    valid = sorted(valid)
    near = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(n) for n in near)}? " if near else ""
    return f"{hint}valid names: {', '.join(valid)}"
