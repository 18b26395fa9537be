"""Softmax-scale calibration of SVM decision values."""

from __future__ import annotations

import numpy as np
import pytest

from mtdp_core.transfer.calibration import as_decision_matrix, fit_softmax_scale, scaled_softmax


def test_scaled_softmax_keeps_the_argmax_and_sums_to_one():
    d = np.array([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.0]])
    p = scaled_softmax(d, 0.7)
    assert np.allclose(p.sum(axis=1), 1) and (p.argmax(axis=1) == d.argmax(axis=1)).all()
    binary = scaled_softmax(np.array([1.5, -0.5]), 2.0)
    assert binary[0, 1] == pytest.approx(1 / (1 + np.exp(-2 * 2.0 * 1.5)))
    assert as_decision_matrix(np.array([1.0])).tolist() == [[-1.0, 1.0]]


def test_fitted_scale_recovers_the_generating_one():
    rng = np.random.default_rng(0)
    true_scale = 3.0
    d = rng.normal(0, 1, size=(4000, 3))
    p = scaled_softmax(d, true_scale)
    y = np.array([rng.choice(3, p=row) for row in p])
    scale, nll = fit_softmax_scale(d, y)
    assert scale == pytest.approx(true_scale, rel=0.1)
    assert nll < fit_softmax_scale(d, rng.integers(0, 3, len(y)))[1]  # labels unrelated to d: worse fit


def test_overconfident_decisions_are_scaled_down():
    d = np.array([10.0, -10.0, 10.0, -10.0])  # binary decisions, half of them wrong
    y = np.array([1, 1, 0, 0])
    scale, _ = fit_softmax_scale(d, y)
    assert scaled_softmax(d, scale).max() < 0.6
