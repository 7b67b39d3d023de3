"""Operations: a server's Prometheus endpoint, scraped after a small known run, and its log format.

One server (module scope) gets 50 good and 5 bad requests on a fresh topology against Google's
real Pub/Sub emulator; every test below checks one part of the scrape against what was sent.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker import wire
from tests.conftest import (
    collect_results,
    free_port_run,
    metered_server,
    publish_images,
    publish_messages,
)

pytestmark = pytest.mark.emulator

N_GOOD = 50
BAD = {  # request id -> (payload, attributes, the error reason the server must count)
    "bad-empty-0": (b"", {"content_type": wire.RAW, "shape": "28,28,1"}, "empty"),
    "bad-empty-1": (b"", {"content_type": wire.RAW, "shape": "28,28,1"}, "empty"),
    "bad-type": (b"\0" * 784, {"content_type": "text/plain"}, "unsupported_content_type"),
    "bad-length": (b"\0" * 100, {"content_type": wire.RAW, "shape": "28,28,1"}, "wrong_length"),
    "bad-png": (b"\x89PNG\r\n\x1a\nnot a png", {"content_type": wire.PNG}, "undecodable_image"),
}


class Scrape:
    def __init__(self, text: str):
        self.text = text
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels) -> float:
        return sum(
            s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def labels(self, name: str) -> list[dict]:
        return [s.labels for s in self.samples if s.name == name]


@pytest.fixture(scope="module")
def run(emulator, model_dir, test_images):
    """(scrape, results, result-message bodies, server log, model metadata) after 50 good + 5 bad requests."""
    from train.checkpoint import load_metadata

    with metered_server(model_dir) as (server, topo, port):
        publish_images(topo, test_images.images[:N_GOOD], run_id="m")
        publish_messages(topo, [(data, "b", {"request_id": rid, **attrs}) for rid, (data, attrs, _) in BAD.items()])
        results, bodies = collect_results(topo, N_GOOD + len(BAD), timeout=60)
        assert len(results) == N_GOOD + len(BAD)
        deadline = time.monotonic() + 15  # acks (and so the result counter) settle just after the publishes
        while True:
            scrape = Scrape(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
            settled = scrape.value("icc_results_total") >= N_GOOD + len(BAD)
            if settled and scrape.value("icc_messages_outstanding") == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        yield scrape, results, bodies, server.log_text(), load_metadata(model_dir)


@pytest.mark.timeout(120)
def test_requests_and_results_are_counted(run):
    scrape, results, *_ = run
    assert scrape.value("icc_requests_total") == N_GOOD + len(BAD)  # pulled, no redelivery in a run this small
    assert scrape.value("icc_results_total") == N_GOOD + len(BAD)  # every one answered (and acked)
    assert sum("error" not in r for r in results) == N_GOOD


@pytest.mark.timeout(120)
def test_errors_are_counted_by_reason(run):
    scrape, results, *_ = run
    expected = Counter(reason for *_, reason in BAD.values())
    counted = {
        labels["reason"]: scrape.value("icc_errors_total", **labels) for labels in scrape.labels("icc_errors_total")
    }
    assert counted == dict(expected)
    assert Counter(r["error"] for r in results if "error" in r) == expected


@pytest.mark.timeout(120)
def test_batch_size_and_latency_histograms(run):
    scrape, results, *_ = run
    batches = scrape.value("icc_batch_size_count")
    assert 1 <= batches <= N_GOOD + len(BAD)
    assert scrape.value("icc_batch_size_sum") == N_GOOD + len(BAD)  # every request went through one batch
    assert scrape.value("icc_compute_seconds_count") == batches
    assert scrape.value("icc_queue_wait_seconds_count") == N_GOOD + len(BAD)
    assert scrape.value("icc_in_server_seconds_count") == N_GOOD + len(BAD)
    assert scrape.value("icc_in_server_seconds_sum") >= scrape.value("icc_queue_wait_seconds_sum") > 0
    # The largest batch the results report is within the histogram's observed range.
    largest = max(r["timing"]["batch_size"] for r in results if "timing" in r)
    assert scrape.value("icc_batch_size_bucket", le="+Inf") == batches
    assert (
        scrape.value("icc_batch_size_bucket", le=str(float(next(b for b in (1, 2, 4, 8, 16, 32, 64) if b >= largest))))
        >= 1
    )


@pytest.mark.timeout(120)
def test_outstanding_messages_return_to_zero(run):
    scrape, *_ = run
    assert "icc_messages_outstanding" in scrape.text
    assert scrape.value("icc_messages_outstanding") == 0


@pytest.mark.timeout(120)
def test_model_identity_is_exposed(run):
    scrape, _, bodies, _, meta = run
    (info,) = scrape.labels("icc_model_info")
    assert info["digest"] == meta["checkpoint_sha256"][:16] == bodies[0]["model"]
    assert info["dataset"] == str(meta.get("dataset"))
    assert scrape.value("icc_model_info") == 1


@pytest.mark.timeout(120)
def test_stages_and_the_batching_policy_are_exposed(run):
    from configs import load_config

    scrape, results, *_ = run
    server = load_config(None, "stream.py").server
    batches = scrape.value("icc_batch_size_count")
    (policy,) = scrape.labels("icc_batching_info")
    assert policy == {"policy": server.batching}
    assert scrape.value("icc_latency_slo_seconds") == server.latency_slo_ms / 1000
    assert scrape.value("icc_batch_limit") in server.buckets
    # Every batch: its queue depth and batching wait; every batch with a good request: a model call in one bucket.
    assert scrape.value("icc_queue_depth_count") == scrape.value("icc_batch_wait_seconds_count") == batches
    assert scrape.value("icc_decode_seconds_count") == batches
    by_bucket = {
        labels["bucket"]: scrape.value("icc_batches_total", **labels) for labels in scrape.labels("icc_batches_total")
    }
    assert {int(b) for b in by_bucket} <= set(server.buckets)
    assert 1 <= sum(by_bucket.values()) == scrape.value("icc_model_seconds_count") <= batches
    assert {r["timing"]["bucket"] for r in results if "timing" in r} <= {int(b) for b in by_bucket}
    assert scrape.value("icc_pull_messages_sum") == scrape.value("icc_requests_total")  # every pulled one, once
    # Every result message was published, then its requests acked: one observation of each per message.
    assert scrape.value("icc_publish_seconds_count") == scrape.value("icc_ack_seconds_count") >= 1


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+\[\d+\]: \S")


@pytest.mark.timeout(120)
def test_server_log_is_one_line_per_event_with_a_level(run):
    *_, log, _ = run
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines, "the server logged nothing"
    assert [line for line in lines if not LOG_LINE.match(line)] == []
    levels = Counter(LOG_LINE.match(line).group(1) for line in lines)
    assert levels["WARNING"] >= len(BAD)  # one line per bad request
    assert not levels["ERROR"] and not levels["CRITICAL"]


@pytest.mark.timeout(180)
def test_two_replicas_share_a_burst_and_each_serves_metrics_on_its_own_port(topology, start_server, test_images):
    """`--replicas 2 --metrics-port P`: both replicas serve a 2,000-image burst, and replica i counts what it
    served on port P + i (two processes cannot share one port). One two-replica start for both properties."""
    port = free_port_run(2)
    server = start_server("--metrics-port", str(port), replicas=2)
    assert len(server.ready_lines) == 2
    ids = publish_images(topology, test_images.images[:2000], run_id="rep", streams=16)
    results, bodies = collect_results(topology, 2000, timeout=90)
    answered = Counter(r["request_id"] for r in results)
    assert set(answered) == set(ids)
    replicas = Counter(body["replica"] for body in bodies)
    assert len(replicas) == 2, f"both replicas should serve: {replicas}"
    # A replica counts a result once its requests' ack succeeded, just after the result was published: scrape
    # until the counts add up. A server process opens one endpoint, so two answering ports = two replicas.
    deadline = time.monotonic() + 15
    while True:
        scrapes = {
            p: Scrape(urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=5).read().decode())
            for p in (port, port + 1)
        }
        by_port = {p: scrape.value("icc_results_total") for p, scrape in scrapes.items()}
        if sum(by_port.values()) >= 2000 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert all(scrape.value("icc_model_info") == 1 for scrape in scrapes.values())
    # each replica's endpoint counts its own results: both served, and together they answered every request
    assert all(by_port.values()) and sum(by_port.values()) >= 2000, by_port
    assert server.proc.poll() is None and "Traceback" not in server.log_text()
    assert f"metrics on ports {port}..{port + 1}" in server.log_text()
    assert server.terminate() == 0


@pytest.mark.timeout(120)
def test_a_replica_that_cannot_start_stops_the_others_at_once(topology, start_server):
    """Port P + 1 taken: replica 1 exits 2 ("cannot serve metrics"), and the parent stops replica 0 and exits 2
    instead of serving one replica of two while its caller waits for a second ready line."""
    port = free_port_run(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))
        taken.listen()
        server = start_server("--metrics-port", str(port), replicas=2, wait=False)
        started = time.monotonic()
        with pytest.raises(AssertionError, match=r"exited during start-up \(code 2\)"):
            server.wait_ready(timeout=90)
        waited = time.monotonic() - started
    log = server.log_text()
    assert f"cannot serve metrics on port {port + 1}" in log
    assert "could not start (exit 2): stopping the other replicas" in log
    assert "Traceback" not in log
    # Two replica starts (imports, model load) take 4-8 s here; the ready timeout is 90 s.
    assert waited < 45, f"the parent took {waited:.1f}s to give up"
