"""The server variants `make bench` measures against, on the real server's transport.

python -m bench.server --echo [server flags]        the broker's floor: a constant answer, no model
python -m bench.server --ungrouped [server flags]   one result message per request, not per (batch, stream)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from broker.pubsub import Topology
from server.__main__ import make_parser
from server.run import load_model, main
from server.serve import InferenceServer
from server.settings import ServerSettings
from train.checkpoint import DEFAULT_MODEL_DIR, load_metadata


class EchoModel:
    """The benchmark floor: the served model's interface and transport, a constant answer, no model."""

    def __init__(self, meta: dict, buckets: Sequence[int]):
        self.meta, self.buckets = meta, tuple(buckets)
        self.identity = "echo"
        self.input_shape = tuple(meta["input_shape"])
        self.class_names = list(meta["class_names"])
        self._probs = np.eye(len(self.class_names), dtype=np.float32)[0]

    def warm_up(self) -> float:
        return 0.0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self._probs, (len(images), len(self._probs)))


class UngroupedServer(InferenceServer):
    """One result message per request: what grouping per (batch, stream) saves (docs/benchmarks.md)."""

    def group_key(self, k: int, stream: str) -> tuple:
        return (stream, k)


def variant(echo: bool, ungrouped: bool):
    """make_server(config, topology) for server.run.main."""

    def make_server(config, topo: Topology) -> InferenceServer:
        settings = ServerSettings.from_config(config)
        if echo:
            model = EchoModel(load_metadata(config.model_dir or DEFAULT_MODEL_DIR), settings.buckets)
        else:
            model = load_model(config, settings)
        return (UngroupedServer if ungrouped else InferenceServer)(model, topo, settings)

    return make_server


if __name__ == "__main__":
    parser = make_parser("python -m bench.server")
    parser.add_argument("--echo", action="store_true", help="constant answer, no model")
    parser.add_argument("--ungrouped", action="store_true", help="one result message per request")
    args = parser.parse_args()  # FlagParser: a value outside configs/flags.py's domains exits 2 here
    sys.exit(main(args, variant(args.echo, args.ungrouped)))
