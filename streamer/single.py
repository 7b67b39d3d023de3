"""One image through the broker: publish it, wait for its result, print label and confidence."""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path

from broker import wire
from broker.pubsub import Publisher, PublishSettings, Puller, Topology, broker_session, ensure_topology
from streamer.stream import request_for
from streamer.supervise import RunError, managed_server, server_flags
from train.checkpoint import DEFAULT_MODEL_DIR, load_metadata
from train.data import load_fashion_mnist, load_image


def run_single(args, config) -> int:
    """Send one image through the broker and print its predicted label and confidence.

    The picture's shape and the class names come from the model's metadata.json, as everywhere else.
    """
    meta = load_metadata(config.model_dir or DEFAULT_MODEL_DIR)
    if args.image:
        payload = Path(args.image).read_bytes() if Path(args.image).is_file() else None
        if payload is None:
            raise RunError(f"{args.image}: file not found")
        load_image(payload, tuple(meta["input_shape"]))  # fail here, clearly, on a non-image
        content_type = wire.JPEG if payload[:2] == b"\xff\xd8" else wire.PNG
        truth = None
    else:
        test = load_fashion_mnist("test")
        if not 0 <= args.index < len(test):
            raise RunError(f"--index {args.index} is outside the test set (0..{len(test) - 1})")
        if tuple(test.images.shape[1:]) != tuple(meta["input_shape"]):
            raise RunError(f"--index takes a Fashion-MNIST test image; the model takes {meta['input_shape']} pictures")
        payload, content_type, truth = test.images[args.index], wire.RAW, meta["class_names"][test.labels[args.index]]
    run_id = uuid.uuid4().hex[:8]
    with broker_session(config.broker.project or None) as project:
        topo = Topology.from_names(project, config.broker, args.topic_suffix)
        ensure_topology(topo)
        with (
            managed_server(server_flags(args, config), 1) if args.server_mode == "managed" else contextlib.nullcontext()
        ):
            result = send_one(topo, payload, content_type, run_id, config.collector.timeout_s)
    if "error" in result:
        print(f"error result: {result['error']}: {result.get('detail', '')}")
        return 1
    extra = f"  (true: {truth})" if truth else ""
    print(
        f"label {result['label']} {result['class_name']!r} confidence {result['confidence']:.2%}{extra}  "
        f"[model {result.get('model', '?')}, round trip {result['round_trip_ms']:.1f} ms]"
    )
    return 0


def send_one(topo: Topology, payload, content_type: str, run_id: str, timeout: float) -> dict:
    publisher = Publisher(topo.requests_topic_path, PublishSettings(max_messages=1, max_latency_s=0.0))
    puller = Puller(topo.results_subscription_path)
    request_id = f"{run_id}-0"
    try:
        data, attributes = (
            request_for(0, payload, run_id, 1, content_type)
            if content_type == wire.RAW
            else wire.encode_request(payload, request_id, stream="0", seq=0, content_type=content_type)
        )
        sent = time.monotonic()
        publisher.publish(data, attributes["stream"], **attributes).result(timeout=30)  # BLOCK flow control, 1 msg
        deadline = sent + timeout
        while time.monotonic() < deadline:
            for message in puller.pull(timeout=2.0):
                model, results = wire.decode_results(message.data)
                mine = [r for r in results if r.get("request_id") == request_id]
                if mine:
                    puller.ack([message.ack_id])
                    return {**mine[0], "model": model, "round_trip_ms": (time.monotonic() - sent) * 1000}
                puller.nack([message.ack_id])  # someone else's result: leave it for them
        raise RunError(f"no result for {request_id} within {timeout:.0f}s")
    finally:
        publisher.close()
        puller.close()
