"""The one rule for 'matches': labels identical, floats within results.agreement.TOLERANCE (pure, no emulator)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from results import agreement
from results.metrics import ECE_BINS, calibration_from_confidences
from results.run import Answers, Counters, DatasetIdentity, ModelIdentity, RunInfo, RunResult
from train.evaluate import check_against_metadata

TOL = agreement.TOLERANCE


def test_identical_labels_and_close_confidences_agree():
    labels = np.array([0, 3, 9, 1])
    conf = np.array([0.5, 0.9, 0.99, 0.7])
    check = agreement.compare_predictions(labels, labels.copy(), conf, conf + TOL / 2)
    assert check.ok and check.labels_identical
    assert check.max_confidence_diff == pytest.approx(TOL / 2)
    assert check.describe() == ""


def test_one_label_differs():
    check = agreement.compare_predictions(np.array([0, 3, 9, 1]), np.array([0, 3, 8, 1]))
    assert not check.ok and check.label_mismatches == [2]
    assert "1 of 4 labels differ (e.g. image 2)" in check.describe()


def test_a_confidence_beyond_the_tolerance_is_named_with_its_size():
    labels = np.array([0, 3, 9])
    conf = np.array([0.5, 0.9, 0.99])
    moved = conf.copy()
    moved[1] += 3 * TOL
    check = agreement.compare_predictions(labels, labels, conf, moved)
    assert check.labels_identical and not check.ok
    assert "confidence of image 1" in check.describe() and "differs by 3e-05" in check.describe()


def test_figures_beyond_their_allowance_are_listed():
    diffs = agreement.compare_figures(
        {"ece": 0.01, "nll": 0.2}, {"ece": 0.0102, "nll": 0.2 + TOL / 10}, {"ece": TOL, "nll": TOL}
    )
    assert [d.figure for d in diffs] == ["ece"]
    assert "differs by 0.0002" in str(diffs[0])


def test_ece_allowance_counts_confidences_near_a_bin_edge():
    far = np.full(100, 7.5 / ECE_BINS)  # mid-bin
    assert agreement.ece_allowance(far, ECE_BINS) == TOL
    near = far.copy()
    near[:3] = 8 / ECE_BINS + TOL / 2  # three images just above an edge
    assert agreement.ece_allowance(near, ECE_BINS) == pytest.approx(TOL + 2 * 3 / 100)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 400),
    st.integers(0, 2**32 - 1),
    st.floats(0.0, 1.0),
)
def test_ece_moves_no_further_than_its_allowance(n, seed, edge_share):
    """The derived bound holds: perturb every confidence by <= TOL (some placed on bin edges), ECE stays within it."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.1, 1.0, n)
    on_edge = rng.random(n) < edge_share
    conf[on_edge] = rng.integers(2, ECE_BINS, on_edge.sum()) / ECE_BINS + rng.uniform(-TOL, TOL, on_edge.sum())
    correct = rng.random(n) < conf
    moved = np.clip(conf + rng.uniform(-TOL, TOL, n), 0.0, 1.0)
    before = calibration_from_confidences(conf, correct)["ece"]
    after = calibration_from_confidences(moved, correct)["ece"]
    assert abs(after - before) <= agreement.ece_allowance(conf, ECE_BINS) + 1e-12


def test_predictions_round_trip_through_metadata_json():
    rng = np.random.default_rng(0)
    labels, conf = rng.integers(0, 10, 1000), rng.random(1000).astype(np.float32)
    got_labels, got_conf = agreement.decode_predictions(agreement.encode_predictions(labels, conf))
    assert (got_labels == labels).all() and (got_conf == conf).all()


def test_damaged_predictions_are_refused():
    record = agreement.encode_predictions(np.array([1, 2, 3]), np.array([0.5, 0.6, 0.7]))
    with pytest.raises(ValueError, match="damaged"):
        agreement.decode_predictions(
            {**record, "labels": agreement.encode_predictions(np.array([1, 2, 4]), np.zeros(3))["labels"]}
        )
    with pytest.raises(ValueError, match="cannot be read"):
        agreement.decode_predictions({**record, "confidences": "not base64!"})


def _report(labels, conf, recorded_labels, recorded_conf, ece_shift=0.0):
    """(an evaluation's run result, the metadata.json it is checked against); every true label is 0."""
    n = len(labels)
    answers = Answers.of(np.arange(n), [str(i) for i in range(n)], np.zeros(n), labels, conf)
    result = RunResult(
        RunInfo(), ModelIdentity(None), DatasetIdentity("toy", "", n), ("0", "1", "2"), answers, Counters(n)
    )
    recorded = calibration_from_confidences(recorded_conf, recorded_labels == 0, nll=0.3, brier=0.1)
    meta = {
        "test_accuracy": float((recorded_labels == 0).mean()),
        "test_calibration": {"after_scaling": {**recorded, "ece": recorded["ece"] + ece_shift}},
        "test_predictions": agreement.encode_predictions(recorded_labels, recorded_conf),
        "test_images": n,
    }
    return result, meta


def test_evaluate_says_which_figure_differs_and_by_how_much():
    rng = np.random.default_rng(1)
    labels, conf = rng.integers(0, 3, 500), rng.uniform(0.4, 0.99, 500).astype(np.float32).astype(np.float64)
    assert check_against_metadata(*_report(labels, conf, labels, conf)).ok
    assert check_against_metadata(*_report(labels, conf + 1e-7, labels, conf)).ok  # a few ulps: the same
    flipped = labels.copy()
    flipped[7] = (flipped[7] + 1) % 3
    check = check_against_metadata(*_report(flipped, conf, labels, conf))
    assert not check.ok and check.label_mismatches == [7]
    check = check_against_metadata(*_report(labels, conf, labels, conf, ece_shift=0.001))
    assert not check.ok and "ece" in check.describe() and "differs by 0.001" in check.describe()
