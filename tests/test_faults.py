"""Fault tests against Google's real Pub/Sub emulator; the figures are in docs/reliability.md.

Each test that measures something prints one `FIGURES ...` line: run with -s to see them.
Some sizes are scaled down from the full 10,000-image run to keep the suite within its
time budget on a 2-core machine; docs/reliability.md says which, and why.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from broker import wire
from broker.pubsub import EMULATOR_PROJECT, Publisher, create_subscription, create_topic, pull_until
from tests.conftest import (
    REPO,
    ResultWatcher,
    figures,
    free_port_run,
    progress,
    publish_images,
    publish_messages,
    publish_raw,
)

pytestmark = pytest.mark.emulator


# ------------------------------------------------- 1. a replica SIGKILLed mid-stream
def holding_replica(ports: list[int], timeout: float) -> int:
    """The pid of the replica holding the most work (icc_messages_outstanding, polled from every replica's
    metrics), once that is above zero.

    The most, not the first found above zero: a replica holding a few requests whose results it has already
    published (only their acks outstanding) strands nothing when killed while its neighbour holds the burst,
    and the test then fails, rightly, with "nothing was redelivered".
    """
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = {}
        for port in ports:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            samples = {s.name: s for family in text_string_to_metric_families(text) for s in family.samples}
            held[int(samples["icc_model_info"].labels["pid"])] = samples["icc_messages_outstanding"].value
        pid = max(held, key=held.get)
        if held[pid] > 0:
            return pid
        time.sleep(0.001)
    raise AssertionError("no replica held work within the timeout")


@pytest.mark.serial
@pytest.mark.timeout(240)
@pytest.mark.parametrize("n_kill", [3000, pytest.param(10_000, marks=pytest.mark.slow)])
def test_replica_sigkilled_mid_stream_loses_nothing(n_kill, topology, start_server):
    """A burst; a replica SIGKILLed while it holds work. Its keys stay blocked until redelivery (the 10 s ack
    deadline), then the survivor drains what is left, at its own speed: 4.5 s for ~7,000-8,000 of a
    10,000 burst here (14.2-15.2 s kill to done), more on a slower machine. 3,000 keep that drain to
    ~1-2 s on either kind, so the 15 s bound stays a bound on redelivery; 10,000 is `-m slow`."""
    from train.data import load_fashion_mnist

    images = load_fashion_mnist("test", n_kill).images
    port = free_port_run(2)
    server = start_server("--metrics-port", str(port), replicas=2)
    pids = [int(re.search(r"\bpid (\d+)", line).group(1)) for line in server.ready_lines]
    assert len(set(pids)) == 2, server.ready_lines
    ids = [f"kill-{i}" for i in range(n_kill)]
    with ResultWatcher(topology) as watcher:
        # A burst: both replicas pull hundreds of requests at once, so the one killed at its
        # first answer still holds most of what it pulled (pulled, not acknowledged).
        publisher = threading.Thread(
            target=publish_images, args=(topology, images), kwargs=dict(run_id="kill", streams=16), daemon=True
        )
        t_publish = time.monotonic()
        publisher.start()
        assert watcher.wait_until(lambda arrivals: arrivals, timeout=90), "no results before the kill"
        # The victim is a replica that holds pulled, unacknowledged work right now (its metrics say so),
        # so the kill really strands requests; a replica between two pulls would hold none.
        victim = holding_replica([port, port + 1], timeout=30)
        survivor = next(pid for pid in pids if pid != victim)
        t_kill = time.monotonic()
        answered_before = len(watcher.unique())
        os.kill(victim, signal.SIGKILL)
        complete = watcher.wait_for(ids, timeout=150)
        t_done = time.monotonic()
        publisher.join(30)
        time.sleep(1.0)  # late duplicates, if any, still count
    arrivals = watcher.snapshot()
    answered = Counter(r["request_id"] for _, r, _ in arrivals)
    missing = set(ids) - set(answered)
    assert complete and not missing, f"{len(missing)} requests never answered, e.g. {sorted(missing)[:5]}"
    assert not [r for _, r, _ in arrivals if "error" in r]
    os.kill(survivor, 0)  # the survivor is alive
    assert server.proc.poll() is None, "the replica parent must keep running"
    assert not [rep for t, _, rep in arrivals if t > t_kill + 2.0 and rep.endswith(f":{victim}")]
    duplicates = sum(n - 1 for n in answered.values())
    first = {}
    for t, r, _ in arrivals:
        first.setdefault(r["request_id"], t)
    redelivered = [rid for rid, t in first.items() if t > t_kill + 0.8 * topology.ack_deadline_s]
    assert redelivered, "the killed replica held no requests: nothing was redelivered"
    assert t_done - t_kill <= 15.0, f"everything must be answered within 15 s of the kill ({t_done - t_kill:.1f} s)"
    after = sorted(t for t, _, _ in arrivals if t > t_kill)
    gaps = np.diff([t_kill, *after])
    longest = int(np.argmax(gaps))
    figures(
        "replica_kill",
        requests=n_kill,
        answered_before_kill=answered_before,
        publish_s=round(t_kill - t_publish, 1),
        longest_silence_after_kill_s=round(float(gaps[longest]), 2),
        kill_to_resume_s=round(after[longest] - t_kill, 2),
        kill_to_all_answered_s=round(t_done - t_kill, 2),
        answered_after_resume=len(after) - longest,
        answered_after_ack_deadline=len(redelivered),
        duplicates=duplicates,
        by_replica=dict(Counter(rep.rsplit(":", 1)[-1] for _, _, rep in arrivals)),
    )


@pytest.mark.serial
@pytest.mark.timeout(240)
@pytest.mark.parametrize("images", [3000, pytest.param(6000, marks=pytest.mark.slow)])
def test_replica_killed_during_a_paced_run_costs_at_most_15_s(
    images, suffix, topology, start_server, model_dir, tmp_path
):
    """At the defaults: 2 replicas, `python -m streamer --rate 300`, one replica SIGKILLed once a third
    of the images have been answered. Every request is answered, none later than 15 s after it was sent.
    3,000 images prove it as 6,000 did (the kill strands what the victim held either way); the 6,000-image
    run is `-m slow` (docs/reliability.md). Without the offline comparison (2 s of the serial part): what is
    asserted here is loss and delay; streamed = offline is test_streamer's."""
    server = start_server(replicas=2)
    victim = int(re.search(r"\bpid (\d+)", server.ready_lines[0]).group(1))
    err_path = tmp_path / "streamer.err"
    with open(err_path, "w") as err:
        streamer = subprocess.Popen(
            [sys.executable, "-m", "streamer", "--server", "external", "--topic-suffix", suffix, "--rate", "300",
             "--limit", str(images), "--model", str(model_dir), "--reports-dir", str(tmp_path), "--no-verify"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while progress(err_path.read_text(errors="replace"), "received") < images // 3:
            assert streamer.poll() is None, err_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "a third of the images were never answered"
            time.sleep(0.1)
        os.kill(victim, signal.SIGKILL)
        streamer.wait(timeout=200)
    finally:
        if streamer.poll() is None:
            streamer.kill()
            streamer.wait(10)
    assert streamer.returncode == 0, err_path.read_text()[-3000:]
    (report_json,) = tmp_path.glob("*/report.json")
    report = json.loads(report_json.read_text())
    latency = report["latency_ms"]
    figures(
        "replica_kill_rate_300",
        answered=report["counts"]["answered"],
        duplicates=report["counts"]["duplicates"],
        p50_ms=latency["p50"],
        p90_ms=latency["p90"],
        p99_ms=latency["p99"],
        max_ms=latency["max"],
    )
    assert report["counts"]["answered"] == images and report["counts"]["missing"] == 0
    assert latency["max"] <= 15_000, f"a request waited {latency['max'] / 1000:.1f} s"


# ------------------------------------------------- 2. 1,000 malformed messages among good ones
N_BAD = 1000
N_GOOD = 1000


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buf, format="JPEG")
    return buf.getvalue()


def _undecodable(rng: random.Random, make) -> bytes:
    """A payload from make(rng) that the server's decoder is known to refuse (checked offline)."""
    from train.data import DatasetError, load_image

    for _ in range(100):
        data = make(rng)
        try:
            load_image(data, (28, 28, 1))
        except DatasetError:
            return data
    raise AssertionError("could not make an undecodable payload")


def _corrupt(image_bytes: bytes):
    def make(rng: random.Random) -> bytes:
        data = bytearray(image_bytes)
        if rng.random() < 0.5:
            return bytes(data[: rng.randrange(16, len(data) - 1)])  # truncated
        for _ in range(rng.randint(4, 40)):  # scribbled over past the signature
            data[rng.randrange(8, len(data))] = rng.randrange(256)
        return bytes(data)

    return make


def malformed_messages(images: np.ndarray, n: int, seed: int = 6) -> list[tuple[bytes, str, dict, str, str]]:
    """n bad requests as (data, ordering_key, attributes, expected error reason, kind), of every kind."""
    rng = random.Random(seed)
    raw = {"content_type": wire.RAW, "shape": "28,28,1"}
    pngs = [_png(images[i]) for i in range(20)]
    jpegs = [_jpeg(images[i]) for i in range(20)]

    def rand_bytes(lo: int, hi: int) -> bytes:
        return rng.randbytes(rng.randint(lo, hi))

    garbage_shapes = [
        ("28,x,1", "bad_attribute"),
        ("-1,28,28", "bad_attribute"),
        ("999999999,1,1", "bad_attribute"),
        ("28,28", "bad_attribute"),
        ("28,28,1,1", "bad_attribute"),
        ("", "missing_attribute"),
        ("😀", "bad_attribute"),
    ]
    kinds = [
        "empty",
        "short",
        "long",
        "random",
        "wrong_content_type",
        "missing_attributes",
        "garbage_attributes",
        "corrupt_png",
        "corrupt_jpeg",
    ]
    out = []
    for i in range(n):
        kind = "oversized" if i == n // 2 else kinds[i % len(kinds)]
        rid, key = f"flood-bad-{i}", f"flood{i % 4}"
        base = {"request_id": rid, "stream": key, "seq": str(10_000 + i), "sent_ns": str(time.time_ns())}
        if kind == "empty":
            out.append((b"", key, {**base, **raw}, "empty", kind))
        elif kind == "short":
            out.append((rand_bytes(1, 783), key, {**base, **raw}, "wrong_length", kind))
        elif kind == "long":
            out.append((rand_bytes(785, 4000), key, {**base, **raw}, "wrong_length", kind))
        elif kind == "random":
            ctype = rng.choice([wire.PNG, wire.JPEG])
            data = _undecodable(rng, lambda r: r.randbytes(r.randint(1, 3000)))
            out.append((data, key, {**base, "content_type": ctype}, "undecodable_image", kind))
        elif kind == "oversized":  # over the wire's 2 MB cap; the 9.5 MB case is test_message_near_the_broker_limit
            data = rng.randbytes(wire.MAX_REQUEST_BYTES + 1024)
            out.append((data, key, {**base, **raw}, "oversized", kind))
        elif kind == "wrong_content_type":
            ctype = rng.choice(["text/plain", "application/x-python-pickle", "", "image/gif", "IMAGE/PNG", "raw"])
            data = images[i % len(images)].tobytes()
            out.append(
                (data, key, {**base, "content_type": ctype, "shape": "28,28,1"}, "unsupported_content_type", kind)
            )
        elif kind == "missing_attributes":
            attrs = {k: v for k, v in {**base, **raw}.items() if k != "request_id" and rng.random() < 0.5}
            out.append((images[i % len(images)].tobytes(), key, attrs, "missing_attribute", kind))
        elif kind == "garbage_attributes":
            variant = (i // len(kinds)) % 6
            pixels = images[i % len(images)].tobytes()
            if variant == 0:
                shape, reason = garbage_shapes[(i // len(kinds) // 6) % len(garbage_shapes)]
                attrs = {**base, "content_type": wire.RAW, **({"shape": shape} if shape else {})}
                out.append((pixels, key, attrs, reason, kind))
            elif variant == 1:
                out.append(
                    (
                        rand_bytes(1024, 1024),
                        key,
                        {**base, "content_type": wire.RAW, "shape": "32,32,1"},
                        "shape_mismatch",
                        kind,
                    )
                )
            elif variant == 2:
                seq = rng.choice(["-3", "x", "1.5", " 7", ""])
                out.append((pixels, key, {**base, **raw, "seq": seq}, "bad_attribute", kind))
            elif variant == 3:
                out.append((pixels, key, {**base, **raw, "sent_ns": "soon"}, "bad_attribute", kind))
            elif variant == 4:
                out.append((pixels, key, {**base, **raw, "request_id": "r" * 300}, "bad_attribute", kind))
            else:  # keys and values of random printable junk, and no request id
                junk = {
                    f"k{rng.randrange(10**6)}": "".join(rng.choice("abc!@#$%^&*()😀 ") for _ in range(20))
                    for _ in range(5)
                }
                out.append((pixels, key, junk, "missing_attribute", kind))
        elif kind == "corrupt_png":
            data = _undecodable(rng, _corrupt(rng.choice(pngs)))
            out.append((data, key, {**base, "content_type": wire.PNG}, "undecodable_image", kind))
        else:  # corrupt_jpeg
            data = _undecodable(rng, _corrupt(rng.choice(jpegs)))
            out.append((data, key, {**base, "content_type": wire.JPEG}, "undecodable_image", kind))
    return out


@pytest.mark.timeout(300)
def test_malformed_flood_gets_error_results_and_good_requests_stay_correct(shared, model_dir):
    from train.data import load_fashion_mnist
    from train.evaluate import evaluate_model

    images = load_fashion_mnist("test", N_GOOD).images
    bad = malformed_messages(images, N_BAD)
    good = []
    for i in range(N_GOOD):
        data, attrs = wire.encode_request(images[i], f"flood-good-{i}", stream=f"flood{i % 4}", seq=i)
        good.append((data, attrs["stream"], attrs))
    interleaved = [m for pair in zip(good, [(d, k, a) for d, k, a, _, _ in bad]) for m in pair]
    topology, server = shared.topology, shared.server
    pid = server.proc.pid
    log_mark = len(server.log_text())
    with ResultWatcher(topology) as watcher:
        started = time.monotonic()
        message_ids = publish_messages(topology, interleaved)
        bad_ids = message_ids[1::2]

        def everything_answered(arrivals) -> bool:
            ids = {r.get("request_id") for _, r, _ in arrivals}
            errors = {r.get("message_id") for _, r, _ in arrivals if "error" in r}
            return all(f"flood-good-{i}" in ids for i in range(N_GOOD)) and set(bad_ids) <= errors

        complete = watcher.wait_until(everything_answered, timeout=180)
        elapsed = time.monotonic() - started
        time.sleep(0.5)
    arrivals = watcher.snapshot()
    assert complete, f"only {len(arrivals)} results"
    errors_by_message = {r["message_id"]: r for _, r, _ in arrivals if "error" in r}
    predictions = {r["request_id"]: r for _, r, _ in arrivals if "error" not in r}
    # Every bad message: its own error result, with the reason its kind calls for.
    wrong = [
        (kind, reason, errors_by_message[mid]["error"])
        for mid, (_, _, _, reason, kind) in zip(bad_ids, bad)
        if errors_by_message[mid]["error"] != reason
    ]
    assert not wrong, wrong[:10]
    assert set(predictions) == {f"flood-good-{i}" for i in range(N_GOOD)}, "no bad message may yield a prediction"
    # Every good message: the same label as the offline evaluation of the same checkpoint.
    offline = evaluate_model(model_dir, N_GOOD).answers.prediction
    mismatches = [i for i in range(N_GOOD) if predictions[f"flood-good-{i}"]["label"] != int(offline[i])]
    assert not mismatches, f"{len(mismatches)} predictions differ from offline, e.g. {mismatches[:5]}"
    # The server never restarted: same process, still serving, no crash in its log.
    assert server.proc.pid == pid and server.proc.poll() is None and len(server.ready_lines) == 1
    assert "Traceback" not in shared.log_since(log_mark)
    publish_images(topology, images[:1], run_id="flood-after", stream_prefix="flood-after")
    with ResultWatcher(topology) as again:
        assert again.wait_for(["flood-after-0"], timeout=30), "the server must keep serving after the flood"
    assert pull_until(topology.dead_letter_subscription_path, None, 30.0, until_empty=True, poll_s=0.5) == []
    reasons = Counter(r["error"] for r in errors_by_message.values())
    kinds = Counter(kind for *_, kind in bad)
    total = Counter(r["message_id"] if "error" in r else r["request_id"] for _, r, _ in arrivals)
    figures(
        "malformed",
        bad=N_BAD,
        good=N_GOOD,
        seconds_to_answer_all=round(elapsed, 1),
        duplicates=sum(n - 1 for n in total.values()),
        kinds=dict(sorted(kinds.items())),
        reasons=dict(sorted(reasons.items())),
    )


@pytest.mark.timeout(60)
def test_message_near_the_broker_limit_can_be_pulled(topology):
    publish_raw(topology, os.urandom(int(9.5 * 2**20)), "big", request_id="big-0", content_type=wire.RAW)
    messages = pull_until(topology.requests_subscription_path, 1, 20.0, poll_s=5.0)
    assert [m.attributes["request_id"] for m in messages] == ["big-0"]


# ------------------------------------------------- 7. ordered publishing after an error
@pytest.mark.timeout(90)
def test_ordered_publisher_resumes_a_key_after_a_failed_publish(emulator, suffix):
    """python-pubsub pauses an ordering key after a failed publish (googleapis/python-pubsub#1084).

    The raw client stays paused; broker.pubsub.Publisher resumes the key, so once the
    topic is back, later publishes on the same key succeed and arrive in order.
    """
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1
    from google.cloud.pubsub_v1 import types
    from google.cloud.pubsub_v1.publisher.exceptions import PublishToPausedOrderingKeyException

    topic = f"projects/{EMULATOR_PROJECT}/topics/order-{suffix}"
    subs = [f"projects/{EMULATOR_PROJECT}/subscriptions/order-{suffix}-{n}" for n in (1, 2)]
    admin, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    raw = pubsub_v1.PublisherClient(publisher_options=types.PublisherOptions(enable_message_ordering=True))
    publisher = Publisher(topic)
    try:
        create_topic(admin, topic)
        create_subscription(subscriber, subs[0], topic, enable_message_ordering=True)
        for i in range(3):
            publisher.publish(f"m{i}".encode(), "k").result(timeout=30)
        raw.publish(topic, b"r0", ordering_key="k").result(timeout=30)

        admin.delete_topic(request={"topic": topic})  # the topic goes away mid-stream
        with pytest.raises(gexc.NotFound):
            publisher.publish(b"m3", "k").result(timeout=30)
        with pytest.raises(gexc.NotFound):
            raw.publish(topic, b"r1", ordering_key="k").result(timeout=30)

        create_topic(admin, topic)  # ... and comes back
        create_subscription(subscriber, subs[1], topic, enable_message_ordering=True)
        with pytest.raises(PublishToPausedOrderingKeyException):  # the client alone: paused for good
            raw.publish(topic, b"r2", ordering_key="k").result(timeout=30)
        for i in range(4, 8):  # the wrapper: publishing on the key goes on
            publisher.publish(f"m{i}".encode(), "k").result(timeout=30)

        got = [m.data.decode() for m in pull_until(subs[1], 4, 20.0, poll_s=2.0)]
        assert got == ["m4", "m5", "m6", "m7"]
    finally:
        publisher.close()
        raw.stop()
        for sub in subs:
            try:
                subscriber.delete_subscription(request={"subscription": sub})
            except gexc.NotFound:
                pass
        try:
            admin.delete_topic(request={"topic": topic})
        except gexc.NotFound:
            pass
        admin.transport.close()
        subscriber.close()


_QUEUED_FAILURE = """
import os, sys, time
from broker.pubsub import Publisher, PublishSettings, create_topic
from google.cloud import pubsub_v1
topic = sys.argv[1]
publisher = Publisher(topic, PublishSettings(max_messages=1, max_latency_s=0.001))
futures = [publisher.publish(b"m%d" % i, "k") for i in range(5)]  # one batch in flight, four queued behind it
try:
    failed = [f.exception(timeout=5) is not None for f in futures]
    admin = pubsub_v1.PublisherClient()
    create_topic(admin, topic)
    publisher.publish(b"after", "k").result(timeout=15)
except Exception as err:
    print("stalled:", type(err).__name__, err, flush=True)
    os._exit(1)
print("recovered", failed, flush=True)
os._exit(0)
"""

_CLOSE_WITH_QUEUE = """
import os, sys, threading
from broker.pubsub import Publisher, PublishSettings, create_topic
from google.cloud import pubsub_v1
topic = sys.argv[1]
create_topic(pubsub_v1.PublisherClient(), topic)
publisher = Publisher(topic, PublishSettings(max_messages=1, max_latency_s=0.001))
publisher.publish(b"warm", "k").result(timeout=15)
futures = [publisher.publish(b"m%d" % i, "k") for i in range(20)]  # batches queued on one key
closer = threading.Thread(target=publisher.close, daemon=True)
closer.start()
closer.join(5)
print("deadlocked" if closer.is_alive() else "closed", flush=True)
os._exit(1 if closer.is_alive() else 0)
"""


def _run_script(script: str, topic: str) -> subprocess.CompletedProcess:
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    try:
        return subprocess.run(
            [sys.executable, "-c", script, topic], cwd=REPO, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"hung: {err}") from None
    finally:
        admin = pubsub_v1.PublisherClient()
        try:
            admin.delete_topic(request={"topic": topic}, timeout=10)
        except gexc.NotFound:
            pass
        finally:
            admin.transport.close()


@pytest.mark.timeout(90)
def test_ordered_publisher_recovers_when_batches_were_queued_behind_the_failure(emulator, suffix):
    topic = f"projects/{EMULATOR_PROJECT}/topics/queued-{suffix}"  # does not exist yet: the first batch fails
    proc = _run_script(_QUEUED_FAILURE, topic)
    assert proc.returncode == 0 and "recovered" in proc.stdout, proc.stdout + proc.stderr[-2000:]


@pytest.mark.timeout(90)
def test_ordered_publisher_closes_with_batches_queued(emulator, suffix):
    topic = f"projects/{EMULATOR_PROJECT}/topics/close-{suffix}"
    proc = _run_script(_CLOSE_WITH_QUEUE, topic)
    assert proc.returncode == 0 and "closed" in proc.stdout, proc.stdout + proc.stderr[-2000:]


@pytest.mark.timeout(90)
def test_queued_publisher_keeps_every_key_in_order_and_fails_only_what_it_could_not_send(emulator, suffix):
    """The server's result publisher: groups coalesced into shared requests, a group larger than the
    request limit split over several, every ordering key in submission order; a failed request fails
    its groups' futures with BrokerError, and nothing is accepted after close."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    from broker.errors import BrokerError
    from broker.pubsub import QueuedPublisher

    topic = f"projects/{EMULATOR_PROJECT}/topics/queued-results-{suffix}"
    sub = f"projects/{EMULATOR_PROJECT}/subscriptions/queued-results-{suffix}"
    admin, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    create_topic(admin, topic)
    create_subscription(subscriber, sub, topic, enable_message_ordering=True)
    publisher = QueuedPublisher(topic, max_messages=7)  # groups of 1-11 messages: shared and split requests
    try:
        groups = [[(f"g{g}-m{m}".encode(), {"g": str(g)}, f"k{m % 4}") for m in range(1 + g % 11)] for g in range(40)]
        futures = [publisher.submit(group) for group in groups]
        ids = [future.result(timeout=30) for future in futures]
        assert [len(i) for i in ids] == [len(group) for group in groups]
        assert len({i for group in ids for i in group}) == sum(map(len, groups))

        sent = [item for group in groups for item in group]
        got = pull_until(sub, len(sent), 30.0, poll_s=2.0)
        assert sorted(m.data for m in got) == sorted(data for data, *_ in sent)
        for key in {key for *_, key in sent}:
            assert [m.data for m in got if m.ordering_key == key] == [d for d, _, k in sent if k == key], key

        admin.delete_topic(request={"topic": topic})  # the topic goes away: that request fails, and says so
        with pytest.raises(BrokerError, match="not found|NotFound|404"):
            publisher.submit([(b"lost", {}, "k0")]).result(timeout=30)
    finally:
        assert publisher.close(timeout=10)
        with pytest.raises(BrokerError, match="closed"):
            publisher.submit([(b"late", {}, "k0")]).result(timeout=1)
        for cleanup in (
            lambda: subscriber.delete_subscription(request={"subscription": sub}),
            lambda: admin.delete_topic(request={"topic": topic}),
        ):
            try:
                cleanup()
            except gexc.NotFound:
                pass
        admin.transport.close()
        subscriber.close()


@pytest.mark.timeout(60)
def test_cancelling_the_publisher_mid_batch_is_quiet(topology, test_images):
    import asyncio

    from broker.pubsub import BulkPublisher
    from streamer.stream import publish_dataset

    class SlowBroker:  # every batch takes a second: the cancel surely lands while one is in flight
        def __init__(self):
            self.publisher = BulkPublisher(topology.requests_topic_path)

        def publish_batch(self, items):
            time.sleep(1.0)
            return self.publisher.publish_batch(items)

        def close(self):
            self.publisher.close()

    async def cancel_mid_batch() -> list[dict]:
        loop, seen = asyncio.get_running_loop(), []
        loop.set_exception_handler(lambda _loop, context: seen.append(context))
        publisher = SlowBroker()
        try:
            task = asyncio.create_task(
                publish_dataset(publisher, test_images.images, "cancel", 0, 4, on_published=lambda n: None)
            )
            await asyncio.sleep(0.3)
            assert not task.done()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0.2)  # let the cancelled batch's callbacks run
        finally:
            publisher.close()
        return seen

    seen = asyncio.run(cancel_mid_batch())
    assert [str(c.get("exception") or c.get("message")) for c in seen] == []
