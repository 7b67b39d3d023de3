"""Intervals and tests of results.stats: coverage by simulation or exact computation, and textbook references.

Pure unit tests (no broker), seeded. Coverage simulations run 2,000 runs. Bootstraps drawn as
multinomial counts cost the same for any n, so their simulations use 999 resamples, as a report does
(1,000). Fewer resamples make the endpoints noisier and the coverage lower: the F1 simulation below
covers 93.7% / 92.6% / 93.5% at 199 resamples against 94.9% / 94.9% / 94.6% at 999. The ECE bootstrap
resamples images one by one (cost ~ resamples x images), so its simulation uses 199 resamples: the
harder test by that measure (95.2% at 199, 96.8% at 999, measured on the same simulation).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from results import stats as S

RUNS = 2000
SIM_RESAMPLES = 999  # (B + 1) x 0.025 an integer (Hall 1986)
ECE_SIM_RESAMPLES = 199
# The band the coverage of a 95% interval must land in: +-1.5 points, about 3 simulation SEs at 2,000 runs.
LOW, HIGH = 0.935, 0.975


def _seeds(rng: np.random.Generator, k: int) -> list[int]:
    return [int(s) for s in rng.integers(0, 2**31, size=k)]


# --- one proportion -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_wilson_matches_scipy(level):
    for n in (1, 2, 7, 50, 225, 10_000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            lo, hi = S.wilson_bounds(k, n, level)
            ref = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
            assert (float(lo), float(hi)) == pytest.approx((ref.low, ref.high), abs=1e-12), (k, n)


def test_wilson_matches_newcombe_worked_examples():
    # Newcombe (1998), Stat Med 17:857, the score method's examples: 81/263 and 15/148.
    assert (S.wilson_interval(81, 263).lo, S.wilson_interval(81, 263).hi) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert (S.wilson_interval(15, 148).lo, S.wilson_interval(15, 148).hi) == pytest.approx((0.0624, 0.1605), abs=5e-5)
    iv = S.wilson_interval(9451, 10_000)
    assert iv.method == "Wilson score" and iv.level == 0.95 and iv.lo < 0.9451 < iv.hi
    assert iv.half_width == pytest.approx(0.0045, abs=0.0002)  # about +-0.45 points on 10,000 images


@pytest.mark.parametrize("n", [200, 10_000])
@pytest.mark.parametrize("p", [0.5, 0.95])
def test_wilson_exact_coverage(n, p):
    """Coverage summed over every possible count k from the binomial distribution: no simulation error."""
    k = np.arange(n + 1)
    lo, hi = S.wilson_bounds(k, n)
    coverage = stats.binom.pmf(k, n, p)[(lo <= p) & (p <= hi)].sum()
    assert LOW <= coverage <= HIGH, coverage


def test_class_intervals_recall_and_precision():
    confusion = np.array([[8, 2], [1, 0]])  # rows: true class; class 1 has 1 image, never predicted right
    out = S.class_intervals(confusion)
    assert out["recall"][0].estimate == pytest.approx(0.8)
    assert out["precision"][0].estimate == pytest.approx(8 / 9)
    assert (out["recall"][0].lo, out["recall"][0].hi) == pytest.approx(tuple(map(float, S.wilson_bounds(8, 10))))
    assert out["recall"][1].estimate == 0 and out["recall"][1].lo == 0
    assert math.isnan(out["precision"][1].estimate) is False and out["precision"][1].estimate == 0  # 0 of 2


def test_bad_levels_and_counts_raise():
    for level in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="confidence level"):
            S.wilson_interval(1, 2, level)
    with pytest.raises(ValueError):
        S.wilson_bounds(3, 2)
    with pytest.raises(ValueError):
        S.paired_difference_interval(0, 0, 0, 0)
    with pytest.raises(ValueError):
        S.f1_intervals(np.array([0, 1]), np.array([0, 2]), n_classes=2)
    assert math.isnan(S.wilson_interval(0, 0).lo)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 500), min_size=4, max_size=4), st.floats(0.5, 0.999))
def test_intervals_hold_their_estimate_and_stay_in_range(counts, level):
    both, first, second, neither = counts
    n = sum(counts)
    if n == 0:
        with pytest.raises(ValueError, match="paired counts"):
            S.paired_difference_interval(*counts, level=level)
        return
    for iv, low, high in (
        (S.wilson_interval(both + first, n, level), 0, 1),
        (S.paired_difference_interval(*counts, level=level), -1, 1),
        (S.unpaired_difference_interval(both, max(both, 1), first, max(first + second, 1), level), -1, 1),
    ):
        assert low <= iv.lo <= iv.estimate + 1e-12 and iv.estimate - 1e-12 <= iv.hi <= high, iv


@given(st.integers(-5, -1), st.integers(1, 100), st.integers(1, 100))
def test_impossible_counts_raise_one_line_errors(negative, n, over):
    for bad in (negative, n + over):  # fewer than none, or more successes than trials
        with pytest.raises(ValueError, match="between 0 and n"):
            S.wilson_bounds(bad, n)
    with pytest.raises(ValueError, match="non-negative"):
        S.paired_difference_interval(negative, n, 0, 0)
    with pytest.raises(ValueError, match="one or more"):
        S.unpaired_difference_interval(0, 0, 1, n)


# --- two models on the same images ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "expected"),
    [  # Newcombe (1998), Stat Med 17:2635, method 10, the worked examples (both, first only, second only, neither)
        ((36, 12, 2, 0), (0.0569, 0.3404)),
        ((18, 12, 2, 18), (0.0562, 0.3290)),
        ((53, 0, 0, 1), (-0.0729, 0.0729)),
        ((0, 30, 0, 0), (0.8395, 1.0)),
    ],
)
def test_paired_difference_matches_newcombe(table, expected):
    iv = S.paired_difference_interval(*table)
    assert iv.estimate == pytest.approx((table[1] - table[2]) / sum(table))
    assert (iv.lo, iv.hi) == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [  # Newcombe (1998), Stat Med 17:873, method 10: 56/70 - 48/80 and 9/10 - 3/10
        ((48, 80), (56, 70), (0.0524, 0.3339)),
        ((3, 10), (9, 10), (0.1705, 0.8090)),
    ],
)
def test_unpaired_difference_matches_newcombe(a, b, expected):
    iv = S.unpaired_difference_interval(*a, *b)
    assert iv.estimate == pytest.approx(b[0] / b[1] - a[0] / a[1])
    assert (iv.lo, iv.hi) == pytest.approx(expected, abs=5e-5)


def _mcnemar_by_hand(b: int, c: int) -> float:
    m = b + c
    return 1.0 if m == 0 else min(1.0, 2 * sum(math.comb(m, k) for k in range(min(b, c) + 1)) / 2**m)


def test_mcnemar_matches_a_hand_computed_binomial_sum():
    for b, c in [(0, 0), (0, 1), (1, 6), (7, 7), (3, 12), (134, 428), (50, 61), (0, 40)]:
        assert S.mcnemar_exact(b, c) == pytest.approx(_mcnemar_by_hand(b, c), rel=1e-9, abs=1e-300), (b, c)


def test_compare_paired_counts_sign_and_test():
    # A right on 90, B right on 95 of 100; B fixes 7 of A's mistakes and makes 2 new ones.
    ra = np.array([True] * 88 + [False] * 7 + [True] * 2 + [False] * 3)
    rb = np.array([True] * 88 + [True] * 7 + [False] * 2 + [False] * 3)
    out = S.compare_paired(ra, rb)
    assert (out.both_right, out.a_right_b_wrong, out.a_wrong_b_right, out.both_wrong) == (88, 2, 7, 3)
    assert out.difference.estimate == pytest.approx(0.05)  # B minus A
    assert out.difference.lo < 0.05 < out.difference.hi
    assert out.p_value == pytest.approx(_mcnemar_by_hand(2, 7))
    assert out.disagreement == pytest.approx(0.09)
    assert out.difference.as_dict()["method"] == "Newcombe paired hybrid score"


def test_paired_difference_covers_the_truth():
    """2,000 runs of n paired images with a known accuracy difference, at a small and a report-sized n."""
    rng = np.random.default_rng(1)
    # (both right, only A right, only B right, both wrong): truth B - A = only B - only A
    for n, probs in ((500, [0.85, 0.03, 0.06, 0.06]), (10_000, [0.902, 0.0428, 0.0134, 0.0418])):
        truth = probs[2] - probs[1]
        hits = 0
        for both, a_only, b_only, neither in rng.multinomial(n, probs, size=RUNS):
            iv = S.paired_difference_interval(int(both), int(b_only), int(a_only), int(neither))
            hits += iv.lo <= truth <= iv.hi
        assert LOW <= hits / RUNS <= HIGH, (n, hits / RUNS)


def test_unpaired_difference_covers_the_truth():
    rng = np.random.default_rng(2)
    n, pa, pb = 500, 0.90, 0.93
    hits = 0
    for ka, kb in zip(rng.binomial(n, pa, RUNS), rng.binomial(n, pb, RUNS)):
        iv = S.unpaired_difference_interval(int(ka), n, int(kb), n)
        hits += iv.lo <= pb - pa <= iv.hi
    assert LOW <= hits / RUNS <= HIGH, hits / RUNS


def test_paired_accuracy_bootstrap_covers_the_truth():
    rng = np.random.default_rng(3)
    n, probs = 500, [0.85, 0.03, 0.06, 0.06]  # both, only A right, only B right, neither
    truth = probs[2] - probs[1]
    hits = 0
    for counts, seed in zip(rng.multinomial(n, probs, size=RUNS), _seeds(rng, RUNS)):
        ra = np.repeat([True, True, False, False], counts)
        rb = np.repeat([True, False, True, False], counts)
        iv = S.paired_accuracy_bootstrap(ra, rb, n_resamples=SIM_RESAMPLES, seed=seed)
        hits += iv.lo <= truth <= iv.hi
    assert LOW <= hits / RUNS <= HIGH, hits / RUNS


def _f1_truth(joint: np.ndarray) -> np.ndarray:
    """Population F1 of each class from the joint distribution P[true, predicted]."""
    return 2 * np.diag(joint) / (joint.sum(0) + joint.sum(1))


def test_f1_and_paired_f1_bootstraps_cover_the_truth():
    """One simulation, three intervals: A's macro F1, A's F1 of class 0, and B - A macro F1 on the same images."""
    rng = np.random.default_rng(4)
    k, n = 2, 300
    # joint P[true, A's answer, B's answer]: A right 85%, B right ~90%, B mostly right where A is
    joint = np.zeros((k, k, k))
    for y in range(k):
        for a in range(k):
            for b in range(k):
                pa = 0.85 if a == y else 0.15
                pb = (0.95 if b == y else 0.05) if a == y else (0.6 if b == y else 0.4)
                joint[y, a, b] = pa * pb * (0.6 if y == 0 else 0.4)  # class 0 more common
    joint /= joint.sum()
    f1_a, f1_b = _f1_truth(joint.sum(2)), _f1_truth(joint.sum(1))
    truths = np.array([f1_a.mean(), f1_a[0], f1_b.mean() - f1_a.mean()])
    hits = np.zeros(3)
    for counts, seed in zip(rng.multinomial(n, joint.ravel(), size=RUNS), _seeds(rng, RUNS)):
        row = np.repeat(np.arange(k**3), counts)  # the images of one run (their order does not matter)
        y, a, b = row // (k * k), (row // k) % k, row % k
        f1 = S.f1_intervals(y, a, k, n_resamples=SIM_RESAMPLES, seed=seed)
        diff = S.paired_f1_difference(y, a, b, k, n_resamples=SIM_RESAMPLES, seed=seed)
        for i, iv in enumerate((f1.macro, f1.per_class[0], diff.macro)):
            hits[i] += iv.lo <= truths[i] <= iv.hi
    coverage = hits / RUNS
    assert np.all((LOW <= coverage) & (coverage <= HIGH)), coverage


def test_f1_matches_the_confusion_matrix_and_bootstrap_is_reproducible():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    p = np.array([0, 1, 0, 1, 1, 2, 0, 2, 2, 2])
    out = S.f1_intervals(y, p, 4)
    # class 0: TP 2, FP 1, FN 1 -> 4/6; class 1: TP 2, FP 1, FN 1; class 2: TP 3, FP 1, FN 1; class 3 absent
    assert [c.estimate for c in out.per_class[:3]] == pytest.approx([4 / 6, 4 / 6, 6 / 8])
    assert math.isnan(out.per_class[3].estimate)
    assert out.macro.estimate == pytest.approx((4 / 6 + 4 / 6 + 6 / 8) / 3)
    assert repr(S.f1_intervals(y, p, 4)) == repr(out)  # fixed seed: the same report twice (repr: NaN != NaN)
    assert repr(S.f1_intervals(y, p, 4, seed=1)) != repr(out)


def test_bootstrap_interval_of_any_statistic_and_the_cell_bootstrap_agree():
    """The generic index bootstrap and the multinomial cell bootstrap are one bootstrap drawn two ways."""
    rng = np.random.default_rng(5)
    ra, rb = rng.random(2000) < 0.9, rng.random(2000) < 0.92
    generic = S.bootstrap_interval(lambda a, b: b.mean(-1) - a.mean(-1), ra, rb, n_resamples=4000)
    cells = S.paired_accuracy_bootstrap(ra, rb, n_resamples=4000)
    assert generic.estimate == pytest.approx(cells.estimate)
    # same distribution, different draws: endpoints agree to Monte-Carlo error (~5% of the half-width)
    assert generic.lo == pytest.approx(cells.lo, abs=0.1 * cells.half_width)
    assert generic.hi == pytest.approx(cells.hi, abs=0.1 * cells.half_width)


# --- per-class tests and Holm -----------------------------------------------------------------------------------


def test_holm_hand_example_and_definition():
    adjusted, reject = S.holm([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert reject.tolist() == [True, False, False, True]
    # against the step-down definition: reject H(1..j) while p(i) <= alpha / (m - i + 1)
    rng = np.random.default_rng(6)
    for _ in range(200):
        p = rng.random(10) ** 3
        order = np.argsort(p)
        expected = np.zeros(10, bool)
        for i, j in enumerate(order):
            if p[j] > 0.05 / (10 - i):
                break
            expected[j] = True
        assert (S.holm(p)[1] == expected).all()


def test_holm_keeps_the_family_wise_error_rate():
    """10 classes, no real difference: how often is any class called significant?"""
    rng = np.random.default_rng(7)
    discordant = rng.binomial(1000, 0.06, size=(RUNS, 10))  # ~60 discordant pairs per class
    b_only = rng.binomial(discordant, 0.5)
    small = np.minimum(b_only, discordant - b_only)
    p = np.minimum(1.0, 2 * stats.binom.cdf(small, discordant, 0.5))  # exact McNemar, checked below
    assert p[0, 0] == pytest.approx(S.mcnemar_exact(int(b_only[0, 0]), int(discordant[0, 0] - b_only[0, 0])))
    uncorrected = np.mean((p <= 0.05).any(1))
    corrected = np.mean([S.holm(row)[1].any() for row in p])
    assert uncorrected > 0.2  # the problem is real: 10 uncorrected tests find "something" often
    assert corrected <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / RUNS), corrected


def test_per_class_mcnemar_counts_and_correction():
    labels = np.repeat([0, 1, 2], [100, 100, 100])
    ra = np.ones(300, bool)
    rb = np.ones(300, bool)
    rb[:30] = False  # class 0: B loses 30 images A gets right
    ra[100:102] = False  # class 1: B gets 2 more right
    out = S.per_class_mcnemar(labels, ra, rb, n_classes=4)  # class 3 has no images: not in the family
    assert [c.label for c in out] == [0, 1, 2]
    c0, c1, c2 = out
    assert (c0.a_right_b_wrong, c0.a_wrong_b_right, c0.difference) == (30, 0, pytest.approx(-0.3))
    assert c0.p_value == pytest.approx(_mcnemar_by_hand(30, 0)) and c0.significant and c0.better == "A"
    assert c0.p_holm == pytest.approx(min(1, 3 * c0.p_value))
    assert (c1.a_wrong_b_right, c1.p_value, c1.significant, c1.better) == (2, 0.5, False, "")
    assert c2.p_value == 1.0


# --- calibration ----------------------------------------------------------------------------------------------


def test_bins_and_ece_match_the_report():
    from results.metrics import calibration_from_confidences

    rng = np.random.default_rng(8)
    c = np.concatenate([rng.random(500), [0.0, 1.0, 1 / 15, 2 / 15]])
    r = rng.random(len(c)) < c
    report = calibration_from_confidences(c, r)
    assert S.expected_calibration_error(c, r) == pytest.approx(report["ece"], abs=1e-12)
    bins = S.reliability_intervals(c, r)
    assert [b.count for b in bins] == [b["count"] for b in report["bins"]]
    for mine, theirs in zip(bins, report["bins"]):
        if mine.count:
            assert mine.accuracy.estimate == pytest.approx(theirs["accuracy"])
            assert (mine.accuracy.lo, mine.accuracy.hi) == pytest.approx(
                tuple(map(float, S.wilson_bounds(round(theirs["accuracy"] * mine.count), mine.count)))
            )


def test_gap_interval_with_one_confidence_is_clopper_pearson():
    """All confidences equal to p: the test is binomial, and the interval is p minus Clopper-Pearson's."""
    for n, mistakes, p in ((225, 3, 0.9955), (50, 0, 0.9), (400, 60, 0.8), (10_000, 549, 0.95)):
        r = np.ones(n, bool)
        r[:mistakes] = False
        iv = S.calibration_gap_interval(np.full(n, p), r)
        ref = stats.binomtest(n - mistakes, n).proportion_ci(method="exact")
        tol = 1e-6 if mistakes <= 50 else 2e-3  # beyond 50 mistakes: the normal approximation
        assert (iv.lo, iv.hi) == pytest.approx((p - ref.high, p - ref.low), abs=tol), (n, mistakes)


