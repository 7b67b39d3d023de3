"""Tests for streamer.report: the files it writes, their content, and the terminal summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from streamer.report import latest_report, render_terminal, show_report, write_report

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
PLOT_FILES = ["confusion_matrix.png", "latency.png", "throughput.png", "batch_sizes.png", "reliability.png"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _per_class(confusion: np.ndarray) -> list[dict]:
    rows = []
    for k, name in enumerate(CLASS_NAMES):
        support, predicted, hits = int(confusion[k].sum()), int(confusion[:, k].sum()), int(confusion[k, k])
        recall = hits / support if support else None
        precision = hits / predicted if predicted else None
        f1 = 2 * precision * recall / (precision + recall) if precision and recall else None
        rows.append(
            {"class": name, "support": support, "accuracy": recall, "precision": precision, "recall": recall, "f1": f1}
        )
    return rows


def _make_summary(n: int = 300) -> dict:
    """A plausible finished run: ~85% accuracy, log-normal latencies, a few errors and missing ids."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=n)
    predictions = np.where(rng.random(n) < 0.85, labels, rng.integers(0, 10, size=n))
    latencies = rng.lognormal(mean=2.1, sigma=0.4, size=n)
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (labels, predictions), 1)
    correct = int((labels == predictions).sum())
    preds = [
        {
            "index": i,
            "request_id": f"run-abc-{i:06d}",
            "stream": str(i % 4),
            "seq": i // 4,
            "label": int(labels[i]),
            "prediction": int(predictions[i]),
            "confidence": 0.9,
            "latency_ms": None if i == 5 else round(float(latencies[i]), 3),
        }
        for i in range(n)
    ]
    pct = {f"p{q}": round(float(np.percentile(latencies, q)), 3) for q in (50, 90, 95, 99)}
    return {
        "run": {
            "started_at": "2026-11-25T02:40:00Z",
            "finished_at": "2026-11-25T02:40:05Z",
            "wall_s": 5.2,
            "rate_target": 100.0,
            "rate_achieved": 99.1,
            "streams": 4,
            "limit": n,
            "replicas": 1,
            "server_mode": "managed",
            "broker": "emulator 127.0.0.1:8085",
            "content_type": "raw",
            "versions": {"jax": "0.10.2", "flax": "0.12.8", "google-cloud-pubsub": "2.44.0"},
        },
        "model": {"identity": "70748c8aa5cf4f07", "seen": ["70748c8aa5cf4f07"]},
        "class_names": CLASS_NAMES,
        "counts": {
            "sent": n + 3,
            "answered": n,
            "correct": correct,
            "errors": 1,
            "duplicates": 2,
            "missing": 2,
            "dead_lettered": 0,
            "stray": 0,
        },
        "accuracy": correct / n,
        "per_class": _per_class(confusion),
        "confusion": confusion.tolist(),
        "latency_ms": {
            "min": round(float(latencies.min()), 3),
            **pct,
            "max": round(float(latencies.max()), 3),
            "mean": round(float(latencies.mean()), 3),
        },
        "server": {
            "queue_ms": {"p50": 1.2, "p99": 4.5, "mean": 1.5},
            "compute_ms": {"p50": 3.4, "p99": 6.0, "mean": 3.6},
            "batch_size_hist": {"1": 12, "4": 40, "16": 96, "64": 152},
            "mean_batch_size": 35.1,
        },
        "throughput": {
            "img_per_s": 98.7,
            "first_publish_to_last_result_s": 3.04,
            "timeline": [[0, 90], [1, 101], [2, 99], [3, 10]],
            "published_timeline": [[0, 100], [1, 100], [2, 100], [3, 3]],
        },
        "ordering": {"violations": 0, "by_stream": {"0": 0, "1": 0, "2": 0, "3": 0}},
        "errors": [{"request_id": "bad-1", "error": "wrong_length", "detail": "expected 784 bytes, got 12"}],
        "error_reasons": {"wrong_length": 1},
        "missing": ["run-abc-000300", "run-abc-000301"],
        "predictions": preds,
    }


def _make_empty_summary() -> dict:
    """A run where nothing was answered: None accuracy/latencies, no predictions, empty timelines."""
    summary = _make_summary(10)
    summary["counts"].update(answered=0, correct=0, missing=10, errors=0, duplicates=0)
    summary.update(
        accuracy=None,
        per_class=[
            dict(row, support=0, accuracy=None, precision=None, recall=None, f1=None) for row in summary["per_class"]
        ],
        confusion=[[0] * 10 for _ in range(10)],
        latency_ms=dict.fromkeys(["min", "p50", "p90", "p95", "p99", "max", "mean"]),
        server={"queue_ms": {}, "compute_ms": {}, "batch_size_hist": {}, "mean_batch_size": None},
        throughput={"img_per_s": None, "first_publish_to_last_result_s": None, "timeline": []},
        errors=[],
        error_reasons={},
        missing=[f"run-abc-{i:06d}" for i in range(10)],
        predictions=[],
    )
    return summary


@pytest.fixture
def summary() -> dict:
    return _make_summary()


@pytest.fixture
def report_dir(summary: dict, tmp_path: Path) -> Path:
    return write_report(summary, tmp_path / "run-1")


def test_write_report_creates_all_files(summary: dict, report_dir: Path) -> None:
    for name in ["report.json", "report.md", "report.html", *PLOT_FILES]:
        assert (report_dir / name).is_file(), name
    assert json.loads((report_dir / "report.json").read_text()) == summary


@pytest.mark.parametrize("name", PLOT_FILES)
def test_plots_are_valid_pngs(report_dir: Path, name: str) -> None:
    path = report_dir / name
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width = mpimg.imread(path).shape[:2]
    assert width >= 400 and height >= 300


def test_markdown_has_accuracy_tables_and_image_links(summary: dict, report_dir: Path) -> None:
    markdown = (report_dir / "report.md").read_text()
    assert f"{100 * summary['accuracy']:.2f}%" in markdown
    for name in PLOT_FILES:
        assert f"]({name})" in markdown
    assert "| T-shirt/top |" in markdown  # per-class and confusion tables
    assert "wrong_length" in markdown and "run-abc-000301" in markdown


def test_html_is_self_contained(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(PLOT_FILES)
    assert "http://" not in page and "https://" not in page
    assert "T-shirt/top" in page


def test_render_terminal_mentions_key_numbers(summary: dict, tmp_path: Path) -> None:
    text = render_terminal(summary, tmp_path)
    assert f"{100 * summary['accuracy']:.2f}%" in text
    assert f"p50 {summary['latency_ms']['p50']:.1f} ms" in text
    assert f"p99 {summary['latency_ms']['p99']:.1f} ms" in text
    assert str(tmp_path) in text
    assert 12 <= len(text.splitlines()) <= 25


def test_show_report_picks_newest(summary: dict, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    older = write_report(dict(summary, accuracy=0.5), reports / "b-older")
    newer = write_report(dict(summary, accuracy=0.75), reports / "a-newer")
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
    out = write_report(_make_empty_summary(), tmp_path / "empty")
    for name in ["report.json", "report.md", "report.html", *PLOT_FILES]:
        assert (out / name).is_file(), name
    assert "n/a" in (out / "report.md").read_text()
    assert "n/a" in render_terminal(json.loads((out / "report.json").read_text()))
