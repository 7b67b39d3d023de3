"""Server process management: config, broker session, signals, replicas."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

from broker.errors import BrokerError
from broker.pubsub import Topology, broker_session, ensure_topology
from configs import load_config
from server import metrics
from server.serve import InferenceServer, ServerSettings
from train.checkpoint import DEFAULT_MODEL_DIR, ModelError

log = logging.getLogger("server")


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived before the server was serving."""


def topology_from(config, project: str, suffix: str = "") -> Topology:
    b = config.broker
    topo = Topology(
        project=project,
        requests_topic=b.requests_topic,
        results_topic=b.results_topic,
        dead_letter_topic=b.dead_letter_topic,
        requests_subscription=b.requests_subscription,
        results_subscription=b.results_subscription,
        dead_letter_subscription=b.dead_letter_subscription,
        max_delivery_attempts=b.max_delivery_attempts,
        ack_deadline_s=b.ack_deadline_s,
    )
    return topo.with_suffix(suffix) if suffix else topo


def settings_from(config) -> ServerSettings:
    s = config.server
    return ServerSettings(
        max_batch_size=s.max_batch_size,
        max_wait_ms=s.max_wait_ms,
        buckets=tuple(s.buckets),
        pull_max_messages=s.pull_max_messages,
        pull_threads=s.pull_threads,
        max_outstanding=s.max_outstanding,
        top_k=s.top_k,
        publish_max_messages=s.publish_max_messages,
        publish_max_latency_ms=s.publish_max_latency_ms,
        drain_timeout_s=s.drain_timeout_s,
        log_interval_s=s.log_interval_s,
        ack_deadline_s=config.broker.ack_deadline_s,
        group_results=s.group_results,
    )


def apply_overrides(config, args: argparse.Namespace):
    for flag, key in (
        ("max_batch_size", "max_batch_size"),
        ("max_wait_ms", "max_wait_ms"),
        ("metrics_port", "metrics_port"),
        ("replicas", "replicas"),
    ):
        if getattr(args, flag, None) is not None:
            config.server[key] = getattr(args, flag)
    if getattr(args, "no_group_results", False):
        config.server.group_results = False
    if args.project:
        config.broker.project = args.project
    if args.model:
        config.model_dir = args.model
    return config


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("absl").setLevel(logging.WARNING)
    config = apply_overrides(load_config(args.config, "stream.py"), args)
    holder: dict = {}

    def on_signal(signum, _frame):
        log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
        if "server" in holder:
            holder["server"].stop()
        elif "children" in holder:
            for child in holder["children"]:
                child.send_signal(signum)
        else:
            raise Interrupted()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with broker_session(config.broker.project or None) as project:
            topo = topology_from(config, project, args.topic_suffix)
            ensure_topology(topo)
            if config.server.replicas > 1:
                return run_replicas(config.server.replicas, holder)
            return run_one(config, topo, args, holder)
    except (BrokerError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted:
        return 130


def run_one(config, topo: Topology, args, holder: dict) -> int:
    model_dir = config.model_dir or DEFAULT_MODEL_DIR
    server = InferenceServer(model_dir, topo, settings_from(config), echo=args.echo)
    holder["server"] = server
    if config.server.metrics_port:
        metrics.serve_metrics(config.server.metrics_port)

    def ready(srv: InferenceServer) -> None:
        print(
            f"server ready: model {srv.model.identity} buckets {list(srv.model.buckets)} "
            f"subscription {topo.requests_subscription_path} pid {os.getpid()}",
            flush=True,
        )

    return server.serve(on_ready=ready)


def run_replicas(n: int, holder: dict) -> int:
    """N independent server processes on one subscription; Pub/Sub balances between them."""
    argv = [a for a in sys.argv[1:]]
    cmd = [sys.executable, "-m", "server", *strip_flag(argv, "--replicas"), "--replicas", "1"]
    children = [subprocess.Popen(cmd, env=os.environ.copy()) for _ in range(n)]
    holder["children"] = children
    log.info("started %d replicas: pids %s", n, [c.pid for c in children])
    codes = []
    for child in children:
        while child.poll() is None:
            time.sleep(0.1)
        codes.append(child.returncode)
    return max(codes, key=abs)


def strip_flag(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out
