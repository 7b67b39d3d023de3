"""Generated bad traffic against the real server on the real emulator: no bad message costs a good one.

Hypothesis generates malformed requests (each breaks at least one wire rule, on top of random noise);
they are interleaved with good Fashion-MNIST requests and published together. Every good request must
get the prediction the offline evaluation gives; every malformed request with a request id exactly one
error result; the server keeps its pid; and nothing is nacked at batch level.

`make test` runs a smaller set; the full 2,000 + 10,000 run is marked slow:
    .venv/bin/python -m pytest -m slow tests/test_fuzz_server.py -s
"""

from __future__ import annotations

import random
import time
import urllib.request
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from broker import wire
from broker.emulator import free_port
from broker.pubsub import BulkPublisher
from tests.conftest import ResultWatcher, SharedServer
from tests.test_metrics import Scrape

pytestmark = pytest.mark.emulator

GOOD = {
    "v": "1",
    "content_type": wire.RAW,
    "shape": "28,28,1",
    "seq": "0",
    "sent_ns": "1",
}
BAD_NUMBER = st.one_of(
    st.integers(max_value=-1).map(str),
    st.integers(min_value=2**63, max_value=2**80).map(str),
    st.text(min_size=1, max_size=30).filter(lambda t: wire.parse_uint(t) is None),
)
# (attribute to break, strategy for its bad value), or a payload fault.
FAULTS = st.one_of(
    st.tuples(st.just("seq"), BAD_NUMBER),
    st.tuples(st.just("sent_ns"), BAD_NUMBER),
    st.tuples(st.just("shape"), st.text(max_size=20).filter(lambda t: t != "28,28,1")),
    st.tuples(st.just("content_type"), st.text(max_size=40).filter(lambda t: t not in wire.CONTENT_TYPES)),
    st.tuples(st.just("v"), st.text(min_size=1, max_size=5).filter(lambda t: t != "1")),
    # ASCII: Pub/Sub caps an attribute value at 1,024 bytes, and this must reach the server.
    st.tuples(st.just("request_id"), st.text(alphabet="abcxyz-_09", min_size=wire.MAX_ID_CHARS + 1, max_size=400)),
    st.tuples(st.just("payload"), st.binary(max_size=2000).filter(lambda b: len(b) != 784)),
    st.tuples(st.just("picture"), st.binary(min_size=1, max_size=500)),  # random bytes sent as PNG/JPEG
)
NOISE = st.dictionaries(  # extra attributes; "goog*" keys are reserved by Pub/Sub
    st.text(min_size=1, max_size=8).filter(lambda k: k not in GOOD and k != "request_id" and not k.startswith("goog")),
    st.text(max_size=30),
    max_size=3,
)


