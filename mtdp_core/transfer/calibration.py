"""Probabilities from SVM decision values: one-parameter softmax (temperature) scaling.

A linear SVM gives decision values, not probabilities, but a Cytomine prediction carries a
confidence (``rate``, in [0, 1]). The scale ``a`` of ``softmax(a * decisions)`` is fitted by
maximum likelihood on **out-of-fold** decision values (each sample scored by a model that did
not see it), as temperature scaling does for networks (Guo et al. 2017) and Platt scaling for
binary SVMs (with the offset fixed at 0, so the predicted class never changes: the argmax of
the decisions is kept). Binary decisions ``d`` are taken as the two-column ``(-d, d)``, so the
probability of the positive class is ``sigmoid(2 a d)``.
"""

from __future__ import annotations

import numpy as np


def as_decision_matrix(decisions: np.ndarray) -> np.ndarray:
    """(n,) binary decisions -> (n, 2) as (-d, d); (n, k) unchanged."""
    d = np.asarray(decisions, dtype=np.float64)
    return np.stack([-d, d], axis=1) if d.ndim == 1 else d


def scaled_softmax(decisions: np.ndarray, scale: float) -> np.ndarray:
    """Row-wise ``softmax(scale * decisions)``: (n, k) probabilities (binary (n,) accepted)."""
    z = as_decision_matrix(decisions) * float(scale)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_softmax_scale(decisions: np.ndarray, y_index: np.ndarray) -> tuple[float, float]:
    """The scale that maximises the likelihood of the true classes ``y_index`` (n,) (indices into
    the decision columns); returns ``(scale, mean negative log-likelihood)``."""
    from scipy.optimize import minimize_scalar

    D = as_decision_matrix(decisions)
    y = np.asarray(y_index, dtype=np.int64)
    if len(y) == 0:
        return 1.0, float("nan")

    def nll(log_scale: float) -> float:
        z = D * np.exp(log_scale)
        z = z - z.max(axis=1, keepdims=True)
        log_p = z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))
        return float(-log_p.mean())

    result = minimize_scalar(nll, bounds=(-12.0, 12.0), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x)), float(result.fun)
