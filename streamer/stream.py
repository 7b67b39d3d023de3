"""The async streamer: publish a dataset at a steady rate with ordering keys.

Pacing follows an absolute schedule (image i is due at t0 + i/rate), so a late
wake-up is caught up at once instead of drifting; at --rate 0 it publishes as fast
as publisher flow control (BLOCK) lets it, which also bounds memory.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable

import numpy as np

from broker import wire
from broker.pubsub import Publisher, PublishSettings


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def request_for(index: int, image: np.ndarray, run_id: str, streams: int, content_type: str) -> tuple[bytes, dict]:
    """Image `index` goes on stream index % streams, as that stream's index // streams-th message."""
    stream, seq = str(index % streams), index // streams
    payload = png_bytes(image) if content_type == wire.PNG else image
    return wire.encode_request(payload, f"{run_id}-{index}", stream=stream, seq=seq, content_type=content_type)


async def publish_dataset(
    publisher: Publisher,
    images: np.ndarray,
    run_id: str,
    rate: float,
    streams: int,
    content_type: str = wire.RAW,
    on_published: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> np.ndarray:
    """Publish every image; returns the send time (time.time()) of each. Raises on publish failure."""
    sent_s = np.full(len(images), np.nan)
    futures = []
    start = time.monotonic()
    i = 0
    while i < len(images):
        if stop is not None and stop.is_set():
            break
        due = len(images) if rate <= 0 else min(len(images), int((time.monotonic() - start) * rate) + 1)
        # Publish what is due now (at most a chunk, so the loop stays responsive).
        for j in range(i, min(due, i + 500)):
            data, attributes = request_for(j, images[j], run_id, streams, content_type)
            sent_s[j] = int(attributes["sent_ns"]) / 1e9
            futures.append(publisher.publish(data, attributes["stream"], **attributes))
        if on_published and due > i:
            on_published(min(due, i + 500) - i)
        i = min(due, i + 500)
        if rate > 0 and i < len(images):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        else:
            await asyncio.sleep(0)
    await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    return sent_s


def make_publisher(topic_path: str, max_messages: int, max_latency_ms: float, flow_messages: int) -> Publisher:
    return Publisher(
        topic_path,
        PublishSettings(max_messages=max_messages, max_latency_s=max_latency_ms / 1000, flow_messages=flow_messages),
    )
