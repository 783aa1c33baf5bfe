"""Quality checks of a fitted guide: PSIS k-hat (the default) and sbi's "prop" check.

Both use S draws z_s ~ q of the fitted guide with log p(z_s) (unnormalised) and log q(z_s).

* ``"psis"``: the Pareto shape k-hat of the importance ratios p/q (Yao, Vehtari,
  Simpson & Gelman 2018, "Yes, but did it work?: Evaluating variational inference",
  ICML; Vehtari et al. 2024, JMLR 25(72)); computed with the result
  (``attrs["psis_khat"]``, warned about above min(1 - 1/log10 S, 0.7)). Sensitive to a
  q that is too narrow; less so to one that is too wide (mode collapse is missed).
* ``"prop"``: sbi's proportionality check (``VIPosterior.evaluate(
  quality_control_metric="prop")``, sbi/samplers/vi/vi_quality_control.py,
  ``proportional_to_joint_diagnostics``). If q ∝ p then q(z_s) and p(z_s) lie on a line
  through the origin; the check is R² of the least-squares line through the origin
  with x_s = q(z_s) and y_s = p(z_s):

      ŵ = Σ x_s y_s / Σ x_s²,   R² = 1 - Σ (y_s - ŵ x_s)² / Σ (y_s - ȳ)².

  R² is 1 for q ∝ p; sbi reads "good: larger than 0.5, best is 1.0; bad: smaller than
  0.5". R² does not change when x or y is multiplied by a constant, so we compute it with
  x_s = exp(log q_s - max log q) and y_s = exp(log p_s - max log p) (no overflow; sbi
  exponentiates directly). sbi's note: it separates "good" from "ok" better than k-hat,
  and "very bad" from "ok" worse. Stored as ``attrs["prop_r2"]``; below 0.5 the status
  is ``poor_approximation``.

The configs' ``quality=`` picks "psis" (default), "prop" or "both".
"""

from __future__ import annotations

import numpy as np

from .._errors import Status

__all__ = ["PROP_THRESHOLD", "QUALITY", "apply_quality", "prop_r2"]

QUALITY = ("psis", "prop", "both")
PROP_THRESHOLD = 0.5  # sbi's reading of the R² ("good: larger than 0.5")


def prop_r2(log_p, log_q) -> float:
    """sbi's "prop" R² from log p (S,) (unnormalised) and log q (S,) of S draws of q.

    Returns NaN when fewer than 2 draws are finite, and -inf when the p values are all
    equal (ȳ fits them exactly, the R² denominator is 0) but q's are not."""
    lp = np.asarray(log_p, np.float64).ravel()
    lq = np.asarray(log_q, np.float64).ravel()
    ok = np.isfinite(lp) & np.isfinite(lq)
    if ok.sum() < 2:
        return float("nan")
    lp, lq = lp[ok], lq[ok]
    x = np.exp(lq - lq.max())
    y = np.exp(lp - lp.max())
    w = float(x @ y) / float(x @ x)
    ss_res = float(np.sum((y - w * x) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else float("-inf")
    return 1.0 - ss_res / ss_tot


def apply_quality(quality: str, info: dict, status: Status, messages: list, lp, log_weight) -> Status:
    """Add sbi's "prop" check to a VI result's ``info`` (``"prop_r2"``) when ``quality``
    asks for it, and return the status (``poor_approximation`` below :data:`PROP_THRESHOLD`,
    with a message); with ``quality="prop"`` alone the PSIS k-hat is not computed."""
    if quality in ("prop", "both"):
        lp = np.asarray(lp)
        r2 = prop_r2(lp, lp - np.asarray(log_weight))
        info["prop_r2"] = r2
        if not r2 >= PROP_THRESHOLD and not status.is_failure:
            status = Status.worst([status, Status.POOR_APPROXIMATION])
            messages.append(f"sbi's prop check: R² = {r2:.2f} < {PROP_THRESHOLD}: q is not proportional to the "
                            "posterior on its draws; the approximation may be badly off (pp.vi.quality)")
    if quality == "prop":
        info["khat_log_weights"] = None
    return status
