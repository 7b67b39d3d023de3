"""Calibration and McNemar figures on known inputs, computed by hand (pure: no emulator, no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from results.compare import mcnemar_p_value
from results.metrics import calibration_from_confidences, calibration_report
from train.calibration import fit_temperature


def test_ece_matches_a_hand_computed_value():
    # Bins of width 1/15: 0.95 and 0.97 share the last bin (14/15, 1]; 0.55 and 0.58 share bin 8 (8/15, 9/15].
    confidences = np.array([0.95, 0.97, 0.55, 0.58, 0.30])
    correct = np.array([True, False, True, True, False])
    # last bin: mean confidence 0.96, accuracy 0.5 -> gap 0.46, weight 2/5
    # bin 8: mean confidence 0.565, accuracy 1.0 -> gap 0.435, weight 2/5
    # bin 4 (0.2667, 0.3333]: confidence 0.30, accuracy 0 -> gap 0.30, weight 1/5
    expected = 0.4 * 0.46 + 0.4 * 0.435 + 0.2 * 0.30
    cal = calibration_from_confidences(confidences, correct)
    assert cal["ece"] == pytest.approx(expected, abs=1e-12)
    assert cal["max_gap"] == pytest.approx(0.46, abs=1e-12)
    assert cal["mean_confidence"] == pytest.approx(confidences.mean())
    assert [b["count"] for b in cal["bins"]] == [0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 2]


def test_nll_brier_and_temperature_on_a_known_input():
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1])
    report = calibration_report(probs, labels)
    assert report["nll"] == pytest.approx(-(math.log(0.8) + math.log(0.4) + math.log(0.7)) / 3)
    assert report["brier"] == pytest.approx(((0.2**2 * 2) + (0.6**2 * 2) + (0.3**2 * 2)) / 3)
    # An over-confident model (right 3 times in 4 at 99%) is cooled: T > 1.
    over = np.array([[0.99, 0.01]] * 4)
    assert fit_temperature(over, np.array([0, 0, 0, 1])) > 1.5


def mcnemar_by_hand(b: int, c: int) -> float:
    """2·P(Binomial(b + c, 1/2) <= min(b, c)), capped at 1: the exact two-sided McNemar p-value."""
    n = b + c
    return 1.0 if n == 0 else min(1.0, 2.0 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n)


def test_mcnemar_exact_p_values():
    # scipy's binomtest sums the same binomial terms in another order: equal to a relative 1e-12.
    assert mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(1, 5) == pytest.approx(2 * (1 + 6) / 2**6, rel=1e-12)  # 0.21875
    assert mcnemar_p_value(0, 10) == pytest.approx(2 / 2**10, rel=1e-12)
    assert mcnemar_p_value(7, 7) == 1.0
    for b, c in ((3, 17), (40, 61), (250, 190), (0, 1)):
        assert mcnemar_p_value(b, c) == pytest.approx(mcnemar_by_hand(b, c), rel=1e-12)
