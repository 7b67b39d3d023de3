"""The naive baseline server: the obvious first design, kept for `make bench` comparisons.

Streaming pull with one callback per message, batch size 1, one result message per
request, one ack per message. Same model, same wire format as the real server.

    python -m bench.naive_server [--topic-suffix S] [--model DIR]
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np

from broker import process, wire
from broker.pubsub import Publisher, PublishSettings, Subscription, Topology, broker_session, ensure_topology
from configs import load_config
from configs.flags import FlagParser
from train.checkpoint import DEFAULT_MODEL_DIR
from train.predictor import load_predictor


def serve(topo: Topology, model_dir) -> None:
    predictor = load_predictor(model_dir)
    meta = predictor.meta
    shape, names, identity = tuple(meta["input_shape"]), meta["class_names"], meta["checkpoint_sha256"][:16]
    predictor(np.zeros((1, *shape), np.uint8))
    publisher = Publisher(topo.results_topic_path, PublishSettings(max_messages=1, max_latency_s=0.0))

    def handle(message) -> None:
        attrs = message.attributes
        started = time.monotonic()
        try:
            request = wire.check_request(message.data, attrs, message.ordering_key)
            wire.check_raw_length(message.data, attrs, shape)
            probs = predictor(np.frombuffer(message.data, np.uint8).reshape(1, *shape))[0]
            label = int(probs.argmax())
            timing = {"queue_ms": 0.0, "compute_ms": (time.monotonic() - started) * 1000, "batch_size": 1}
            result = wire.Prediction.answer(request, names, [label], [float(probs[label])], timing)
        except wire.WireError as err:
            result = wire.error_result(attrs, message.ordering_key, err, message.message_id)
        data, attributes = wire.encode_results([result], identity, f"naive:{os.getpid()}")
        publisher.publish(data, attrs.get("stream", ""), **attributes).result()
        message.ack()

    subscription = Subscription(topo.requests_subscription_path, handle, max_messages=1000)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(process.ready_line(f"naive {identity}", [1], topo.requests_subscription_path, os.getpid(), None), flush=True)
    stop.wait()
    subscription.close()
    publisher.close()


def main() -> int:
    parser = FlagParser(prog="python -m bench.naive_server")
    parser.add_argument("--topic-suffix", default="")
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    args = parser.parse_args()
    with broker_session() as project:
        topo = Topology.from_names(project, load_config(None, "stream.py").broker, args.topic_suffix)
        ensure_topology(topo)
        serve(topo, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
