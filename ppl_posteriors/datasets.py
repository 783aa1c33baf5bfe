"""Real example data sets used by the demo, the docs and the benchmarks (no download)."""

from __future__ import annotations

import numpy as np

__all__ = ["breast_cancer", "eight_schools"]


def breast_cancer():
    """Wisconsin breast-cancer data shipped with scikit-learn, standardised.

    Returns
    -------
    X : ndarray (569, 30)
        Features standardised to mean 0, sd 1 (population sd).
    y : ndarray (569,) int
        1 = benign, 0 = malignant.
    feature_names : list of str
    """
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    X = np.asarray(data.data, dtype=np.float64)
    X = (X - X.mean(0)) / X.std(0)
    return X, np.asarray(data.target, dtype=np.int32), [str(n) for n in data.feature_names]


def eight_schools():
    """Rubin (1981) eight schools: estimated coaching effects and their standard errors.

    Returns
    -------
    dict with ``y`` (8,), ``sigma`` (8,) and ``schools`` (8 labels).
    """
    return {
        "y": np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]),
        "sigma": np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]),
        "schools": ["A", "B", "C", "D", "E", "F", "G", "H"],
    }
