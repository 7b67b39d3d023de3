"""One image through the broker: publish it, wait for its result, print label and confidence."""

from __future__ import annotations

import uuid
from pathlib import Path

import ml_collections

from broker import wire
from streamer.options import RunOptions
from streamer.session import RunSession
from streamer.supervise import RunError
from train.checkpoint import DEFAULT_MODEL_DIR, load_metadata
from train.data import load_fashion_mnist, load_image


def run_single(config: ml_collections.ConfigDict, options: RunOptions) -> int:
    """Send one image through the broker and print its predicted label and confidence.

    The picture's shape and the class names come from the model's metadata.json, as everywhere else.
    """
    meta = load_metadata(config.model_dir or DEFAULT_MODEL_DIR)
    if options.image:
        payload = Path(options.image).read_bytes() if Path(options.image).is_file() else None
        if payload is None:
            raise RunError(f"{options.image}: file not found")
        load_image(payload, tuple(meta["input_shape"]))  # fail here, clearly, on a non-image
        content_type = wire.JPEG if payload[:2] == b"\xff\xd8" else wire.PNG
        truth = None
    else:
        test = load_fashion_mnist("test")
        if not 0 <= options.index < len(test):
            raise RunError(f"--index {options.index} is outside the test set (0..{len(test) - 1})")
        if tuple(test.images.shape[1:]) != tuple(meta["input_shape"]):
            raise RunError(f"--index takes a Fashion-MNIST test image; the model takes {meta['input_shape']} pictures")
        payload, content_type, truth = (
            test.images[options.index],
            wire.RAW,
            meta["class_names"][test.labels[options.index]],
        )
    run_id = uuid.uuid4().hex[:8]
    with RunSession(config, options, [config.model_dir or None], replicas=1) as session:
        result = session.ask(payload, content_type, run_id, config.collector.timeout_s)
    if "error" in result:
        print(f"error result: {result['error']}: {result.get('detail', '')}")
        return 1
    extra = f"  (true: {truth})" if truth else ""
    print(
        f"label {result['label']} {result['class_name']!r} confidence {result['confidence']:.2%}{extra}  "
        f"[model {result.get('model', '?')}, round trip {result['round_trip_ms']:.1f} ms]"
    )
    return 0
