"""The wire contract: request and result messages (documented in docs/wire.md).

Language-neutral by design: requests are raw uint8 pixels or PNG/JPEG bytes with
string attributes; results are UTF-8 JSON. Nothing here unpickles or evals.

Request  = Pub/Sub message
    data        raw pixels (row-major H×W×C uint8) or an encoded PNG/JPEG
    attributes  v=1, request_id, content_type, shape ("H,W,C", raw only),
                sent_ns (UNIX ns at send), stream, seq
    ordering key = stream
Result   = Pub/Sub message, one per (server batch, stream)
    data        {"v":1, "model": <digest>, "replica": <host:pid>, "results": [<result>, ...]}
    attributes  v=1, count, model
    ordering key = stream
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import orjson

WIRE_VERSION = "1"
RAW = "image/x-raw-uint8"
PNG = "image/png"
JPEG = "image/jpeg"
CONTENT_TYPES = (RAW, PNG, JPEG)
MAX_REQUEST_BYTES = 2 * 1024 * 1024  # checked before any decode
MAX_ID_CHARS = 256
MAX_STREAM_CHARS = 128  # Pub/Sub allows 1 KB ordering keys; we keep them short
MAX_DIM = 4096


class WireError(ValueError):
    """A request that breaks the contract. `reason` is a stable machine-readable code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ------------------------------------------------------------------ requests
def encode_request(
    image: np.ndarray | bytes,
    request_id: str,
    stream: str = "0",
    seq: int = 0,
    content_type: str = RAW,
    sent_ns: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """(data, attributes) for one request; `image` is a uint8 (H, W, C) array, or PNG/JPEG bytes."""
    attributes = {
        "v": WIRE_VERSION,
        "request_id": request_id,
        "content_type": content_type,
        "stream": stream,
        "seq": str(seq),
        "sent_ns": str(sent_ns if sent_ns is not None else time.time_ns()),
    }
    if content_type == RAW:
        array = np.ascontiguousarray(image, dtype=np.uint8)
        if array.ndim == 2:
            array = array[..., None]
        attributes["shape"] = ",".join(map(str, array.shape))
        return array.tobytes(), attributes
    return bytes(image), attributes


def parse_shape(text: str | None) -> tuple[int, int, int]:
    if not text:
        raise WireError("missing_attribute", "shape")
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise WireError("bad_attribute", f"shape={text[:40]!r}") from None
    if len(dims) != 3 or not all(0 < d <= MAX_DIM for d in dims):
        raise WireError("bad_attribute", f"shape={text[:40]!r} (want H,W,C each 1..{MAX_DIM})")
    return dims  # type: ignore[return-value]


def check_request(data: bytes, attributes: Mapping[str, str]) -> tuple[str, str, int, int]:
    """Validate everything but the pixels; return (request_id, content_type, seq, sent_ns).

    Raises WireError with a reason code: unsupported_version, empty, oversized,
    missing_attribute, bad_attribute, unsupported_content_type. A missing `v`
    means version 1; missing `seq`/`sent_ns` mean 0 (no ordering check, no latency).
    """
    if attributes.get("v", WIRE_VERSION) != WIRE_VERSION:
        raise WireError("unsupported_version", f"v={attributes.get('v')[:10]!r}; this server speaks v={WIRE_VERSION}")
    request_id = attributes.get("request_id")
    if not request_id:
        raise WireError("missing_attribute", "request_id")
    if len(request_id) > MAX_ID_CHARS:
        raise WireError("bad_attribute", "request_id too long")
    if not data:
        raise WireError("empty", "no payload")
    if len(data) > MAX_REQUEST_BYTES:
        raise WireError("oversized", f"{len(data)} bytes > {MAX_REQUEST_BYTES}")
    content_type = attributes.get("content_type", "")
    if content_type not in CONTENT_TYPES:
        raise WireError("unsupported_content_type", repr(content_type[:40]))
    seq, sent_ns = parse_uint(attributes.get("seq", "0")), parse_uint(attributes.get("sent_ns", "0"))
    if seq is None or sent_ns is None:
        raise WireError("bad_attribute", "seq and sent_ns must be non-negative integers")
    return request_id, content_type, seq, sent_ns


def parse_uint(text: str) -> int | None:
    """A non-negative decimal integer, or None. ASCII only: str.isdigit() accepts '²', int() does not."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None


def check_raw_length(data: bytes, attributes: Mapping[str, str], expected_shape: Sequence[int]) -> None:
    """A raw request must carry exactly the model's H×W×C pixels."""
    shape = parse_shape(attributes.get("shape"))
    if tuple(shape) != tuple(expected_shape):
        raise WireError("shape_mismatch", f"shape {shape} but the model takes {tuple(expected_shape)}")
    if len(data) != int(np.prod(shape)):
        raise WireError("wrong_length", f"{len(data)} bytes for shape {shape} (want {int(np.prod(shape))})")


# ------------------------------------------------------------------- results
def prediction(
    request_id: str,
    stream: str,
    seq: int,
    sent_ns: int,
    label: int,
    class_name: str,
    confidence: float,
    top_k: list,
    timing: dict,
) -> dict:
    return {
        "request_id": request_id,
        "stream": stream,
        "seq": seq,
        "sent_ns": sent_ns,
        "label": label,
        "class_name": class_name,
        "confidence": confidence,
        "top_k": top_k,
        "timing": timing,
    }


def error(
    request_id: str | None, stream: str, seq: int | None, sent_ns: int | None, reason: str, detail: str, message_id: str
) -> dict:
    return {
        "request_id": request_id,
        "stream": stream,
        "seq": seq,
        "sent_ns": sent_ns,
        "error": reason,
        "detail": detail[:300],
        "message_id": message_id,
    }


def encode_results(results: Sequence[dict], model: str, replica: str = "") -> tuple[bytes, dict[str, str]]:
    body = {"v": int(WIRE_VERSION), "model": model, "replica": replica, "results": list(results)}
    data = orjson.dumps(body)  # ~5x faster than json.dumps; same compact UTF-8 JSON
    return data, {"v": WIRE_VERSION, "count": str(len(results)), "model": model}


def decode_results(data: bytes) -> tuple[str, list[dict]]:
    """(model, results) from one result message; raises WireError if it is not one."""
    try:
        body = orjson.loads(data)
        return str(body["model"]), list(body["results"])
    except (ValueError, KeyError, TypeError) as err:
        raise WireError("bad_result", str(err)) from None
