"""Every figure a user reads carries its interval: report.json, the tables (terminal, Markdown, HTML), the terminal
summary, the comparison's headline, report --diff, the progress bar and --plan-delta. Pure: no broker, no JAX.

The intervals themselves are checked in tests/test_stats.py (coverage, references); here, that they reach every
place a figure is shown, computed independently where a number is asserted.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from results import metrics, stats
from results import run as run_json
from results.compare import compare, comparison_blocks, headline
from results.metrics import Uncertainty
from results.run import Answers, Counters, DatasetIdentity, ModelIdentity, RunInfo, RunResult
from results.tables import render
from streamer.__main__ import main
from streamer.collector import progress_text
from streamer.figures import Shown
from streamer.report import diff_reports, interval_settings, render_terminal, show_report, write_report

REPO = Path(__file__).resolve().parent.parent
NAMES = tuple(f"class{c}" for c in range(10))
U = Uncertainty(level=0.95, resamples=1000, seed=0, power=0.8)


def result(labels, predictions, confidence, model="aaaa", digest="d" * 64, latency=None, run_id="r1") -> RunResult:
    n = len(labels)
    t0 = 1_764_000_000.0
    answers = Answers.of(
        np.arange(n), [str(i) for i in range(n)], labels, predictions, confidence,
        latency_ms=np.full(n, np.nan) if latency is None else latency, received_s=t0 + np.arange(n) / 1000,
    )  # fmt: skip
    return RunResult(
        run=RunInfo(run_id=run_id, started_at="2026-11-27T10:00:00Z"),
        model=ModelIdentity(model, (model,)),
        dataset=DatasetIdentity("toy", digest, n),
        class_names=NAMES,
        answers=answers,
        counters=Counters(sent=n),
        published_s=t0 + np.arange(n) / 1000 - 0.01,
    )


def wilson_text(k: int, n: int, level: float = 0.95) -> str:
    """'94.51% [94.05, 94.94]', from scipy's Wilson interval (independent of results.stats)."""
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return f"{100 * k / n:.2f}% [{100 * ci.low:.2f}, {100 * ci.high:.2f}]"


@pytest.fixture(scope="module")
def run_2000() -> RunResult:
    """2,000 images, 1,800 right, confidences 0.9 (calibrated on average), correlated latencies."""
    rng = np.random.default_rng(1)
    n = 2000
    labels = rng.integers(0, 10, n)
    right = np.zeros(n, bool)
    right[rng.choice(n, 1800, replace=False)] = True
    latency = 10 * np.exp(0.3 * np.convolve(rng.normal(size=n + 9), np.ones(10) / 3, "valid"))
    return result(labels, np.where(right, labels, (labels + 1) % 10), np.full(n, 0.9), latency=latency)


# ------------------------------------------------------------------ one run
def test_report_json_tables_and_terminal_carry_every_interval(run_2000, tmp_path):
    out = write_report(run_2000, tmp_path / "run", shown=Shown.of(run_2000, None, U))
    saved = json.loads((out / "report.json").read_text())
    iv = saved["intervals"]
    assert (iv["level"], iv["resamples"], iv["seed"]) == (0.95, 1000, 0)
    ref = scipy_stats.binomtest(1800, 2000).proportion_ci(method="wilson")
    assert (iv["accuracy"]["lo"], iv["accuracy"]["hi"]) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert iv["accuracy"]["method"] == "Wilson score"
    for row, figure in zip(iv["per_class"], saved["per_class"]):
        for name in ("recall", "precision", "f1"):
            assert row[name]["lo"] <= figure[name] <= row[name]["hi"], (row["class"], name)
    assert "bootstrap" in iv["per_class"][0]["f1"]["method"] and iv["macro_f1"]["lo"] < iv["macro_f1"]["hi"]
    cal = iv["calibration"]
    assert cal["gap"]["estimate"] == pytest.approx(0.0, abs=1e-6) and cal["verdict"] == "consistent with calibrated"
    assert cal["ece"]["lo"] <= cal["ece"]["hi"] and "biased upward" in cal["ece_note"]
    assert [b["count"] for b in cal["bins"]] == [b["count"] for b in saved["calibration"]["bins"]]
    assert set(iv["latency_ms"]) == {"p50", "p90", "p95", "p99"}
    for key, latency in iv["latency_ms"].items():
        assert latency["scope"] == "within this run" and latency["lo"] <= saved["latency_ms"][key] <= latency["hi"]
    detectable = iv["detectable"]
    assert detectable["accuracy_half_width"] == pytest.approx((ref.high - ref.low) / 2)
    assert detectable["rerun_difference"] == pytest.approx(
        stats.detectable_unpaired_difference(2000, 0.9, 0.05, 0.8), rel=1e-9
    )
    accuracy = wilson_text(1800, 2000)  # 90.00% [88.60, 91.25]
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    terminal = render_terminal(run_2000, out, shown=Shown.of(run_2000, None, U))
    for text in (markdown, page, terminal):
        assert accuracy in text
        assert "consistent with calibrated" in text and "over-confident by" not in text
    p50 = saved["latency_ms"]["p50"]
    assert f"p50 {p50:.1f} ms [{iv['latency_ms']['p50']['lo']:.1f}, {iv['latency_ms']['p50']['hi']:.1f}]" in terminal
    assert "within this run" in terminal and "within this run" in markdown
    assert f"±{100 * detectable['accuracy_half_width']:.2f} pts" in terminal
    assert "ECE is biased upward on small samples" in markdown and "Wilson score" in markdown
    recall = iv["per_class"][0]["recall"]
    assert f"{recall['estimate']:.3f} [{recall['lo']:.3f}, {recall['hi']:.3f}]" in markdown
    assert 12 <= len(terminal.splitlines()) <= 25


