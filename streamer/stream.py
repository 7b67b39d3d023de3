"""The async streamer: publish a dataset at a steady rate with ordering keys.

Pacing follows an absolute schedule (image i is due at t0 + i/rate), so a late
wake-up is caught up at once instead of drifting; at --rate 0 it publishes as fast
as the broker accepts batches. Publishing goes through broker.pubsub.BulkPublisher
(one Publish RPC per due batch) because the client's per-message publish() was
the streamer's main CPU cost (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from broker import wire
from broker.pubsub import BulkPublisher


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def request_for(
    index: int, image: np.ndarray, run_id: str, streams: int, content_type: str, file: str | None = None
) -> tuple[bytes, dict]:
    """Image `index` goes on stream index % streams, as that stream's index // streams-th message.

    As a picture (content_type PNG), an image that came from a file is sent as that file's own
    bytes (PNG or JPEG), so the server's decoding is part of what is evaluated.
    """
    stream, seq = str(index % streams), index // streams
    payload = image
    if content_type != wire.RAW:
        payload = Path(file).read_bytes() if file else png_bytes(image)
        content_type = wire.JPEG if payload[:2] == b"\xff\xd8" else wire.PNG
    return wire.encode_request(payload, f"{run_id}-{index}", stream=stream, seq=seq, content_type=content_type)


async def publish_dataset(
    publisher: BulkPublisher,
    images: np.ndarray,
    run_id: str,
    rate: float,
    streams: int,
    content_type: str = wire.RAW,
    on_published: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    max_batch: int = 1000,
    files: tuple[str, ...] = (),
    interval_s: float = 0.0,
) -> np.ndarray:
    """Publish every image; returns the send time (time.time()) of each. Raises BrokerError on failure.

    What is due is sent as one batch; the next batch is built while the previous
    one is in flight, and at most one is in flight (per-key order, bounded memory).
    A paced run starts its Publish calls at least `interval_s` apart, so what falls due
    meanwhile shares a call (streamer.publish_interval_ms); each request's send time is
    still stamped when it is built.
    """
    sent_s = np.full(len(images), np.nan)
    start = time.monotonic()
    in_flight: asyncio.Future | None = None
    called = -interval_s
    i = 0
    while i < len(images) and not (stop is not None and stop.is_set()):
        wait = called + interval_s - time.monotonic()
        if rate > 0 and wait > 0:
            await asyncio.sleep(wait)
            continue
        due = len(images) if rate <= 0 else min(len(images), int((time.monotonic() - start) * rate) + 1)
        if due <= i:
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            continue
        end = min(due, i + max_batch)
        items = []
        for j in range(i, end):
            data, attributes = request_for(j, images[j], run_id, streams, content_type, files[j] if files else None)
            sent_s[j] = int(attributes["sent_ns"]) / 1e9
            items.append((data, attributes, attributes["stream"]))
        if in_flight is not None:
            await in_flight
        in_flight = asyncio.ensure_future(asyncio.to_thread(publisher.publish_batch, items))
        called = time.monotonic()
        if on_published:
            in_flight.add_done_callback(
                lambda f, n=end - i: not f.cancelled() and f.exception() is None and on_published(n)
            )
        i = end
    if in_flight is not None:
        await in_flight
    return sent_s
