"""The inference server against Google's real Pub/Sub emulator."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from broker import wire
from broker.errors import BrokerError
from broker.pubsub import pull_all
from tests.conftest import collect_results, publish_images, publish_raw

pytestmark = pytest.mark.emulator


def test_single_round_trip(topology, start_server, test_images):
    start_server()
    publish_images(topology, test_images.images[:1], run_id="one")
    results, bodies = collect_results(topology, 1, timeout=30)
    assert len(results) == 1
    r = results[0]
    assert r["request_id"] == "one-0" and r["stream"] == "0" and r["seq"] == 0
    assert 0 <= r["label"] < 10 and r["class_name"] == test_images.class_names[r["label"]]
    assert 0 < r["confidence"] <= 1 and len(r["top_k"]) == 3 and r["top_k"][0][0] == r["label"]
    assert set(r["timing"]) == {"queue_ms", "compute_ms", "batch_size"}
    assert bodies[0]["model"] and bodies[0]["replica"]


def test_png_request_is_decoded(topology, start_server, test_images):
    start_server()
    buf = io.BytesIO()
    Image.fromarray(test_images.images[0][..., 0]).resize((112, 112)).convert("RGB").save(buf, format="PNG")
    publish_raw(topology, buf.getvalue(), "s", **wire.encode_request(buf.getvalue(), "png-0", "s", 0, wire.PNG)[1])
    results, _ = collect_results(topology, 1, timeout=30)
    assert results[0]["request_id"] == "png-0" and "error" not in results[0]


def test_burst_forms_padded_batches(topology, start_server, test_images):
    server = start_server("--max-wait-ms", "20")
    ids = publish_images(topology, test_images.images[:600], run_id="burst")
    results, bodies = collect_results(topology, 600, timeout=60)
    assert sorted(r["request_id"] for r in results) == sorted(ids)
    sizes = [r["timing"]["batch_size"] for r in results]
    assert max(sizes) > 1, "a burst must be served in batches"
    # One result message per (batch, stream): far fewer messages than results.
    assert len(bodies) < len(results) / 4
    assert "warm-up compiled buckets" in server.log_text()


def test_model_pads_to_buckets_and_never_recompiles(model_dir):
    from server.serve import Model

    model = Model(model_dir, (8, 32))
    model.warm_up()
    compiled = model.predict._cache_size()
    for n in (1, 5, 8, 9, 31, 32):
        assert model(np.zeros((n, 28, 28, 1), np.uint8)).shape == (n, 10)
    assert model.predict._cache_size() == compiled == 2


BAD_MESSAGES = {
    "empty": (b"", dict(content_type=wire.RAW, shape="28,28,1")),
    "wrong_length": (b"\x00" * 100, dict(content_type=wire.RAW, shape="28,28,1")),
    "shape_mismatch": (b"\x00" * 1024, dict(content_type=wire.RAW, shape="32,32,1")),
    "bad_attribute": (b"\x00" * 784, dict(content_type=wire.RAW, shape="28,x,1")),
    "oversized": (b"\x00" * (wire.MAX_REQUEST_BYTES + 1), dict(content_type=wire.RAW, shape="28,28,1")),
    "unsupported_content_type": (b"\x00" * 784, dict(content_type="application/x-python-pickle")),
    "undecodable_image": (b"\x89PNG\r\n\x1a\nnot really a png", dict(content_type=wire.PNG)),
    "unsupported_version": (b"\x00" * 784, dict(content_type=wire.RAW, shape="28,28,1", v="2")),
}


@pytest.mark.timeout(120)
def test_bad_input_gets_error_results_and_server_keeps_serving(topology, start_server, test_images):
    server = start_server()
    for reason, (data, attrs) in BAD_MESSAGES.items():
        publish_raw(topology, data, "bad", request_id=f"bad-{reason}", seq="0", sent_ns="1", **attrs)
    publish_raw(topology, b"\x00" * 784, "bad")  # no attributes at all
    publish_raw(topology, b"\x00" * 784, "bad", request_id="bad-seq", content_type=wire.RAW, shape="28,28,1", seq="-3")
    good = publish_images(topology, test_images.images[:3], run_id="good")
    results, _ = collect_results(topology, len(BAD_MESSAGES) + 2 + 3, timeout=60)
    by_id = {r["request_id"]: r for r in results}
    for reason in BAD_MESSAGES:
        assert by_id[f"bad-{reason}"]["error"] == reason, by_id.get(f"bad-{reason}")
    assert by_id[None]["error"] == "missing_attribute" and by_id[None]["message_id"]
    assert by_id["bad-seq"]["error"] == "bad_attribute"
    assert all("error" not in by_id[i] and "label" in by_id[i] for i in good)
    assert server.proc.poll() is None, "the server must survive bad input"
    # And it still serves the next good message.
    publish_images(topology, test_images.images[3:4], run_id="after")
    assert collect_results(topology, 1, timeout=30)[0][0]["request_id"] == "after-0"


@pytest.mark.timeout(180)
def test_sigterm_under_load_loses_nothing(topology, start_server, test_images):
    server = start_server()
    n = 2000
    publisher_done = threading.Event()
    ids: list[str] = []

    def publish() -> None:
        ids.extend(publish_images(topology, test_images.images[:n], run_id="term"))
        publisher_done.set()

    threading.Thread(target=publish, daemon=True).start()
    time.sleep(1.0)
    started = time.monotonic()
    assert server.terminate(timeout=40) == 0
    drain_s = time.monotonic() - started
    assert drain_s < 30
    assert publisher_done.wait(60)
    # A second server picks up whatever the first nacked or never pulled.
    start_server()
    results, _ = collect_results(topology, n, timeout=90)
    answered = Counter(r["request_id"] for r in results)
    assert set(answered) == set(ids), f"missing {len(set(ids) - set(answered))}"
    assert "shutting down gracefully" in server.log_text() and "stopped" in server.log_text()


@pytest.mark.timeout(180)
def test_two_replicas_share_a_burst(topology, start_server, test_images):
    server = start_server(replicas=2)
    assert len(server.ready_lines) == 2
    ids = publish_images(topology, test_images.images[:2000], run_id="rep", streams=16)
    results, bodies = collect_results(topology, 2000, timeout=90)
    answered = Counter(r["request_id"] for r in results)
    assert set(answered) == set(ids)
    replicas = Counter(body["replica"] for body in bodies)
    assert len(replicas) == 2, f"both replicas should serve: {replicas}"
    assert server.terminate() == 0


def test_delivery_attempts_are_capped_by_the_dead_letter_policy(topology, emulator):
    """A message nobody completes is delivered max_delivery_attempts times, then never again.

    Real Pub/Sub then forwards it to the dead-letter topic. The emulator (gcloud 528)
    forwards only from subscriptions without ordering; on an ordered one like ours it
    honours the cap, then fails later pulls (NullPointerException in its log; see
    docs/reliability.md). So this test checks the cap, and that the dead-letter
    subscription holds nothing but the poison message.
    """
    from broker.pubsub import Puller

    publish_raw(topology, b"poison", "p", request_id="poison")
    puller = Puller(topology.requests_subscription_path)
    attempts = []
    emulator_failed = False
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                messages = puller.pull(timeout=0.5)
            except BrokerError:
                # gcloud 528's emulator answers INTERNAL here once the attempts are spent
                # (NullPointerException in its dead-letter forwarding): its bug, seen in its log.
                emulator_failed = True
                break
            attempts += [m.delivery_attempt for m in messages]
            puller.nack([m.ack_id for m in messages])
    finally:
        puller.close()
    print(f"attempts {attempts}, emulator failed after the last attempt: {emulator_failed}")
    assert attempts == list(range(1, topology.max_delivery_attempts + 1))
    dead = pull_all(topology.dead_letter_subscription_path, timeout=0.5)
    assert [m.attributes["request_id"] for m in dead] in ([], ["poison"])