def _poisson_binomial(q: np.ndarray) -> np.ndarray:
    pmf = np.zeros(len(q) + 1)
    pmf[0] = 1.0
    for qi in q:
        pmf[1:] = pmf[1:] * (1 - qi) + pmf[:-1] * qi
        pmf[0] *= 1 - qi
    return pmf


@pytest.mark.parametrize(
    ("n", "beta", "gap", "bounds"),
    [
        (225, 200, 0.0, (0.95, 1.0)),  # ~1 expected mistake, calibrated: an exact test is conservative here
        (225, 200, 0.0089, (0.95, 1.0)),  # a small folder run: over-confident by 0.89 points, ~3 mistakes
        (225, 20, 0.02, (LOW, HIGH)),  # ~16 mistakes
        (1000, 10, 0.01, (LOW, HIGH)),  # ~100 mistakes: the normal approximation
    ],
)
def test_gap_interval_exact_coverage(n, beta, gap, bounds):
    """Coverage given the confidences, summed exactly over every possible number of mistakes."""
    rng = np.random.default_rng(9)
    c = 1 - rng.beta(1, beta, n)
    truth = c.mean() - np.clip(c - gap, 0, 1).mean()
    pmf = _poisson_binomial(1 - np.clip(c - gap, 0, 1))
    coverage = 0.0
    for k in np.flatnonzero(pmf > 1e-10):
        r = np.ones(n, bool)
        r[:k] = False  # the interval depends on the results only through the number of mistakes
        iv = S.calibration_gap_interval(c, r)
        coverage += pmf[k] * (iv.lo <= truth <= iv.hi)
    assert bounds[0] <= coverage <= bounds[1], coverage


