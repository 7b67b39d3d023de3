"""Property-based fuzzing of the wire contract (Hypothesis): no input, however strange, escapes as anything
but the wire's own error, and every error result encodes to valid JSON that the collector accepts.

The generated-traffic run against the real server is in test_fuzz_server.py.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import wire

KEYS = ("v", "request_id", "content_type", "shape", "seq", "sent_ns", "stream")
NUMBERS = st.one_of(
    st.integers().map(str),  # huge and negative
    st.integers(min_value=2**63 - 5, max_value=2**64 + 5).map(str),  # around the int64 edge
    st.text(alphabet="0123456789²³١٢٣߀０１", min_size=1, max_size=25),  # non-ASCII digits
)
VALUES = st.one_of(
    st.text(max_size=40), st.text(min_size=300, max_size=2000), NUMBERS, st.sampled_from(wire.CONTENT_TYPES)
)
ATTRIBUTES = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), VALUES, max_size=9)
PAYLOADS = st.one_of(st.binary(max_size=2000), st.binary(min_size=784, max_size=784), st.just(b""))
FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=PAYLOADS, attributes=ATTRIBUTES, ordering_key=st.text(max_size=200))
def test_check_request_returns_a_request_or_raises_the_wires_error(data, attributes, ordering_key):
    try:
        request = wire.check_request(data, attributes, ordering_key)
    except wire.WireError as err:
        assert err.reason in wire.REASONS
        return
    assert 0 <= request.seq <= wire.MAX_UINT and 0 <= request.sent_ns <= wire.MAX_UINT
    assert len(request.stream) <= wire.MAX_STREAM_CHARS and request.content_type in wire.CONTENT_TYPES
    if request.content_type == wire.RAW:
        try:
            wire.check_raw_length(data, attributes, (28, 28, 1))
        except wire.WireError as err:
            assert err.reason in wire.REASONS


@FUZZ
@given(
    attributes=ATTRIBUTES,
    ordering_key=st.text(max_size=200),
    reason=st.sampled_from(sorted(wire.REASONS)),
    detail=st.text(max_size=1000),
    message_id=st.text(max_size=30),
)
def test_any_error_result_encodes_to_json_the_collector_accepts(attributes, ordering_key, reason, detail, message_id):
    result = wire.error_result(attributes, ordering_key, wire.WireError(reason, detail), message_id)
    data, attrs = wire.encode_results([result], "model", "replica")
    model, results = wire.decode_results(data)
    assert model == "model" and attrs["count"] == "1" and len(results) == 1
    checked = wire.check_result(results[0], num_classes=10)
    assert checked["error"] == reason and len(checked["detail"]) <= wire.MAX_DETAIL_CHARS


@FUZZ
@given(data=PAYLOADS, attributes=ATTRIBUTES, label=st.integers(0, 9), confidence=st.floats(0.0, 1.0))
def test_a_prediction_for_any_accepted_request_encodes(data, attributes, label, confidence):
    try:
        request = wire.check_request(data, attributes)
    except wire.WireError:
        return
    timing = {"queue_ms": 0.1, "compute_ms": 1.0, "batch_size": 1}
    result = wire.Prediction.answer(request, ["c"] * 10, [label], [confidence], timing)
    _, results = wire.decode_results(wire.encode_results([result], "m")[0])
    assert wire.check_result(results[0], 10)["request_id"] == request.request_id


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, min_size=1, max_size=4) | st.dictionaries(st.text(max_size=10), kids, min_size=1, max_size=4)
    ),
    max_leaves=20,
)
RESULTISH = st.fixed_dictionaries(
    {},
    optional={
        "request_id": JSON | st.text(max_size=20),
        "stream": JSON,
        "seq": JSON | st.integers(),
        "sent_ns": JSON | st.integers(),
        "label": JSON | st.integers(-3, 12),
        "confidence": JSON | st.floats(),
        "error": JSON,
        "timing": JSON,
    },
)


@FUZZ
@given(body=st.one_of(JSON, st.fixed_dictionaries({"model": JSON, "results": st.lists(RESULTISH | JSON, max_size=5)})))
def test_results_topic_garbage_is_refused_with_the_wires_error(body):
    """What the collector does with a message: decode it, then check each result; nothing else may escape,
    and whatever passes holds the contract (docs/wire.md), checked here independently of check_result."""
    text = json.dumps(body).encode()  # stdlib: it writes any int, and NaN/Infinity, which JSON has not
    try:
        model, results = wire.decode_results(text)
    except wire.WireError as err:
        assert err.reason == "bad_result"
        valid = isinstance(body, dict) and isinstance(body.get("model"), str) and isinstance(body.get("results"), list)
        assert not valid or b"NaN" in text or b"Infinity" in text
        return
    assert model == body["model"] and results == body["results"]
    for result in results:
        try:
            checked = wire.check_result(result, num_classes=10)
        except wire.WireError as err:
            assert err.reason == "bad_result"
            continue
        assert checked is result
        assert isinstance(checked.get("request_id"), str | None) and isinstance(checked.get("stream", ""), str)
        for key in ("seq", "sent_ns"):
            value = checked.get(key)
            assert value is None or (type(value) is int and 0 <= value <= wire.MAX_UINT)
        if "error" in checked:
            assert isinstance(checked["error"], str)
            continue
        assert type(checked["label"]) is int and 0 <= checked["label"] < 10
        assert type(checked["confidence"]) in (int, float) and 0.0 <= checked["confidence"] <= 1.0
        assert all(type(v) in (int, float) for v in checked.get("timing", {}).values())


@FUZZ
@given(raw=st.binary(max_size=500) | st.builds(lambda b: json.dumps(b).encode(), JSON))
def test_results_topic_bytes_are_refused_with_the_wires_error(raw):
    """Any bytes: a result message exactly when they are a JSON object with a model string and a results list."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    valid = (
        isinstance(parsed, dict) and isinstance(parsed.get("model"), str) and isinstance(parsed.get("results"), list)
    )
    try:
        model, results = wire.decode_results(raw)
    except wire.WireError as err:
        assert err.reason == "bad_result"
        # The stdlib also reads NaN and Infinity, which JSON (and the wire) does not have.
        assert not valid or any(word in raw for word in (b"NaN", b"Infinity"))
        return
    assert valid, raw
    assert model == parsed["model"] and len(results) == len(parsed["results"])