def test_225_images_with_3_mistakes_at_99_5_percent_are_consistent_with_calibrated(tmp_path):
    """The small folder run: the old fixed band said "over-confident by 0.89 points"; 3 mistakes cannot say that."""
    labels = np.arange(225) % 3
    predictions = labels.copy()
    predictions[[10, 100, 200]] = (labels[[10, 100, 200]] + 1) % 3
    confidence = np.linspace(0.991, 1.0, 225)  # mean 99.55%
    small = result(labels, predictions, confidence)
    shown = Shown.of(small, None, U)
    cal = shown.figures["intervals"]["calibration"]
    assert cal["gap"]["estimate"] == pytest.approx(0.9955 - 222 / 225, abs=1e-4)  # +0.89 points
    assert cal["gap"]["lo"] < 0 < cal["gap"]["hi"] and cal["verdict"] == "consistent with calibrated"
    terminal = render_terminal(small, None, shown=shown)
    assert "consistent with calibrated" in terminal and "over-confident" not in terminal
    # The same gap on 5,000 images (67 mistakes at 99.55%: 98.66% right) is more than noise, and the verdict says so.
    labels = np.arange(5000) % 3
    big = result(labels, np.where(np.arange(5000) < 67, (labels + 1) % 3, labels), np.full(5000, 0.9955))
    cal = metrics.intervals(big, U)["calibration"]
    assert cal["gap"]["estimate"] == pytest.approx(0.0089, abs=1e-4) and cal["verdict"] == "over-confident"
    assert "over-confident by +0.89 pts" not in render_terminal(big, None, shown=Shown.of(big, None, U))


def test_confidence_level_changes_every_interval(run_2000):
    wide = metrics.intervals(run_2000, Uncertainty(0.99, 1000, 0, 0.8))
    narrow = metrics.intervals(run_2000, U)
    assert wide["level"] == 0.99 and wide["accuracy"]["level"] == 0.99
    for path in (("accuracy",), ("macro_f1",), ("calibration", "ece"), ("latency_ms", "p50")):
        w, n = wide, narrow
        for key in path:
            w, n = w[key], n[key]
        assert w["hi"] - w["lo"] > n["hi"] - n["lo"], path
    assert wilson_text(1800, 2000, 0.99) in render_terminal(
        run_2000, None, shown=Shown.of(run_2000, None, Uncertainty(0.99, 1000, 0, 0.8))
    )
    assert interval_settings().level == 0.95 and interval_settings(level=0.9).level == 0.9


def test_intervals_are_reproducible():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, 500)
    r = result(labels, np.where(rng.random(500) < 0.8, labels, 0), rng.uniform(0.5, 1, 500), latency=rng.random(500))
    assert json.dumps(metrics.intervals(r, U)) == json.dumps(metrics.intervals(r, U))


