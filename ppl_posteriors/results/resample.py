"""Importance resampling of an approximation's draws with Pareto-smoothed weights (PSIS-SIR).

Laplace and VI return draws of an approximation q of the posterior p. With
``importance_resampling=True`` they draw a pool of S = :func:`pool_size` draws
z_1..z_S ~ q, take the importance ratios r_s = p(z_s) / q(z_s) (the log weights
log p - log q that PSIS k-hat already uses), smooth them by PSIS and return M draws
resampled from the pool with probabilities w̃_s (the normalised smoothed weights):

    w̃ = PSIS(r) / Σ PSIS(r)          (the largest ~3√S ratios replaced by quantiles of a
                                       generalised Pareto fit to the tail; Vehtari et al. 2024)
    z'_m = z_{I_m},  I_m = F⁻¹((u + m) / M),  u ~ U(0, 1),  m = 0..M-1,  F = cumsum(w̃)

This is Rubin's (1988) sampling importance resampling with Pareto-smoothed weights, the
"PSIS-resampling" Pathfinder returns (Zhang et al. 2022). The resampling is
*systematic* (Kitagawa 1996; Douc & Cappé 2005): each pool draw is kept
floor(M w̃_s) or ceil(M w̃_s) times, so the resampled mean is an unbiased estimate of
the self-normalised PSIS mean Σ w̃_s z_s with the least resampling noise. (Draws
without replacement would be biased back towards q when M is not << S.) As S → ∞
the resampled draws are draws of p whenever the weights have a finite variance;
the Monte Carlo variance of a resampled mean is about Var_p(z) (1/ESS + 1/M), where
ESS = 1 / Σ w̃_s² (Kish's effective sample size of the weights).

PSIS k-hat measures whether that holds: above min(1 - 1/log10 S, 0.7) the weights'
tail is too heavy for the self-normalised estimate to converge in practice, and the
resampled draws are unreliable (a :class:`NumericalWarning` says so; Vehtari et al.
2024, §3).

References
----------
Rubin, D. B. (1988). Using the SIR algorithm to simulate posterior distributions.
Bayesian Statistics 3, 395-402.
Vehtari, A., Simpson, D., Gelman, A., Yao, Y. & Gabry, J. (2024). Pareto smoothed
importance sampling. JMLR 25(72):1-58.
Zhang, L., Carpenter, B., Gelman, A. & Vehtari, A. (2022). Pathfinder: parallel
quasi-Newton variational inference. JMLR 23(306):1-49.
Kitagawa, G. (1996). Monte Carlo filter and smoother for non-Gaussian nonlinear state
space models. J. Comput. Graph. Stat. 5:1-25.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import numpy as np

from .._errors import NumericalWarning
from . import compat

__all__ = ["POOL_FACTOR", "Resampled", "importance_resample", "pool_size", "psis_weights", "systematic_resample"]

#: with ``importance_resampling=True`` the pool holds POOL_FACTOR draws per returned draw
#: (at least KHAT_DRAWS): the resampled draws then repeat a pool draw less often
POOL_FACTOR = 4


def pool_size(num_samples: int, importance_resampling: bool) -> int:
    """Draws of q a Laplace or VI run makes: max(num_samples, KHAT_DRAWS), and with
    importance resampling max(POOL_FACTOR x num_samples, KHAT_DRAWS)."""
    from .raw import KHAT_DRAWS

    return max(num_samples * (POOL_FACTOR if importance_resampling else 1), KHAT_DRAWS)


def psis_weights(log_weights) -> tuple[np.ndarray, float]:
    """Normalised Pareto-smoothed importance weights and k-hat.

    Parameters
    ----------
    log_weights : array (S,)
        log p(z_s) - log q(z_s) (unnormalised; -inf for a draw of zero posterior density).

    Returns
    -------
    weights : array (S,), float64
        w̃_s >= 0, Σ w̃_s = 1 (draws with log weight -inf get 0).
    khat : float
        The generalised Pareto shape of the upper tail of the weights (-inf when all
        finite weights are equal: q is the posterior up to a constant).

    Raises
    ------
    ValueError
        If a log weight is NaN or +inf, or none is finite.
    """
    lw = np.asarray(log_weights, dtype=np.float64).ravel()
    if np.any(np.isnan(lw)) or np.any(lw == np.inf) or not np.any(np.isfinite(lw)):
        raise ValueError("importance weights are NaN or +inf (or none is finite): cannot resample")
    ok = np.isfinite(lw)
    w = np.zeros_like(lw)
    fin = lw[ok] - lw[ok].max()
    if np.ptp(fin) <= 1e-8 * (1.0 + np.abs(lw[ok]).max()) or fin.size < 10:
        w[ok] = 1.0 / fin.size
        return w, float("-inf") if fin.size >= 10 else float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if compat.ARVIZ_1:
            from arviz_stats.base import array_stats

            smoothed, khat = array_stats.psislw(-fin)  # its input is a log-likelihood: weights exp(-ary)
        else:
            import arviz as az

            smoothed, khat = az.psislw(fin)
    smoothed = np.asarray(smoothed, dtype=np.float64)
    khat = float(khat)
    if not np.all(np.isfinite(smoothed)):  # a failed Pareto fit: the raw weights, k-hat inf
        smoothed, khat = fin, float("inf")
    p = np.exp(smoothed - smoothed.max())
    w[ok] = p / p.sum()
    return w, (float("inf") if np.isnan(khat) else khat)


def systematic_resample(rng: np.random.Generator, weights, num: int) -> np.ndarray:
    """Indices (num,) of a systematic resample of ``weights`` (S,) (normalised, >= 0).

    I_m = min{s : Σ_{j<=s} w_j > (u + m) / num} with one u ~ U(0, 1) for all m: draw s
    is taken floor(num w_s) or ceil(num w_s) times, num w_s on average (Kitagawa 1996)."""
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    cdf /= cdf[-1]
    u = (rng.uniform() + np.arange(num)) / num
    return np.minimum(np.searchsorted(cdf, u, side="right"), cdf.size - 1)


class Resampled(NamedTuple):
    """What :func:`importance_resample` returns.

    ``draws`` (M, D), ``lp`` (M,), ``log_weight`` (M,): the kept pool draws, their log
    posterior densities and their log p - log q (the weights before resampling; the
    resampled draws are equally weighted); ``info``: the ``idata.attrs`` entries
    ``importance_resampling`` (1), ``resampling_ess`` (1 / Σ w̃², of the pool),
    ``resampling_unique`` (distinct pool draws kept), ``resampling_pool`` (S) and
    ``resampling_khat``; ``messages``: the warning text when k-hat is too large."""

    draws: np.ndarray
    lp: np.ndarray
    log_weight: np.ndarray
    info: dict
    messages: list


def importance_resample(draws, lp, log_weight, num_samples: int, rng_key, *, what: str = "approximation",
                        warn: bool = True) -> Resampled:
    """Replace an approximation's draws by PSIS-weighted systematic resamples of its pool.

    Parameters
    ----------
    draws : array (S, D)
        The pool z_s ~ q on the unconstrained space.
    lp, log_weight : arrays (S,)
        log p(z_s) (unnormalised) and log p(z_s) - log q(z_s).
    num_samples : int
        M, the draws returned.
    rng_key : jax PRNG key
        Seeds the one uniform of the systematic resampling.
    what : str
        Names the approximation in the warning.
    warn : bool
        Raise the warnings below (Laplace and VI pass False: the messages go to their
        status messages, which the result raises as one warning).

    Returns
    -------
    Resampled
        If a log weight is NaN or +inf nothing is resampled: the first M pool draws are
        returned, ``info["importance_resampling"]`` is 0 and a message says why.

    Warns
    -----
    NumericalWarning
        When k-hat > min(1 - 1/log10 S, 0.7): the resampled draws are unreliable.
    """
    draws, lp, log_weight = np.asarray(draws), np.asarray(lp), np.asarray(log_weight)
    s = log_weight.shape[0]
    try:
        w, khat = psis_weights(log_weight)
    except ValueError as e:
        msg = f"importance_resampling skipped: {e}; the {what}'s own draws are returned"
        if warn:
            warnings.warn(msg, NumericalWarning, stacklevel=3)
        info = {"importance_resampling": 0, "resampling_pool": s}
        return Resampled(draws[:num_samples], lp[:num_samples], log_weight[:num_samples], info, [msg])
    key = jax.random.fold_in(rng_key, 0x5EED)
    data = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    rng = np.random.default_rng(np.asarray(data, dtype=np.uint32).ravel().tolist())
    idx = systematic_resample(rng, w, num_samples)
    ess = float(1.0 / np.sum(w**2))
    info = {"importance_resampling": 1, "resampling_ess": ess, "resampling_unique": int(np.unique(idx).size),
            "resampling_pool": s, "resampling_khat": khat}
    messages = []
    threshold = min(1.0 - 1.0 / np.log10(s), 0.7)
    if khat > threshold:
        msg = (f"importance_resampling: PSIS k-hat = {khat:.2f} > {threshold:.2f}, so the resampled draws are "
               f"unreliable (the importance weights p/q of the {what} have too heavy a tail; ESS of the "
               f"weights {ess:.0f} of {s}). Use a better approximation (another curvature or guide), or NUTS")
        if warn:
            warnings.warn(msg, NumericalWarning, stacklevel=3)
        messages.append(msg)
    return Resampled(draws[idx], lp[idx], log_weight[idx], info, messages)