def test_out_of_range_integers_are_a_bad_attribute_not_an_encoding_failure():
    """A defect once shipped: 20 digits passed validation, then broke JSON encoding for the whole batch."""
    attrs = {"request_id": "big-seq", "content_type": wire.RAW, "shape": "28,28,1", "seq": "9" * 20, "sent_ns": "1"}
    try:
        wire.check_request(b"\0" * 784, attrs)
        raise AssertionError("20 digits must be refused")
    except wire.WireError as err:
        assert err.reason == "bad_attribute"
    attrs["seq"] = str(2**63 - 1)
    assert wire.check_request(b"\0" * 784, attrs).seq == 2**63 - 1
    attrs["seq"] = str(2**63)
    try:
        wire.check_request(b"\0" * 784, attrs)
        raise AssertionError("2**63 must be refused")
    except wire.WireError as err:
        assert err.reason == "bad_attribute"


def test_a_result_that_cannot_be_encoded_costs_only_itself():
    good = wire.Prediction("ok-1", "s", 0, 1, 3, "c", 0.5, [[3, 0.5]], {})
    bad = wire.Prediction("big-seq", "s", 2**70, 1, 3, "c", 0.5, [[3, 0.5]], {})  # built around check_request
    _, results = wire.decode_results(wire.encode_results([good, bad], "m")[0])
    assert results[0] == good.to_json()
    assert results[1]["request_id"] == "big-seq" and results[1]["error"] == "internal_error"
