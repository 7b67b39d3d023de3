"""Server process management: config, broker session, signals, replicas."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from broker.emulator import die_with_parent
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
    return Topology.from_names(project, config.broker, suffix)


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
                return run_replicas(config.server.replicas, holder, config.server.metrics_port)
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
        try:
            metrics.serve_metrics(config.server.metrics_port)
        except OSError as err:
            print(f"error: cannot serve metrics on port {config.server.metrics_port}: {err}", file=sys.stderr)
            return 2

    def ready(srv: InferenceServer) -> None:
        print(
            f"server ready: model {srv.model.identity} buckets {list(srv.model.buckets)} "
            f"subscription {topo.requests_subscription_path} pid {os.getpid()}{broker_hint()}",
            flush=True,
        )

    grace = config.server.drain_timeout_s + SHUTDOWN_SLACK_S
    threading.Thread(target=exit_if_shutdown_hangs, args=(server, grace), name="shutdown-watch", daemon=True).start()
    code = server.serve(on_ready=ready)
    if server.fatal:
        print(f"error: {server.fatal}", file=sys.stderr, flush=True)
    return code


SHUTDOWN_SLACK_S = 10.0


def exit_if_shutdown_hangs(server: InferenceServer, grace: float) -> None:
    """The last resort: once shutdown begins (signal or fatal error), the process is gone within `grace` s.

    The drain itself is bounded by drain_timeout_s; this covers a client call that never
    returns (e.g. a publisher flushing to a dead broker). Whatever was not acknowledged is
    redelivered by Pub/Sub after its ack deadline, so exiting loses nothing.
    """
    server.stopping.wait()
    time.sleep(grace)
    log.error("shutdown did not finish within %.0fs; exiting now (unacked requests will be redelivered)", grace)
    if server.fatal:
        print(f"error: {server.fatal}", file=sys.stderr)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(1)


def broker_hint() -> str:
    """Where clients should publish: the emulator this process uses, if any."""
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    return f" (broker: export PUBSUB_EMULATOR_HOST={host})" if host else ""


def run_replicas(n: int, holder: dict, metrics_port: int = 0) -> int:
    """N independent server processes on one subscription; Pub/Sub balances between them.

    With a metrics port P, replica i serves its metrics on P + i (each process has its own counters).
    """
    argv = strip_flag(strip_flag(sys.argv[1:], "--replicas"), "--metrics-port")
    children = []
    for i in range(n):
        cmd = [sys.executable, "-m", "server", *argv, "--replicas", "1"]
        if metrics_port:
            cmd += ["--metrics-port", str(metrics_port + i)]
        children.append(subprocess.Popen(cmd, env=os.environ.copy(), preexec_fn=die_with_parent))
    holder["children"] = children
    log.info(
        "started %d replicas: pids %s%s",
        n,
        [c.pid for c in children],
        f", metrics on ports {metrics_port}..{metrics_port + n - 1}" if metrics_port else "",
    )
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
