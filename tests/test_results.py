"""The results layer without a broker: figures by hand, comparisons, report --diff, tables, the saved schemas."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

from broker import wire
from results import metrics
from results import run as run_json
from results.compare import compare, comparison_blocks, mcnemar_p_value, offline_check
from results.run import Answers, Counters, DatasetIdentity, ModelIdentity, ReportError, RunInfo, RunResult
from results.tables import Cell, Table, fmt, render
from streamer.collector import Collector
from streamer.report import diff_reports, render_terminal, show_report

NAMES = ("zero", "one", "two", "three")


def make(labels, predictions, index=None, model="model-a", digest="d" * 64, run_id="r1", **measured) -> RunResult:
    """A run result over images `index` (default 0..n-1) of a dataset of 10, answered as given."""
    n = len(labels)
    index = list(range(n)) if index is None else list(index)
    answers = Answers.of(index, [str(i) for i in index], labels, predictions, np.full(n, 0.75), **measured)
    return RunResult(
        run=RunInfo(run_id=run_id, started_at="2026-11-27T10:00:00Z"),
        model=ModelIdentity(model, (model,)),
        dataset=DatasetIdentity("toy", digest, 10),
        class_names=NAMES,
        answers=answers,
        counters=Counters(sent=10),
    )


# ------------------------------------------------------------------ figures, by hand
def test_accuracy_confusion_and_per_class_by_hand():
    r = make([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2])
    assert metrics.accuracy(r) == pytest.approx(4 / 6)
    assert metrics.confusion(r) == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    zero, one, two, three = metrics.per_class(r)
    assert (zero["support"], zero["precision"], zero["recall"], zero["f1"]) == (3, 1.0, pytest.approx(2 / 3), 0.8)
    assert (one["precision"], one["recall"], one["f1"]) == (0.5, 0.5, 0.5)
    assert (two["precision"], two["recall"], two["f1"]) == (0.5, 1.0, pytest.approx(2 / 3))
    assert zero["accuracy"] == zero["recall"]
    assert three == {"class": "three", "support": 0, "accuracy": None, "precision": None, "recall": None, "f1": None}
    assert metrics.accuracy(make([], [])) is None


def test_counts_count_an_image_answered_twice_once():
    r = make([0, 1, 2], [0, 1, 1], index=[0, 1, 2])
    r.errors = [
        {"index": 2, "request_id": "r1-2", "error": "timeout", "detail": ""},  # also answered: one answer
        {"index": 5, "request_id": "r1-5", "error": "wrong_length", "detail": ""},
        {"index": None, "request_id": None, "error": "wrong_length", "detail": ""},  # not this run's
    ]
    r.missing = [f"r1-{i}" for i in (3, 4, 6, 7, 8, 9)]
    r.counters = Counters(sent=10, duplicates=4, stray=1, invalid=2)
    counts = metrics.counts(r)
    assert counts == {
        "sent": 10, "answered": 4, "correct": 2, "errors": 3, "request_errors": 2, "duplicates": 4,
        "missing": 6, "dead_lettered": 0, "stray": 1, "invalid": 2,
    }  # fmt: skip
    assert metrics.error_reasons(r) == {"timeout": 1, "wrong_length": 2}


def test_latency_server_and_throughput_by_hand():
    t0 = 1_764_000_000.0
    r = make(
        [0] * 5, [0] * 5,
        latency_ms=[10.0, 20.0, 30.0, np.nan, 40.0], queue_ms=[1.0] * 5, compute_ms=[2.0, 2.0, 4.0, 4.0, 4.0],
        batch_size=[4, 4, 16, 16, 16], received_s=t0 + np.array([0.1, 0.5, 1.2, 1.9, 2.5]),
    )  # fmt: skip
    r.published_s = t0 + np.array([0.0, 0.2, 0.4, 0.6, 0.8])
    latency = metrics.latency(r)
    assert (latency["min"], latency["p50"], latency["max"], latency["mean"]) == (10.0, 25.0, 40.0, 25.0)
    assert latency["p90"] == pytest.approx(37.0)  # 30 + 0.7 * (40 - 30), numpy's linear interpolation
    server = metrics.server(r)
    assert server["batch_size_hist"] == {"4": 2, "16": 3} and server["mean_batch_size"] == pytest.approx(11.2)
    assert server["compute_ms"]["p50"] == 4.0 and server["queue_ms"]["mean"] == 1.0
    throughput = metrics.throughput(r)
    assert throughput["first_publish_to_last_result_s"] == pytest.approx(2.5)
    assert throughput["img_per_s"] == pytest.approx(2.0)
    assert throughput["timeline"] == [[0, 2], [1, 2], [2, 1]] and throughput["published_timeline"] == [[0, 5]]
    offline = make([0, 1], [0, 1])  # no receipt times: its throughput is not known
    assert metrics.throughput(offline)["img_per_s"] is None and metrics.latency(offline)["p50"] is None


def test_calibration_uses_whole_probabilities_when_the_result_has_them():
    probs = np.array([[0.8, 0.2, 0, 0], [0.6, 0.4, 0, 0], [0.3, 0.7, 0, 0]], np.float32)
    labels = np.array([0, 1, 1])
    offline = dataclasses.replace(make(labels, [0, 0, 1]), answers=Answers.offline(["0", "1", "2"], labels, probs))
    cal = metrics.calibration(offline)
    assert cal["nll"] == pytest.approx(-(np.log(0.8) + np.log(0.4) + np.log(0.7)) / 3, rel=1e-6)
    assert cal["brier"] == pytest.approx((0.2**2 * 2 + 0.6**2 * 2 + 0.3**2 * 2) / 3, rel=1e-6)
    assert metrics.accuracy(offline) == pytest.approx(2 / 3)
    streamed = make(labels, [0, 0, 1])
    assert metrics.calibration(streamed)["nll"] is None
    assert metrics.calibration(streamed)["mean_confidence"] == 0.75


# ------------------------------------------------------------------ the saved schemas
def test_run_result_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(3)
    n = 50
    r = make(
        rng.integers(0, 4, n), rng.integers(0, 4, n),
        latency_ms=np.where(rng.random(n) < 0.1, np.nan, rng.lognormal(2, 0.5, n)),
        received_s=1_764_000_000 + rng.uniform(0, 5, n), batch_size=rng.integers(1, 64, n),
        stream=[str(i % 3) for i in range(n)], seq=np.arange(n) // 3,
    )  # fmt: skip
    r.answers.confidence = rng.uniform(0.25, 1.0, n).astype(np.float32)
    r.errors = [{"index": 7, "request_id": "r1-7", "error": "empty", "detail": "", "stream": "1", "seq": 2}]
    r.published_s = 1_764_000_000 + np.where(rng.random(n) < 0.05, np.nan, rng.uniform(0, 1, n))
    r.offline = run_json.OfflineCheck("model-a", 0.5, 50, 50, [], True)
    run_json.save(tmp_path / "report.json", [r], [metrics.figures(r)])
    (back,) = run_json.load(tmp_path / "report.json")
    assert back.to_json() == r.to_json()
    assert back.answers.confidence.tobytes() == r.answers.confidence.tobytes()  # float32, bit for bit
    assert np.array_equal(back.answers.latency_ms, r.answers.latency_ms, equal_nan=True)
    assert metrics.figures(back) == metrics.figures(r)


def test_an_older_report_json_gets_one_clear_line(tmp_path, capsys):
    from streamer.__main__ import main

    folder = tmp_path / "20261125-101500-ab12cd34"
    folder.mkdir()
    old = {"run": {"run_id": "ab12cd34"}, "accuracy": 0.9, "predictions": [{"index": 0, "label": 1, "prediction": 1}]}
    (folder / "report.json").write_text(json.dumps(old))
    with pytest.raises(ReportError, match="older version"):
        run_json.load(folder / "report.json")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "older version of the streamer" in err[0] and str(folder) in err[0]
    (folder / "report.json").write_text("{not json")
    with pytest.raises(ReportError, match="not readable JSON"):
        run_json.load(folder / "report.json")


def test_collector_state_is_written_and_read_by_one_schema(tmp_path):
    state = tmp_path / "state.json"
    first = Collector("run", np.array([0, 1, 2, 3]), list(NAMES), str(state), image_ids=["a", "b", "c", "d"])
    sent = time.time_ns()
    results = [
        wire.Prediction("run-0", "s0", 0, sent, 0, "zero", 0.91234567, [[0, 0.9]], {"queue_ms": 1.5, "batch_size": 2}),
        wire.Prediction("run-2", "s0", 2, sent, 1, "one", 0.5, [[1, 0.5]], {"compute_ms": 3.25, "batch_size": 2}),
        wire.Prediction("run-1", "s0", 1, sent, 1, "one", 0.75, [[1, 0.75]], {}),  # out of order on s0
    ]
    for result in results:
        first.add_message(wire.encode_results([result], "model-a")[0])
    first.add_results("model-a", [{"request_id": "run-3", "error": "empty", "detail": "no bytes"}])
    first.add_results("model-a", [{"request_id": "run-0", "label": 0, "confidence": 0.9}])  # a duplicate
    first.flush_state()
    again = Collector("run", np.array([0, 1, 2, 3]), list(NAMES), str(state), image_ids=["a", "b", "c", "d"])
    assert again.result().to_json() == first.result().to_json()
    result = again.result()
    assert result.answers.image == ["a", "b", "c"] and result.answers.confidence[0] == np.float32(0.91234567)
    assert result.ordering.violations == 1 and metrics.counts(result)["duplicates"] == 1
    assert metrics.counts(result)["answered"] == 4 and result.errors[0]["index"] == 3


# ------------------------------------------------------------------ comparisons
# Ten images; A is right on 0-7 and answers all ten; B answers 0-8 (not 9), in another order, right on 2-8.
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
A_PRED = np.where(np.arange(10) < 8, LABELS, (LABELS + 1) % 3)
B_ORDER = [5, 3, 8, 0, 2, 7, 1, 6, 4]
B_PRED = {i: (LABELS[i] if i >= 2 else (LABELS[i] + 1) % 3) for i in B_ORDER}


def run_a(**kw) -> RunResult:
    return make(LABELS, A_PRED, **kw)


def run_b(digest="d" * 64, run_id="r2") -> RunResult:
    return make(
        LABELS[B_ORDER], [B_PRED[i] for i in B_ORDER], index=B_ORDER, model="model-b", digest=digest, run_id=run_id
    )


def test_a_paired_comparison_matches_images_by_identity_not_position():
    cmp = compare(run_a(), run_b())
    assert cmp.paired and cmp.paired_images == 9
    assert cmp.mcnemar == {
        "both_right": 6, "a_right_b_wrong": 2, "a_wrong_b_right": 1, "both_wrong": 0,
        "p_value": 1.0, "significant_at_0.05": False,
    }  # fmt: skip
    assert (cmp.accuracy_a, cmp.accuracy_b) == (pytest.approx(8 / 9), pytest.approx(7 / 9))
    assert cmp.accuracy_delta == pytest.approx(-1 / 9)
    assert cmp.disagreements == 3 and sorted(e["index"] for e in cmp.disagreement_examples) == [0, 1, 8]
    zero = cmp.per_class[0]  # class 0: images 0, 3, 6, 9; A right on 0, 3, 6; B (on 0, 3, 6) right on 3, 6
    assert (zero["accuracy_a"], zero["accuracy_b"]) == (0.75, pytest.approx(2 / 3))
    assert zero["accuracy_delta"] == pytest.approx(2 / 3 - 0.75)
    saved = cmp.to_json()
    assert saved["mcnemar"]["a_right_b_wrong"] == 2 and saved["paired"] is True and "b" not in saved


def test_mcnemar_p_value_on_a_known_table():
    # 2·P(Binomial(20, 1/2) <= 4) = 2·(1 + 20 + 190 + 1140 + 4845) / 2^20
    assert mcnemar_p_value(16, 4) == pytest.approx(2 * 6196 / 2**20, rel=1e-12)


def test_runs_over_different_images_are_compared_unpaired_and_say_so():
    cmp = compare(run_a(), run_b(digest="e" * 64))
    assert not cmp.paired and cmp.paired_images == 0 and cmp.mcnemar is None and cmp.disagreements is None
    assert (cmp.accuracy_a, cmp.accuracy_b) == (0.8, pytest.approx(7 / 9))  # each run on its own images
    assert "unpaired" in cmp.note
    kinds = [kind for kind, _ in comparison_blocks(cmp)]
    assert kinds == ["table", "text", "table"]  # overview, why unpaired, per class: no McNemar table
    assert "McNemar's test needs paired images" in comparison_blocks(cmp)[1][1]
    assert any(row[0] == "Accuracy (unpaired)" for row in comparison_blocks(cmp)[0][1].rows)


def test_offline_check_is_two_results_over_the_same_images_compared():
    streamed = run_a()
    assert offline_check(streamed, run_a()).identical
    wrong = make(LABELS, np.where(np.arange(10) == 4, 2, A_PRED))
    check = offline_check(streamed, wrong)
    assert not check.identical and check.mismatches == [4] and (check.agree, check.compared) == (9, 10)
    part = offline_check(make(LABELS[:9], A_PRED[:9]), run_a())  # image 9 never answered: all agree, not identical
    assert not part.identical and part.mismatches == [] and (part.agree, part.compared) == (9, 9)
    other = offline_check(run_b(), run_a())  # matched by image, listed in image order
    assert other.mismatches == [0, 1, 8] and other.agree == 6


# ------------------------------------------------------------------ report --diff and show, rendered
def saved(folder: Path, *runs: RunResult) -> Path:
    folder.mkdir(parents=True)
    cmp = compare(*runs) if len(runs) > 1 else None
    figures = [cmp.fa, cmp.fb] if cmp else [metrics.figures(runs[0])]
    run_json.save(folder / "report.json", runs, figures, cmp.to_json() if cmp else None)
    return folder


def test_report_diff_renders_the_one_comparison(tmp_path):
    a = saved(tmp_path / "reports" / "20261126-a", run_a())
    b = saved(tmp_path / "reports" / "20261127-b", run_b())
    text, out = diff_reports(a, b)
    assert "Accuracy (9 paired images)" in text and "88.89%" in text and "77.78%" in text and "-11.11 pts" in text
    assert "Accuracy (all each answered)" in text and "80.00%" in text  # A answered one image B did not
    assert "DIFFERENT" in text and "r1 2026-11-27T10:00:00Z" in text
    assert "A right/B wrong 2, A wrong/B right 1; exact McNemar p = 1" in text
    assert out.parent == tmp_path / "reports" and out.name.startswith("diff-")
    markdown = (out / "diff.md").read_text()
    assert "# Run A against run B" in markdown and "## Per class" in markdown and "McNemar (exact" in markdown
    diff = json.loads((out / "diff.json").read_text())
    overview = {row[""]: row for row in diff["overview"]}
    assert overview["Accuracy (9 paired images)"]["B - A"] == "-11.11 pts"
    assert diff["mcnemar"][0] == {"McNemar (exact, two-sided)": "A right", "B right": "6", "B wrong": "2"}
    assert diff["per_class"][0]["Δ accuracy"] == "-8.33 pts"
    assert diff["comparison"]["paired_images"] == 9
    same, _ = diff_reports(a, a)
    assert "same" in same and "+0.00 pts" in same


def test_a_saved_two_model_run_shows_its_comparison(tmp_path):
    folder = saved(tmp_path / "run", run_a(), run_b())
    shown = show_report(folder)
    assert "Accuracy (9 paired images)" in shown and "model-b" in shown and "exact McNemar p = 1" in shown
    assert render_terminal(run_a()).count("\n") < 25 <= shown.count("\n")  # alone: a screenful; with B: + the table


# ------------------------------------------------------------------ the table model
def test_cells_are_written_by_their_kind():
    assert [fmt(0.94512, "percent"), fmt(-0.0294, "pts"), fmt(14.06, "ms"), fmt(-2.5, "signed_ms")] == [
        "94.51%", "-2.94 pts", "14.1 ms", "-2.5 ms",
    ]  # fmt: skip
    assert [fmt(0.000123456, "p_value"), fmt(3, "count"), fmt(0.91234, "number", 3), fmt(2.0)] == [
        "0.000123", "3", "0.912", "2.0",
    ]  # fmt: skip
    assert fmt(None, "ms") == fmt(float("nan"), "percent") == "n/a"


def test_one_table_renders_to_terminal_markdown_and_html():
    table = Table(
        ["Metric", "A", "B"],
        [
            ["Accuracy", Cell(0.9451, "percent"), Cell(None, "percent")],
            ["a|b <i>", Cell(7, "count"), Cell(12.34, "ms")],
        ],
    )
    assert table.numeric() == [False, True, True]
    terminal = render(table, "terminal").splitlines()
    assert terminal[2].split() == ["Accuracy", "94.51%", "n/a"] and terminal[2].endswith("n/a")
    assert terminal[3].rstrip().endswith("12.3 ms")  # right-aligned: numbers end in one column
    markdown = render(table, "markdown").splitlines()
    assert markdown[1].replace("-", "") == "|:|:|:|" and "a\\|b <i>" in markdown[3]
    page = render(table, "html")
    assert "a|b &lt;i&gt;" in page and page.count('style="text-align: right;"') == 2 * 3
    assert "<script" not in page and "http" not in page
    empty = Table(["x"], [])
    assert [render(empty, form) for form in ("terminal", "markdown", "html")] == [
        "  none",
        "_none_",
        "<p><em>none</em></p>",
    ]
    assert table.records()[0] == {"Metric": "Accuracy", "A": "94.51%", "B": "n/a"}