# ------------------------------------------------------------------ two models
def paired_runs(n_per_class: int = 1000) -> tuple[RunResult, RunResult]:
    """A right on 950 of each class's 1,000 images; B loses 40 of those and wins 5 back in classes 0-6,
    and trades 5 for 5 in classes 7-9."""
    labels = np.repeat(np.arange(10), n_per_class)
    right_a = np.tile(np.arange(n_per_class) < 950, 10)
    right_b = right_a.copy()
    for c in range(10):
        base = c * n_per_class
        lost = 40 if c < 7 else 5
        right_b[base : base + lost] = False  # A right, B wrong
        right_b[base + 950 : base + 955] = True  # A wrong, B right
    wrong = (labels + 1) % 10
    a = result(labels, np.where(right_a, labels, wrong), np.full(len(labels), 0.95), model="aaaa")
    b = result(labels, np.where(right_b, labels, wrong), np.full(len(labels), 0.92), model="bbbb")
    return a, b


def test_the_headline_sentence_of_a_paired_comparison():
    a, b = paired_runs()
    cmp = compare(a, b, uncertainty=U)
    a_only, b_only = 7 * 40 + 3 * 5, 10 * 5
    p = scipy_stats.binomtest(b_only, a_only + b_only).pvalue
    diff = stats.paired_difference_interval(9500 - a_only, b_only, a_only, 10_000 - 9500 - b_only)
    assert diff.estimate == pytest.approx(-0.0245)
    assert headline(cmp) == (
        f"B is 2.45 points less accurate [{-100 * diff.hi:.2f}, {-100 * diff.lo:.2f}], p = {p:.2g}; it is worse on "
        "7 of 10 classes after correction, better on none."
    )
    iv = cmp.intervals
    assert iv["kind"] == "paired" and iv["p_value"] == pytest.approx(p, rel=1e-12)
    # Holm by hand: class p-values of (40 vs 5) and (5 vs 5) discordant pairs, the smallest times 10, 9, ...
    per_class = [scipy_stats.binomtest(5, 45).pvalue] * 7 + [1.0] * 3
    holm = np.minimum(1, np.maximum.accumulate(np.sort(per_class) * np.arange(10, 0, -1)))
    assert [c["p_holm"] for c in iv["per_class"]] == pytest.approx(list(holm), rel=1e-12)
    assert [c["better"] for c in iv["per_class"]] == ["A"] * 7 + [""] * 3
    assert iv["detectable_difference"] == pytest.approx(stats.detectable_paired_difference(10_000, 0.0345), rel=1e-9)
    f1 = iv["macro_f1_difference"]
    assert f1["lo"] < f1["estimate"] < f1["hi"] < 0 and "paired" in f1["method"]
    table = comparison_blocks(cmp)[-1][1]
    assert table.header[4:6] == ["McNemar p (Holm)", "Better (Holm)"]
    assert [row[5] for row in table.rows] == ["A"] * 7 + [""] * 3
    lines = render(table, "markdown")
    assert f"{100 * iv['per_class'][0]['accuracy_difference']['lo']:+.2f}" in lines
    terminal = render_terminal(a, None, b, Shown.of(a, b, U))
    assert headline(cmp) in terminal and "this comparison detects an accuracy difference of" in terminal
    assert wilson_text(9500, 10_000) in terminal and wilson_text(9500 - a_only + b_only, 10_000) in terminal


def test_report_diff_pairs_by_identity_or_says_it_is_unpaired(tmp_path):
    a, b = paired_runs(100)
    folders = []
    for name, r in (("a", a), ("b", b), ("c", result(a.answers.label, b.answers.prediction, b.answers.confidence,
                                                      model="bbbb", digest="e" * 64))):  # fmt: skip
        folder = tmp_path / "reports" / name
        folder.mkdir(parents=True)
        run_json.save(folder / "report.json", [r], [metrics.figures(r)])
        folders.append(folder)
    text, out = diff_reports(folders[0], folders[1], uncertainty=U)
    assert "Paired by image identity on 1000 images" in text and "p = " in text
    for name in ("diff.md", "diff.html"):
        assert "after correction" in (out / name).read_text()
    assert json.loads((out / "diff.json").read_text())["comparison"]["intervals"]["kind"] == "paired"
    text, out = diff_reports(folders[0], folders[2], uncertainty=U)
    k_a, k_b = int(metrics.correct(a).sum()), int(metrics.correct(b).sum())
    ref = stats.unpaired_difference_interval(k_a, 1000, k_b, 1000)
    assert f"{100 * ref.estimate:+.2f} pts [{100 * ref.lo:+.2f}, {100 * ref.hi:+.2f}]" in text
    assert "Accuracy (unpaired)" in text and "two independent" in text and "McNemar p (Holm)" not in text
    saved = json.loads((out / "diff.json").read_text())["comparison"]["intervals"]
    assert saved["kind"] == "unpaired" and saved["accuracy_difference"]["method"].endswith("(unpaired)")
    # the saved report shown again, at another level
    assert wilson_text(k_a, 1000, 0.9) in show_report(folders[0], uncertainty=Uncertainty(0.9, 1000, 0, 0.8))


