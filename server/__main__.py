"""python -m server [--config FILE] [--project ID] [--replicas N] [--model DIR] [...]

Thin entry point: parse flags, check the ones with a domain below, then server.run.main does the
work. server.run is imported only after the check: it imports JAX (~3 s), and a bad flag exits 2
before that.
"""

import argparse
import sys

from configs import config_flag_metavars

# Allowed values of this entry point's batching flags, by dest: (allows(value), what is allowed).
# Checked right after parsing; configs/flags.py's table, where it exists, takes them as
# OneOf(("adaptive", "fixed")) and Numbers(0, 10_000, above=True).
FLAG_DOMAINS = {
    "server.batching": (lambda v: v in ("adaptive", "fixed"), "one of adaptive, fixed"),
    # Milliseconds. Past the ack deadline (10 s) a request the server holds is redelivered, so an
    # objective beyond it is not one the server can keep.
    "server.latency_slo_ms": (lambda v: 0 < v <= 10_000, "a number > 0 and <= 10,000 (milliseconds)"),
}


def make_parser(prog: str = "python -m server") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Serve the classifier over Pub/Sub.")
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


def flag_problem(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """One line naming the first set flag outside its domain in FLAG_DOMAINS, else None."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest in FLAG_DOMAINS and value is not None:
            allows, allowed = FLAG_DOMAINS[action.dest]
            if not allows(value):
                return f"{action.option_strings[0]} {value!r} is not allowed: use {allowed}"
    return None


if __name__ == "__main__":
    parser = make_parser()
    args = parser.parse_args()
    if problem := flag_problem(parser, args):
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        sys.exit(2)
    from server.run import main

    sys.exit(main(args))