def generate_malformed(n: int) -> list[tuple[bytes, dict[str, str]]]:
    """Up to n malformed requests from Hypothesis (derandomized: the same every run); ids are set later."""
    out: list[tuple[bytes, dict[str, str]]] = []

    @settings(
        max_examples=n,
        phases=[Phase.generate],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(fault=FAULTS, noise=NOISE, stream=st.text(max_size=10))
    def collect(fault, noise, stream):
        attributes = {**GOOD, **noise, "stream": stream}
        data = bytes(784)
        field, value = fault
        if field == "payload":
            data = value
        elif field == "picture":
            attributes["content_type"], data = wire.PNG, value
        else:
            attributes[field] = value
        out.append((data, attributes))

    collect()
    return out[:n]


def nacks(port: int) -> float:
    """The server's batch-level nacks so far (a counter: a shared server's count before a run is subtracted)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return Scrape(text).value("icc_nacks_total")


def run_mix(shared: SharedServer, model_dir, test_images, n_good: int, n_bad: int) -> dict:
    from train.evaluate import evaluate_model

    topology, server, port = shared.topology, shared.server, shared.metrics_port
    pid = server.proc.pid
    log_mark = len(server.log_text())
    nacks_before = nacks(port)
    bad = generate_malformed(n_bad)
    assert len(bad) >= n_bad * 0.9, f"Hypothesis generated only {len(bad)} malformed requests"
    good_images = np.concatenate([test_images.images] * (n_good // len(test_images) + 1))[:n_good]
    good_ids = [f"fuzz-good-{i}" for i in range(n_good)]
    messages, bad_ids = [], []
    order = list(range(n_good)) + [-1 - k for k in range(len(bad))]
    random.Random(0).shuffle(order)
    seqs: Counter = Counter()
    for k in order:
        if k >= 0:
            data, attrs = wire.encode_request(good_images[k], good_ids[k], stream=f"mix{k % 8}", seq=seqs[k % 8])
            seqs[k % 8] += 1
            messages.append((data, attrs["stream"], attrs))
        else:
            data, attrs = bad[-1 - k]
            attrs = dict(attrs)
            if "request_id" not in attrs or len(attrs["request_id"]) <= wire.MAX_ID_CHARS:
                attrs["request_id"] = f"fuzz-bad-{-1 - k}"
                bad_ids.append(attrs["request_id"])
            messages.append((data, f"fuzz{(-1 - k) % 4}", attrs))
    started = time.monotonic()
    with ResultWatcher(topology) as watcher:
        # Raw Publish RPCs: any attribute name goes through (the client's publish() takes attributes as
        # keyword arguments, so a generated "topic" or "timeout" attribute would collide with its own).
        publisher = BulkPublisher(topology.requests_topic_path)
        try:
            for start in range(0, len(messages), 500):
                publisher.publish_batch([(d, a, k) for d, k, a in messages[start : start + 500]])
        finally:
            publisher.close()
        assert watcher.wait_for(good_ids + bad_ids, timeout=240), "some requests got no result"
        time.sleep(1.0)  # anything extra (a duplicate) would arrive now
        arrivals = watcher.snapshot()
    elapsed = time.monotonic() - started
    results = Counter(r.get("request_id") for _, r, _ in arrivals)
    by_id = {r.get("request_id"): r for _, r, _ in arrivals}
    offline = evaluate_model(model_dir, len(test_images)).answers.prediction
    wrong = [i for i in range(n_good) if by_id[good_ids[i]].get("label") != offline[i % len(test_images)]]
    return {
        "server_alive": server.proc.poll() is None and server.proc.pid == pid,
        "good_errors": [i for i in good_ids if "error" in by_id[i]],
        "wrong": wrong,
        "bad_not_errors": [i for i in bad_ids if "error" not in by_id[i]],
        "bad_answered_twice": [i for i in bad_ids if results[i] != 1],
        "nacks": nacks(port) - nacks_before,
        "reasons": Counter(by_id[i]["error"] for i in bad_ids),
        "elapsed_s": elapsed,
        "n_bad": len(bad),
        "log": shared.log_since(log_mark),
    }


def check(outcome: dict) -> None:
    print(
        f"\n{outcome['n_bad']} malformed requests, reasons {dict(outcome['reasons'])}; "
        f"answered in {outcome['elapsed_s']:.1f} s; batch-level nacks {outcome['nacks']:.0f}"
    )
    assert outcome["server_alive"], "the server must survive generated bad input"
    assert outcome["good_errors"] == [] and outcome["wrong"] == []
    assert outcome["bad_not_errors"] == [] and outcome["bad_answered_twice"] == []
    assert outcome["nacks"] == 0
    assert "Traceback" not in outcome["log"]


@pytest.mark.timeout(300)
def test_generated_bad_requests_cost_no_good_request(shared, model_dir, test_images):
    check(run_mix(shared, model_dir, test_images, n_good=2000, n_bad=400))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_2000_generated_bad_requests_among_10000_good(topology, start_server, model_dir, test_images):
    port = free_port()
    server = start_server("--metrics-port", str(port))  # the long run keeps a server of its own
    check(run_mix(SharedServer(server, topology, port), model_dir, test_images, n_good=10_000, n_bad=2000))
