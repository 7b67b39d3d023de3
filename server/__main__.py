"""python -m server [--config FILE] [--project ID] [--replicas N] [--model DIR] [...]

Thin entry point: parse and check the flags (configs/flags.py), then server.run.main does the work.
server.run is imported only after the check, and imports JAX (~1.3 s) only once the config file is checked
and the broker answered: a bad flag, config value or broker is one line and exit 2 before that.
"""

import logging
import os
import sys

from configs import config_flag_metavars
from configs.flags import FlagParser


def make_parser(prog: str = "python -m server") -> FlagParser:
    parser = FlagParser(prog=prog, description="Serve the classifier over Pub/Sub.")
    parser.add_argument("--config", help="config file (default configs/stream.py)")
    # A dest that names a config key overrides that key (configs.from_args).
    parser.add_argument(
        "--project",
        dest="broker.project",
        help="GCP project; default: the emulator (started if PUBSUB_EMULATOR_HOST is unset)",
    )
    parser.add_argument("--model", dest="model_dir", help="model directory (default: the shipped models/fashion-mnist)")
    parser.add_argument(
        "--replicas", type=int, dest="server.replicas", help="run N server processes on the same subscription"
    )
    parser.add_argument(
        "--subscription",
        dest="broker.requests_subscription",
        help="request subscription to serve (a second model gets its own, on the same topic)",
    )
    parser.add_argument("--topic-suffix", default="", help="suffix every topic/subscription name (isolated runs)")
    parser.add_argument("--max-batch-size", type=int, dest="server.max_batch_size")
    parser.add_argument("--max-wait-ms", type=float, dest="server.max_wait_ms")
    parser.add_argument("--batching", dest="server.batching", help="batching policy: adaptive (default) or fixed")
    parser.add_argument(
        "--latency-slo-ms",
        type=float,
        dest="server.latency_slo_ms",
        help="latency objective for a request's time in the server, p99 (adaptive batching)",
    )
    parser.add_argument(
        "--metrics-port", type=int, dest="server.metrics_port", help="expose Prometheus metrics on this port"
    )
    parser.add_argument("--log-level", default="INFO")
    return config_flag_metavars(parser)


if __name__ == "__main__":
    args = make_parser().parse_args()
    from server.run import main

    code = main(args)
    # Drained, acknowledged and closed: what is left is the interpreter tearing down XLA's and gRPC's
    # native threads, 0.7-1.5 s that a managed run waited for after its last result (0.03 s without).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
