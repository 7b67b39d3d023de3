"""The streamer, collector and report against Google's real Pub/Sub emulator."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from broker import wire
from broker.pubsub import BulkPublisher, Publisher, ensure_topology, pull_until
from results import metrics
from streamer.collector import Collector
from streamer.stream import publish_dataset
from tests.conftest import REPO

pytestmark = pytest.mark.emulator


def run_streamer(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


def load_report(reports_dir: Path) -> tuple[Path, dict]:
    (folder,) = [p for p in reports_dir.iterdir() if (p / "report.json").is_file()]
    return folder, json.loads((folder / "report.json").read_text())


@pytest.mark.timeout(240)
def test_streamed_run_matches_offline_prediction_by_prediction(emulator, suffix, model_dir, tmp_path):
    from train.evaluate import evaluate_model

    n = 300
    proc = run_streamer(
        "--limit",
        str(n),
        "--rate",
        "0",
        "--streams",
        "3",
        "--topic-suffix",
        suffix,
        "--model",
        str(model_dir),
        "--reports-dir",
        str(tmp_path),
        timeout=200,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # where the managed server logs
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp_path.glob("server-*.log")), "a finished run removes its managed server's log"
    folder, report = load_report(tmp_path)
    counts = report["counts"]
    assert counts["sent"] == counts["answered"] == n and counts["missing"] == 0 and counts["errors"] == 0
    offline = evaluate_model(model_dir, n)
    streamed = {p["index"]: p["prediction"] for p in report["predictions"]}
    assert sorted(streamed) == list(range(n)), "every request answered exactly once"
    assert [streamed[i] for i in range(n)] == offline.answers.prediction.tolist()
    assert report["accuracy"] == pytest.approx(metrics.accuracy(offline), abs=0)
    assert report["offline"]["identical"] is True
    assert report["ordering"]["violations"] == 0
    assert report["latency_ms"]["p50"] is not None and report["latency_ms"]["p99"] >= report["latency_ms"]["p50"]
    for name in ("report.md", "report.html", "confusion_matrix.png", "latency.png", "throughput.png"):
        assert (folder / name).is_file()
    # `python -m streamer report DIR` shows it again.
    shown = run_streamer("report", str(folder))
    assert shown.returncode == 0 and f"{report['accuracy']:.2%}" in shown.stdout


def test_rate_limiter_keeps_the_rate(emulator, topology, test_images):
    publisher = BulkPublisher(topology.requests_topic_path)
    try:
        started = time.monotonic()
        sent = asyncio.run(publish_dataset(publisher, test_images.images[:400], "rate", 400.0, 4))
        elapsed = time.monotonic() - started
    finally:
        publisher.close()
    achieved = (len(sent) - 1) / (sent.max() - sent.min())
    assert 0.9 * 400 <= achieved <= 1.1 * 400, achieved
    assert 0.9 <= elapsed <= 1.6, elapsed


def test_publish_interval_puts_what_fell_due_into_one_call_and_keeps_the_rate(emulator, topology, test_images):
    class Counting(BulkPublisher):  # the real publisher, counting its Publish calls
        calls = 0

        def publish_batch(self, items):
            Counting.calls += 1
            return super().publish_batch(items)

    publisher = Counting(topology.requests_topic_path)
    try:
        sent = asyncio.run(publish_dataset(publisher, test_images.images[:400], "tick", 400.0, 4, interval_s=0.05))
    finally:
        publisher.close()
    achieved = (len(sent) - 1) / (sent.max() - sent.min())
    assert 0.9 * 400 <= achieved <= 1.1 * 400, achieved
    assert Counting.calls <= 1.0 / 0.05 + 2, Counting.calls  # ~1 s of images: one call per 50 ms, not per image
    got = pull_until(topology.requests_subscription_path, 400, 30.0, poll_s=2.0)
    by_stream: dict[str, list[int]] = {}
    for m in got:
        by_stream.setdefault(m.attributes["stream"], []).append(int(m.attributes["seq"]))
    assert sorted(len(v) for v in by_stream.values()) == [100] * 4
    assert all(seqs == sorted(seqs) for seqs in by_stream.values())


def test_single_image_mode(shared_suffix):
    proc = run_streamer("--index", "0", "--server", "external", "--topic-suffix", shared_suffix, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "label" in proc.stdout and "confidence" in proc.stdout and "(true: Ankle boot)" in proc.stdout


def _result_message(run_id: str, i: int, stream: str, seq: int, label: int = 0) -> bytes:
    result = wire.Prediction(f"{run_id}-{i}", stream, seq, time.time_ns(), label, "x", 0.9, [[label, 0.9]], {})
    return wire.encode_results([result], "test-model")[0]


def test_duplicate_result_is_counted_once(topology):
    labels = np.zeros(2, np.int32)
    collector = Collector("dup", labels, [str(i) for i in range(10)])
    subscription = collector.subscribe(topology.results_subscription_path)
    publisher = Publisher(topology.results_topic_path)
    try:
        for data in (
            _result_message("dup", 0, "0", 0),
            _result_message("dup", 0, "0", 0),
            _result_message("dup", 1, "0", 1),
        ):
            publisher.publish(data, "0").result(timeout=10)
        assert collector.done.wait(30)
        time.sleep(0.5)
    finally:
        publisher.close()
        subscription.close()
    counts = metrics.counts(collector.result())
    assert counts["answered"] == 2 and counts["duplicates"] == 1
    assert counts["correct"] == 2


def test_collector_detects_ordering_violations():
    collector = Collector("ord", np.zeros(4, np.int32), [str(i) for i in range(10)])
    for i, seq in ((0, 0), (2, 2), (1, 1), (3, 3)):  # seq 1 arrives after seq 2 on stream "a"
        collector.add_message(_result_message("ord", i, "a", seq))
    ordering = collector.result().ordering
    assert ordering.violations == 1 and ordering.by_stream == {"a": 1}


def test_missing_results_are_reported_after_the_timeout(emulator, suffix, tmp_path):
    """No server is running: nothing is answered, and the report names every missing request."""
    proc = run_streamer(
        "--limit",
        "5",
        "--server",
        "external",
        "--timeout",
        "4",
        "--topic-suffix",
        suffix,
        "--reports-dir",
        str(tmp_path),
        "--no-verify",
        timeout=60,
    )
    assert proc.returncode == 1
    _, report = load_report(tmp_path)
    assert report["counts"]["missing"] == 5 and len(report["missing"]) == 5
    assert "missing 5" in proc.stdout


GARBAGE = [  # (data, attributes) published on the results topic while a run collects
    (b"not json at all", {}),
    (b"[1, 2, 3]", {}),
    (b'{"model": 5, "results": []}', {}),
    (b'{"model": "x", "results": {"a": 1}}', {}),
    (b'{"model": "x", "results": [7, "s", null, []]}', {}),
    (b'{"model": "x", "results": [{"request_id": "RUN-0", "label": 99, "confidence": 0.5}]}', {}),
    (b'{"model": "x", "results": [{"request_id": "RUN-1", "label": "3", "confidence": 0.5}]}', {}),
    (b'{"model": "x", "results": [{"request_id": "RUN-2", "label": 1, "confidence": 7}]}', {}),
    (b'{"model": "x", "results": [{"request_id": "RUN-3", "label": 1, "confidence": 0.5, "seq": "x"}]}', {}),
    (b'{"model": "x", "results": [{"request_id": "RUN-4", "label": 1, "confidence": 0.5, "seq": 1e400}]}', {}),
    (b'{"model": "x", "results": [{"request_id": "RUN-5", "label": 1, "confidence": 0.5, "timing": []}]}', {}),
    (b'{"model": "x", "results": [{"request_id": ["RUN-6"], "label": 1, "confidence": 0.5}]}', {}),
    (b'{"model": "x", "results": [{"request_id": "other-run-1", "label": 1, "confidence": 0.5}]}', {}),
    (b'{"model": "x", "results": [{"request_id": "other-run-2", "error": "empty"}]}', {}),
    (
        b'{"model": "x", "results": ['
        + b'{"request_id": "other-run-3", "label": 1, "confidence": 0.5, "x": "'
        + b"y" * 3_000_000
        + b'"}]}',
        {},
    ),
]
INVALID = 15  # 4 bodies that are not result messages, 4 non-objects in one list, 7 results with bad fields


@pytest.mark.timeout(240)
def test_garbage_on_the_results_topic_is_counted_not_fatal(shared_suffix, model_dir, tmp_path):
    """Messages that are not ours or not valid are counted as stray or invalid; the run completes."""
    import threading

    from tests.conftest import fresh_topology

    run_id = "garbagerun"
    suffix = shared_suffix  # the shared server: the test needs a server that answers, not one of its own
    topo = fresh_topology(suffix)
    ensure_topology(topo)  # the run's results subscription, made before the garbage that it must hold is published
    publisher = Publisher(topo.results_topic_path)

    def publish_garbage() -> None:
        time.sleep(2.0)  # while the run is collecting
        for data, attributes in GARBAGE:
            publisher.publish(data.replace(b"RUN", run_id.encode()), "g", **attributes).result(timeout=30)

    thread = threading.Thread(target=publish_garbage, daemon=True)
    thread.start()
    proc = run_streamer(
        "--server", "external", "--topic-suffix", suffix, "--limit", "400", "--rate", "100",
        "--run-id", run_id, "--model", str(model_dir), "--reports-dir", str(tmp_path), timeout=200,
    )  # fmt: skip
    thread.join(30)
    publisher.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, report = load_report(tmp_path)
    counts = report["counts"]
    assert counts["answered"] == counts["sent"] == 400 and counts["missing"] == 0
    assert counts["invalid"] == INVALID and counts["stray"] == 3  # two foreign ids and the 3 MB one
    assert report["offline"]["identical"] is True
    # Logged once per kind, not once per message.
    assert proc.stderr.count("invalid result on the results topic") <= INVALID