def test_small_folder_run_is_consistent_with_calibrated():
    """225 images, 3 wrong, mean confidence 99.55%: not evidence of over-confidence."""
    rng = np.random.default_rng(10)
    c = 0.9955 + rng.uniform(-0.004, 0.004, 225)
    c += 0.9955 - c.mean()  # mean confidence exactly 99.55%, all below 1
    r = np.ones(225, bool)
    r[:3] = False
    out = S.calibration_intervals(c, r)
    assert out.gap.estimate == pytest.approx(0.9955 - 222 / 225)
    assert S.calibration_verdict(out.gap) == "consistent with calibrated"
    # ...while 30 mistakes at the same confidence are clearly over-confident, and none at 80% under-confident
    r[:30] = False
    assert S.calibration_verdict(S.calibration_gap_interval(c, r)) == "over-confident"
    assert S.calibration_verdict(S.calibration_gap_interval(np.full(225, 0.8), np.ones(225, bool))) == (
        "under-confident"
    )


def test_ece_bootstrap_covers_the_truth_and_narrows_with_n():
    """Over-confident by 10 points in every bin (true ECE 0.10), where ECE is identifiable."""
    rng = np.random.default_rng(11)
    n, gap = 150, 0.10
    hits = 0
    for seed in _seeds(rng, RUNS):
        c = rng.uniform(0.8, 1.0, n)  # three bins
        r = rng.random(n) < c - gap
        iv = S.ece_interval(c, r, n_resamples=ECE_SIM_RESAMPLES, seed=seed)
        hits += iv.lo <= gap <= iv.hi
    assert LOW <= hits / RUNS <= HIGH, hits / RUNS
    widths = []
    for size in (250, 1000, 4000):
        c = rng.uniform(0.8, 1.0, size)
        widths.append(S.ece_interval(c, rng.random(size) < c - gap).half_width)
    assert widths[0] > 1.5 * widths[1] > 2.25 * widths[2]  # ~halves per 4x images


