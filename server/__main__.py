"""python -m server [--config FILE] [--project ID] [--replicas N] [--model DIR] [...]

Thin entry point: parse flags, then server.run.main does the work.
"""

import argparse
import sys

from server.run import main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server", description="Serve the classifier over Pub/Sub.")
    parser.add_argument("--config", help="config file (default configs/stream.py)")
    parser.add_argument(
        "--project", help="GCP project; default: the emulator (started if PUBSUB_EMULATOR_HOST is unset)"
    )
    parser.add_argument("--model", help="model directory (default: the shipped models/fashion-mnist)")
    parser.add_argument("--replicas", type=int, help="run N server processes on the same subscription")
    parser.add_argument("--topic-suffix", default="", help="suffix every topic/subscription name (isolated runs)")
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--max-wait-ms", type=float)
    parser.add_argument("--metrics-port", type=int, help="expose Prometheus metrics on this port")
    parser.add_argument(
        "--no-group-results", action="store_true", help="one result message per request (for benchmarks)"
    )
    parser.add_argument(
        "--echo", action="store_true", help="benchmark floor: same transport, constant result, no model"
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