# ------------------------------------------------------------------ live, flags, planning
def test_progress_bar_shows_the_running_accuracy_with_its_half_width():
    ci = scipy_stats.binomtest(9451, 10_000).proportion_ci(method="wilson")
    assert progress_text(9451, 10_000, 14.2, 0.95) == f"acc 94.51% ±{50 * (ci.high - ci.low):.2f} pts, p50 14 ms"
    assert progress_text(0, 0, None, 0.95) == "" and progress_text(3, 4, None) == "acc 75.00%"


def test_plan_delta_prints_images_needed_and_starts_nothing(capsys):
    code = main(["--plan-delta", "1", "--plan-accuracy", "94.51", "--plan-disagreement", "5.62"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"{stats.images_needed_paired(0.01, 0.0562):,} images" in out  # 4,409
    assert f"{stats.images_needed_unpaired(0.01, 0.9451):,} images in each run" in out
    assert main(["--plan-delta", "1", "--plan-accuracy", "94.51"]) == 0
    assumed = stats.assumed_disagreement(0.9451, 0.01)
    assert f"{stats.images_needed_paired(0.01, assumed):,} images" in capsys.readouterr().out
    assert main(["--plan-delta", "60", "--plan-accuracy", "50"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


BAD_FLAGS = [
    ["--confidence-level", "1.5"],
    ["--confidence-level", "0.2"],
    ["--confidence-level", "nan"],
    ["--plan-delta", "0"],
    ["--plan-delta", "101"],
    ["--plan-delta", "inf"],
    ["--plan-delta", "1", "--plan-accuracy", "-3"],
    ["--plan-delta", "2", "--plan-disagreement", "1"],
    ["--plan-accuracy", "90"],
    ["report", "--confidence-level", "1"],
    ["report", "--diff", "only-one"],
]


@pytest.mark.parametrize("argv", BAD_FLAGS, ids=" ".join)
def test_bad_interval_flags_get_one_line_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("--" in err[0] or "usage" in err[0])


@settings(max_examples=40, deadline=None)
@given(level=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0.5, 0.999)))
def test_any_confidence_level_is_checked(level):
    from streamer.__main__ import parse_report_args

    if math.isfinite(level) and 0.5 <= level <= 0.999:
        assert getattr(parse_report_args(["--confidence-level", repr(level)]), "intervals.level") == level
    else:
        with pytest.raises(SystemExit) as exit_:
            parse_report_args(["--confidence-level", repr(level)])
        assert exit_.value.code == 2


def test_flags_are_checked_and_plans_made_without_jax():
    """A bad flag exits 2 before JAX loads; --plan-delta reads the model's metadata.json and loads none either."""
    code = (
        "import sys\nfrom streamer.__main__ import main\n"
        "try:\n    main(['--confidence-level', '2'])\nexcept SystemExit as e:\n    print(e.code, 'jax' in sys.modules)\n"
        "print(main(['--plan-delta', '1']), 'jax' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["2", "False"] and len(done.stderr.strip().splitlines()) == 1
    assert "from a baseline accuracy of 94.51%" in lines[1] and lines[-1].split() == ["0", "False"]


def test_reliability_diagram_has_wilson_bars_and_each_bins_count():
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    from streamer.figures import reliability_figure

    rng = np.random.default_rng(4)
    confidence = rng.uniform(0.3, 1.0, 600)
    labels = rng.integers(0, 10, 600)
    r = result(labels, np.where(rng.random(600) < confidence, labels, (labels + 1) % 10), confidence)
    shown = Shown.of(r, None, U)
    fig = reliability_figure(shown)
    try:
        ax, ax_n = fig.axes
        (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        bins = [b for b in shown.figures["intervals"]["calibration"]["bins"] if b["count"]]
        (segments,) = bars.lines[2]
        spans = np.array(sorted((s[0][1], s[1][1]) for s in segments.get_segments()))
        expected = np.array(sorted((b["accuracy"]["lo"], b["accuracy"]["hi"]) for b in bins))
        assert len(bins) == 11 and np.allclose(spans, expected)  # one bar per bin with images: 0.3-1.0
        labels = [t.get_text() for t in ax_n.texts if t.get_text()]
        assert labels == [str(b["count"]) for b in bins] and sum(map(int, labels)) == 600
        assert "Wilson interval" in ax.get_title()
    finally:
        plt.close(fig)