def test_verdict_reads_only_the_interval():
    iv = lambda lo, hi: S.Interval(0.0, lo, hi, 0.95, "test")  # noqa: E731
    assert S.calibration_verdict(iv(0.001, 0.02)) == "over-confident"
    assert S.calibration_verdict(iv(-0.02, -0.001)) == "under-confident"
    assert S.calibration_verdict(iv(-0.001, 0.02)) == "consistent with calibrated"
    assert S.calibration_verdict(iv(math.nan, math.nan)) == "undetermined"


# --- latency within a run -------------------------------------------------------------------------------------


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    e = np.empty(n)
    e[0] = rng.normal()
    noise = rng.normal(size=n) * math.sqrt(1 - phi**2)
    for t in range(1, n):
        e[t] = phi * e[t - 1] + noise[t]
    return e


def test_block_counts_and_percentiles_equal_explicit_resampling():
    rng = np.random.default_rng(12)
    for n, length in ((50, 7), (101, 10), (37, 37), (20, 1)):
        x = rng.normal(size=n)
        counts = S._block_counts(n, length, 30, np.random.default_rng(5))
        blocks = -(-n // length)
        starts = np.random.default_rng(5).integers(0, n, size=(30, blocks))
        idx = ((starts[:, :, None] + np.arange(length)) % n).reshape(30, -1)[:, :n]
        assert (counts == np.stack([np.bincount(i, minlength=n) for i in idx])).all()
        qs = np.array([0, 2.5, 50, 90, 99, 100])
        order = np.argsort(x)
        got = S._block_percentiles(x[order], order, counts, qs)
        assert got == pytest.approx(np.percentile(x[idx], qs, axis=1).T, abs=1e-12)


def test_block_length_follows_the_correlation():
    rng = np.random.default_rng(13)
    n = 20_000
    assert S.block_length(rng.normal(size=n)) <= 5  # independent latencies: (nearly) single requests
    # AR(1) with phi 0.5: Politis-White's optimum for the circular block bootstrap is
    # (1.5 (G/g)^2)^(1/3) n^(1/3) with G/g = 2 phi / (1 - phi^2).
    theory = (1.5 * (2 * 0.5 / (1 - 0.25)) ** 2) ** (1 / 3) * n ** (1 / 3)
    assert 0.7 * theory <= S.block_length(_ar1(rng, n, 0.5)) <= 1.3 * theory
    assert S.block_length(np.ones(100)) == 1


def test_latency_intervals_are_labelled_within_run_and_wider_for_correlated_runs():
    rng = np.random.default_rng(14)
    independent = 10 * np.exp(0.5 * rng.normal(size=2000))
    correlated = 10 * np.exp(0.5 * _ar1(rng, 2000, 0.9))
    a = S.latency_percentile_intervals(independent)
    b = S.latency_percentile_intervals(correlated)
    assert set(a) == {50.0, 90.0, 99.0}
    assert all(iv.scope == S.WITHIN_RUN and "block" in iv.method for iv in a.values())
    assert a[50].estimate == pytest.approx(np.percentile(independent, 50))
    assert all(iv.lo <= iv.estimate <= iv.hi for iv in (*a.values(), *b.values()))
    # correlated latencies carry less information: a wider interval than for independent ones
    assert b[50].half_width > 2 * a[50].half_width
    assert S.latency_percentile_intervals(independent) == a  # fixed seed


# --- power --------------------------------------------------------------------------------------------------


def test_paired_power_formula_round_trips_and_reaches_80_percent():
    n = S.images_needed_paired(0.02, 0.06)
    assert S.detectable_paired_difference(n, 0.06) == pytest.approx(0.02, rel=0.01)
    assert S.detectable_paired_difference(n, 0.06) <= 0.02
    # Connor (1987) by hand: (1.96 sqrt(.06) + 0.8416 sqrt(.06 - .0004))^2 / .0004
    assert n == math.ceil((1.959964 * math.sqrt(0.06) + 0.841621 * math.sqrt(0.0596)) ** 2 / 0.0004)
    # simulate: exact McNemar at that n rejects ~80% of the time
    rng = np.random.default_rng(15)
    discordant = rng.binomial(n, 0.06, RUNS)
    b_right = rng.binomial(discordant, (0.06 + 0.02) / 2 / 0.06)  # share of discordant pairs B wins
    small = np.minimum(b_right, discordant - b_right)
    power = np.mean(2 * stats.binom.cdf(small, discordant, 0.5) <= 0.05)
    assert 0.75 <= power <= 0.85, power
    assert math.isnan(S.detectable_paired_difference(10, 0.05))  # half a disagreement: nothing detectable


def test_unpaired_and_single_run_power():
    n = S.images_needed_unpaired(0.01, 0.945)
    assert S.detectable_unpaired_difference(n, 0.945) == pytest.approx(0.01, rel=0.01)
    rng = np.random.default_rng(16)  # two-sample z-test at that n: ~80% power
    ka, kb = rng.binomial(n, 0.945, RUNS), rng.binomial(n, 0.935, RUNS)
    pooled = (ka + kb) / (2 * n)
    z = (ka - kb) / n / np.sqrt(2 * pooled * (1 - pooled) / n)
    assert 0.75 <= np.mean(np.abs(z) >= 1.959964) <= 0.85
    one = S.images_needed_vs_baseline(0.01, 0.945)
    assert one < n  # a known baseline needs fewer images than a second noisy run
    assert S.images_needed_paired(0.01, S.assumed_disagreement(0.945, 0.01)) < n  # pairing needs fewer still
    assert S.assumed_disagreement(0.9451, -0.0294) == pytest.approx(0.0843, abs=1e-4)
    with pytest.raises(ValueError):
        S.images_needed_paired(0.1, 0.05)  # a difference larger than the disagreement is impossible
