"""The inference server against Google's real Pub/Sub emulator."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from broker import wire
from tests.conftest import collect_results, publish_images, publish_raw

pytestmark = pytest.mark.emulator


# Tests that only send requests and read results share one warmed server (`shared`, tests/conftest.py): each
# reads a results subscription of its own and uses its own request ids and streams, and every test before it
# waited for all its results, so it still meets an idle server. Tests that stop or reconfigure a server start one.


def test_single_round_trip(shared, test_images):
    topology = shared.topology
    publish_images(topology, test_images.images[:1], run_id="one", stream_prefix="one")
    results, bodies = collect_results(topology, 1, timeout=30)
    assert len(results) == 1
    r = results[0]
    assert r["request_id"] == "one-0" and r["stream"] == "one0" and r["seq"] == 0
    assert 0 <= r["label"] < 10 and r["class_name"] == test_images.class_names[r["label"]]
    assert 0 < r["confidence"] <= 1 and len(r["top_k"]) == 3 and r["top_k"][0][0] == r["label"]
    assert set(r["timing"]) == {
        *("queue_ms", "compute_ms", "batch_size"),  # since wire v1's first server
        *("broker_ms", "send_ms", "batch_wait_ms", "decode_ms", "model_ms", "bucket"),  # the stage breakdown
    }
    t = r["timing"]
    assert t["compute_ms"] >= t["model_ms"] > 0 and t["decode_ms"] >= 0 and t["queue_ms"] >= t["batch_wait_ms"] >= 0
    assert t["bucket"] >= t["batch_size"] == 1
    # The broker's clock (publish_time, ms on the emulator) against this machine's: within a millisecond.
    assert t["broker_ms"] > -1 and t["send_ms"] > -1
    assert bodies[0]["model"] and bodies[0]["replica"]


def test_sigusr1_writes_every_threads_stack_to_the_log_and_the_server_keeps_serving(shared, test_images):
    """What the rig does before giving up on a server that is not ready (broker/process.py `dump_stacks`)."""
    mark = len(shared.server.log_text())
    os.kill(shared.server.pids[0], signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while "in next_batch" not in shared.log_since(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    dump = shared.log_since(mark)
    # faulthandler's format: one "Thread 0x..." block per thread, innermost frame first
    assert dump.count("Thread 0x") >= 4, dump[-3000:]  # main (the batcher), puller, acker, leases, reporter, ...
    assert "in next_batch" in dump and "in pull_loop" in dump, dump[-3000:]
    publish_images(shared.topology, test_images.images[:1], run_id="usr1", stream_prefix="usr1")
    results, _ = collect_results(shared.topology, 1, timeout=30)
    assert [r["request_id"] for r in results] == ["usr1-0"]
    assert shared.server.proc.poll() is None


def test_png_request_is_decoded(shared, test_images):
    topology = shared.topology
    buf = io.BytesIO()
    Image.fromarray(test_images.images[0][..., 0]).resize((112, 112)).convert("RGB").save(buf, format="PNG")
    publish_raw(topology, buf.getvalue(), "s", **wire.encode_request(buf.getvalue(), "png-0", "png", 0, wire.PNG)[1])
    results, _ = collect_results(topology, 1, timeout=30)
    assert results[0]["request_id"] == "png-0" and "error" not in results[0]


def test_burst_forms_padded_batches(topology, start_server, test_images):
    server = start_server("--batching", "fixed", "--max-wait-ms", "20")  # the adaptive policy: test_batching.py
    ids = publish_images(topology, test_images.images[:600], run_id="burst")
    results, bodies = collect_results(topology, 600, timeout=60)
    assert sorted(r["request_id"] for r in results) == sorted(ids)
    sizes = [r["timing"]["batch_size"] for r in results]
    assert max(sizes) > 1, "a burst must be served in batches"
    # One result message per (batch, stream): far fewer messages than results.
    assert len(bodies) < len(results) / 4
    assert "warm-up compiled buckets" in server.log_text()


def test_model_pads_to_buckets_and_never_recompiles(model_dir):
    from server.serve import BucketedModel
    from train.predictor import load_predictor

    model = BucketedModel(load_predictor(model_dir), (8, 32))
    model.warm_up()
    compiled = model.predictor.predict._cache_size()
    for n in (1, 5, 8, 9, 31, 32):
        assert model(np.zeros((n, 28, 28, 1), np.uint8)).shape == (n, 10)
    assert model.predictor.predict._cache_size() == compiled == 2


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
def test_bad_input_gets_error_results_and_server_keeps_serving(shared, test_images):
    topology, server = shared.topology, shared.server
    for reason, (data, attrs) in BAD_MESSAGES.items():
        publish_raw(topology, data, "bad", request_id=f"bad-{reason}", seq="0", sent_ns="1", **attrs)
    publish_raw(topology, b"\x00" * 784, "bad")  # no attributes at all
    publish_raw(topology, b"\x00" * 784, "bad", request_id="bad-seq", content_type=wire.RAW, shape="28,28,1", seq="-3")
    good = publish_images(topology, test_images.images[:3], run_id="good", stream_prefix="good")
    results, _ = collect_results(topology, len(BAD_MESSAGES) + 2 + 3, timeout=60)
    by_id = {r["request_id"]: r for r in results}
    for reason in BAD_MESSAGES:
        assert by_id[f"bad-{reason}"]["error"] == reason, by_id.get(f"bad-{reason}")
    assert by_id[None]["error"] == "missing_attribute" and by_id[None]["message_id"]
    assert by_id["bad-seq"]["error"] == "bad_attribute"
    assert all("error" not in by_id[i] and "label" in by_id[i] for i in good)
    assert server.proc.poll() is None, "the server must survive bad input"
    # And it still serves the next good message.
    publish_images(topology, test_images.images[3:4], run_id="after", stream_prefix="after")
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


def test_real_pubsub_gets_a_dead_letter_policy_and_the_emulator_none(topology):
    from broker.pubsub import requests_subscription_options

    real = requests_subscription_options(topology, emulator=False)
    assert real["dead_letter_policy"].max_delivery_attempts == topology.max_delivery_attempts
    assert real["dead_letter_policy"].dead_letter_topic == topology.dead_letter_topic_path
    local = requests_subscription_options(topology, emulator=True)
    assert "dead_letter_policy" not in local
    assert local["enable_message_ordering"] and local["ack_deadline_seconds"] == topology.ack_deadline_s


def test_a_message_nacked_past_the_attempt_limit_does_not_brick_the_emulator(topology, emulator):
    """On the emulator an ordered subscription with a dead-letter policy fails every pull once one
    message spends its attempts (NullPointerException, docs/reliability.md). Without the policy
    there, the message just keeps coming back and everything else still flows.
    """
    from broker.pubsub import Puller

    publish_raw(topology, b"poison", "p", request_id="poison")
    puller = Puller(topology.requests_subscription_path)
    deliveries = 0
    try:
        deadline = time.monotonic() + 20
        while deliveries < 2 * topology.max_delivery_attempts and time.monotonic() < deadline:
            messages = puller.pull(timeout=0.5)  # raised BrokerError here before
            deliveries += len(messages)
            puller.nack([m.ack_id for m in messages])
        assert deliveries >= 2 * topology.max_delivery_attempts
        publish_raw(topology, b"fine", "q", request_id="after")
        seen: set[str] = set()
        deadline = time.monotonic() + 20
        while "after" not in seen and time.monotonic() < deadline:
            messages = puller.pull(timeout=0.5)
            seen |= {m.attributes.get("request_id") for m in messages}
            puller.ack([m.ack_id for m in messages])
        assert "after" in seen
    finally:
        puller.close()


@pytest.mark.timeout(60)
def test_an_idle_puller_polls_the_emulator_slower_and_answers_the_next_message_at_once(topology, emulator):
    """Empty polls cost the emulator CPU, so a puller with nothing for a while (5 s; 1 s here) polls every
    50 ms instead of every 1-10 ms; the message that ends the quiet spell is still taken by the next poll,
    and the pace after it is the fast one again."""
    from google.pubsub_v1.services.subscriber.client import SubscriberClient as Gapic

    from broker import pubsub

    polls: list[float] = []
    real_pull = Gapic.pull

    def counted(*args, **kwargs):
        polls.append(time.monotonic())
        return real_pull(*args, **kwargs)

    puller = pubsub.Puller(topology.requests_subscription_path, poll=True)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Gapic, "pull", counted)
            mp.setattr(pubsub, "_IDLE_AFTER_S", 1.0)
            started = time.monotonic()
            assert puller.pull(timeout=3.0) == []
            quiet_at = started + pubsub._IDLE_AFTER_S
            busy = sum(1 for t in polls if t < quiet_at)
            idle = [t for t in polls if t > quiet_at + 0.1]
            assert busy >= 40, busy  # 1, 2, 4, 8, then every 10 ms (plus the RPC's own time)
            assert 15 <= len(idle) <= 42, len(idle)  # ~1.9 s at one poll per 50 ms, not ~100 per second
            # The next message is taken within one idle interval of being published ...
            publish_raw(topology, b"wake", "w", request_id="wake")
            published = time.monotonic()
            (message,) = puller.pull(timeout=5.0)
            assert message.attributes["request_id"] == "wake"
            assert time.monotonic() - published < pubsub._IDLE_POLL_S + 0.25
            puller.ack([message.ack_id])
            # ... and the puller polls at the fast pace again.
            polls.clear()
            assert puller.pull(timeout=0.5) == []
            assert len(polls) >= 20, len(polls)
    finally:
        puller.close()


@pytest.mark.timeout(120)
def test_a_20_digit_seq_costs_only_its_own_request(shared, model_dir, test_images):
    """A defect once shipped, as a user met it: one REST publish of two requests on two streams.

    `big-seq` carries seq = 20 digits (past int64); `ok-1` is valid. Before, the result JSON failed
    to encode for the whole batch, the batch was nacked five times and the server exited.
    """
    import base64
    import json
    import os
    import urllib.request

    pixels = test_images.images[0].tobytes()
    common = {"v": "1", "content_type": wire.RAW, "shape": "28,28,1", "sent_ns": "1"}
    body = {
        "messages": [
            {
                "data": base64.b64encode(bytes(784)).decode(),
                "attributes": {**common, "request_id": "big-seq", "stream": "big", "seq": "9" * 20},
                "orderingKey": "big",
            },
            {
                "data": base64.b64encode(pixels).decode(),
                "attributes": {**common, "request_id": "ok-1", "stream": "ok", "seq": "0"},
                "orderingKey": "ok",
            },
        ]
    }
    topology, server = shared.topology, shared.server
    log_mark = len(server.log_text())
    url = f"http://{os.environ['PUBSUB_EMULATOR_HOST']}/v1/{topology.requests_topic_path}:publish"
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert len(json.loads(resp.read())["messageIds"]) == 2
    results, _ = collect_results(topology, 2, timeout=30)
    by_id = {r["request_id"]: r for r in results}
    assert by_id["big-seq"]["error"] == "bad_attribute" and by_id["big-seq"]["stream"] == "big"
    from train.evaluate import evaluate_model

    expected = int(evaluate_model(model_dir, 1).answers.prediction[0])
    assert "error" not in by_id["ok-1"] and by_id["ok-1"]["label"] == expected
    time.sleep(2)
    assert server.proc.poll() is None, "the server must keep running"
    assert "nacking" not in shared.log_since(log_mark)
