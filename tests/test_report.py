"""Tests for streamer.report: the files it writes, their content, and the terminal summary."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from results import metrics
from results import run as run_json
from results.run import Answers, Counters, DatasetIdentity, ModelIdentity, RunInfo, RunResult
from streamer.report import latest_report, render_terminal, show_report, write_report

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
PLOT_FILES = ["confusion_matrix.png", "latency.png", "throughput.png", "batch_sizes.png", "reliability.png"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _make_result(n: int = 300, accuracy: float | None = None) -> RunResult:
    """A plausible finished run: ~85% accuracy (or exactly `accuracy`), log-normal latencies, a few errors and missing ids."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=n)
    predictions = np.where(rng.random(n) < 0.85, labels, rng.integers(0, 10, size=n))
    if accuracy is not None:
        right = int(round(accuracy * n))
        predictions = np.where(np.arange(n) < right, labels, (labels + 1) % 10)
    latencies = rng.lognormal(mean=2.1, sigma=0.4, size=n)
    latencies[5] = np.nan  # unknown for one request
    received = 1_764_000_000.0 + np.sort(rng.uniform(0.0, 3.0, size=n))
    answers = Answers.of(
        np.arange(n), [str(i) for i in range(n)], labels, predictions, np.full(n, 0.9),
        latency_ms=latencies, queue_ms=rng.uniform(0.5, 5.0, size=n), compute_ms=rng.uniform(2.0, 6.0, size=n),
        batch_size=rng.choice([1, 4, 16, 64], size=n), received_s=received,
        stream=[str(i % 4) for i in range(n)], seq=np.arange(n) // 4,
    )  # fmt: skip
    return RunResult(
        run=RunInfo(
            run_id="run-abc",
            started_at="2026-11-25T02:40:00Z",
            finished_at="2026-11-25T02:40:05Z",
            wall_s=5.2,
            rate_target=100.0,
            rate_achieved=99.1,
            streams=4,
            limit=n,
            replicas=1,
            server_mode="managed",
            broker="emulator 127.0.0.1:8085",
            content_type="raw",
            versions={"jax": "0.10.2", "flax": "0.12.8", "google-cloud-pubsub": "2.44.0"},
        ),  # fmt: skip
        model=ModelIdentity("70748c8aa5cf4f07", ("70748c8aa5cf4f07",)),
        dataset=DatasetIdentity("fashion_mnist", "ab" * 32, n + 2),
        class_names=tuple(CLASS_NAMES),
        answers=answers,
        counters=Counters(sent=n + 2, duplicates=2),
        errors=[
            {"index": None, "request_id": "bad-1", "error": "wrong_length", "detail": "expected 784 bytes, got 12"}
        ],
        missing=["run-abc-000300", "run-abc-000301"],
        published_s=received.min() - 0.01 + np.arange(n + 2) / 100.0,
    )


def _make_empty_result() -> RunResult:
    """A run where nothing was answered: no accuracy or latencies, no predictions, empty timelines."""
    result = _make_result(10)
    answers = Answers.of([], [], [], [], [])
    return dataclasses.replace(
        result, answers=answers, errors=[], missing=[f"run-abc-{i:06d}" for i in range(10)], published_s=None
    )


@pytest.fixture(scope="module")
def summary() -> RunResult:
    return _make_result()


@pytest.fixture(scope="module")
def report_dir(summary: RunResult, tmp_path_factory) -> Path:
    return write_report(summary, tmp_path_factory.mktemp("reports") / "run-1")


def test_write_report_creates_all_files(summary: RunResult, report_dir: Path) -> None:
    for name in ["report.json", "report.md", "report.html", *PLOT_FILES]:
        assert (report_dir / name).is_file(), name
    # report.json reads back as exactly the run's result, and holds its figures for readers.
    assert [r.to_json() for r in run_json.load(report_dir / "report.json")] == [summary.to_json()]
    saved = json.loads((report_dir / "report.json").read_text())
    assert {name: saved[name] for name in metrics.FIGURES} == json.loads(json.dumps(metrics.figures(summary)))


@pytest.mark.parametrize("name", PLOT_FILES)
def test_plots_are_valid_pngs(report_dir: Path, name: str) -> None:
    path = report_dir / name
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width = mpimg.imread(path).shape[:2]
    assert width >= 400 and height >= 300


def test_markdown_has_accuracy_tables_and_image_links(summary: RunResult, report_dir: Path) -> None:
    markdown = (report_dir / "report.md").read_text()
    assert f"{100 * metrics.accuracy(summary):.2f}%" in markdown
    for name in PLOT_FILES:
        assert f"]({name})" in markdown
    assert "| T-shirt/top |" in markdown  # per-class and confusion tables
    assert "wrong_length" in markdown and "run-abc-000301" in markdown


def test_html_is_self_contained(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(PLOT_FILES)
    assert "http://" not in page and "https://" not in page
    assert "T-shirt/top" in page


def test_render_terminal_mentions_key_numbers(summary: RunResult, tmp_path: Path) -> None:
    text = render_terminal(summary, tmp_path)
    assert f"{100 * metrics.accuracy(summary):.2f}%" in text
    assert f"p50 {metrics.latency(summary)['p50']:.1f} ms" in text
    assert f"p99 {metrics.latency(summary)['p99']:.1f} ms" in text
    assert str(tmp_path) in text
    assert 12 <= len(text.splitlines()) <= 25


def test_show_report_picks_newest(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    older = write_report(_make_result(accuracy=0.5), reports / "b-older")
    newer = write_report(_make_result(accuracy=0.75), reports / "a-newer")
    os.utime(older / "report.json", (1_000_000, 1_000_000))
    (reports / "not-a-report").mkdir()
    assert latest_report(reports) == newer
    assert "75.00%" in show_report(None, reports)
    assert "50.00%" in show_report(older)
    assert "50.00%" in show_report(older / "report.json")


def test_show_report_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="report.json"):
        show_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="No report found"):
        show_report(None, tmp_path / "nowhere")


def test_empty_run_still_writes_report(tmp_path: Path) -> None:
    out = write_report(_make_empty_result(), tmp_path / "empty")
    for name in ["report.json", "report.md", "report.html", *PLOT_FILES]:
        assert (out / name).is_file(), name
    assert "n/a" in (out / "report.md").read_text()
    assert "n/a" in render_terminal(run_json.load(out / "report.json")[0])
