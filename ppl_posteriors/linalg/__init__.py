"""Matrix-free linear algebra on pytrees (``pp.linalg``).

JAX counterparts of ``posteriors.utils`` plus the operators the Laplace, VI and MCMC
families share. See docs/linalg.md.

* products (``products.py``): :func:`hvp`, :func:`fvp`, :func:`ggnvp`, :func:`ggn`,
  :func:`diag_ggn`, :func:`empirical_fisher`, :func:`diag_empirical_fisher`,
  :func:`per_samplify`;
* solvers (``solvers.py``): :func:`cg` (damping, preconditioner, status), :func:`lanczos`;
* Gaussians (``gaussians.py``): :func:`diag_normal_log_prob`, :func:`diag_normal_sample`,
  :func:`L_from_flat`, :func:`L_to_flat`, :func:`lowrank_normal_sample`,
  :func:`lowrank_normal_log_prob`, :func:`cg_normal_sample`;
* operators (``operators.py``): :class:`LowRankPlusDiag`;
* :func:`linearized_forward` (``linearized.py``): J Σ Jᵀ of a linearised model.
"""

from .gaussians import (
    L_from_flat,
    L_to_flat,
    cg_normal_sample,
    diag_normal_log_prob,
    diag_normal_sample,
    lowrank_normal_log_prob,
    lowrank_normal_sample,
)
from .linearized import LinearizedForward, linearized_forward
from .operators import LowRankPlusDiag
from .products import (
    diag_empirical_fisher,
    diag_ggn,
    empirical_fisher,
    fvp,
    ggn,
    ggnvp,
    hvp,
    per_samplify,
)
from .solvers import CGResult, LanczosResult, cg, lanczos

__all__ = [
    "CGResult",
    "L_from_flat",
    "L_to_flat",
    "LanczosResult",
    "LinearizedForward",
    "LowRankPlusDiag",
    "cg",
    "cg_normal_sample",
    "diag_empirical_fisher",
    "diag_ggn",
    "diag_normal_log_prob",
    "diag_normal_sample",
    "empirical_fisher",
    "fvp",
    "ggn",
    "ggnvp",
    "hvp",
    "lanczos",
    "linearized_forward",
    "lowrank_normal_log_prob",
    "lowrank_normal_sample",
    "per_samplify",
]
