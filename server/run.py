"""Server process management: config, broker session, signals, replicas.

The model's side (server.serve, train.predictor: JAX, Flax, Orbax, ~1.3 s to import) is imported once the
config is checked and the broker answered, so a bad config file or an unreachable broker is one line and
exit 2 in ~0.7 s rather than ~2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from broker.errors import BrokerError
from broker.process import ready_line, tied_to_parent
from broker.pubsub import Topology, broker_session, ensure_topology
from configs import from_args
from configs.flags import stream_config_problem
from server import metrics
from server.settings import ServerSettings
from train.checkpoint import DEFAULT_MODEL_DIR, ModelError

if TYPE_CHECKING:
    from server.serve import BucketedModel, InferenceServer

log = logging.getLogger("server")

# The exit code of a server that could not start (its config, model, broker or metrics port): one that
# served and stopped exits 0 or 1, one that was killed with the signal's negative number.
START_FAILED = 2


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived before the server was serving."""


def load_model(config, settings: ServerSettings) -> BucketedModel:
    """The model folder's predictor, padded to the settings' buckets."""
    from server.serve import BucketedModel, enable_compilation_cache
    from train.predictor import load_predictor

    enable_compilation_cache()
    return BucketedModel(load_predictor(config.model_dir or DEFAULT_MODEL_DIR), settings.buckets)


def load_server(config, topo: Topology) -> InferenceServer:
    """The real server: the configured model on this topology."""
    from server.serve import InferenceServer

    settings = ServerSettings.from_config(config)
    return InferenceServer(load_model(config, settings), topo, settings)


def main(args: argparse.Namespace, make_server: Callable = load_server) -> int:
    """Run a server (or --replicas of them); `make_server(config, topology)` builds each (bench/ swaps it)."""
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("absl").setLevel(logging.WARNING)
    # `kill -USR1` writes every thread's stack to stderr (the log): what a start that never gets ready waits on
    # (broker/process.py sends it before giving up on a server).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    config = from_args(args, "stream.py")
    problem = stream_config_problem(config, args.config)
    try:
        ServerSettings.from_config(config)  # a config file's bad batching setting: one line, before any broker work
    except ValueError as err:
        problem = problem or str(err)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return START_FAILED
    holder: dict = {}

    def on_signal(signum, _frame):
        log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
        if "server" in holder:
            holder["server"].stop()
        elif "children" in holder:
            for child in holder["children"]:
                child.send_signal(signum)
        else:
            # Remembered as well as raised: the model's loading (JAX's backend probing) catches Exception, and a
            # SIGTERM swallowed there once left a replica serving that its parent had told to stop.
            holder["interrupted"] = True
            raise Interrupted()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with broker_session(config.broker.project or None) as project:
            topo = Topology.from_names(project, config.broker, args.topic_suffix)
            ensure_topology(topo)
            if config.server.replicas > 1:
                return run_replicas(config.server.replicas, holder, config.server.metrics_port)
            return run_one(config, topo, holder, make_server)
    except (BrokerError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return START_FAILED
    except Interrupted:
        return 130


def run_one(config, topo: Topology, holder: dict, make_server: Callable) -> int:
    server = make_server(config, topo)
    holder["server"] = server
    if "interrupted" in holder:  # a SIGTERM/SIGINT during make_server that a library swallowed
        raise Interrupted()
    if config.server.metrics_port:
        try:
            metrics.serve_metrics(config.server.metrics_port)
        except OSError as err:
            print(f"error: cannot serve metrics on port {config.server.metrics_port}: {err}", file=sys.stderr)
            return START_FAILED

    def ready(srv: InferenceServer) -> None:
        host = os.environ.get("PUBSUB_EMULATOR_HOST")
        print(ready_line(srv.model.identity, srv.model.buckets, topo.requests_subscription_path, os.getpid(), host))
        sys.stdout.flush()

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


def run_replicas(n: int, holder: dict, metrics_port: int = 0) -> int:
    """N independent server processes on one subscription; Pub/Sub balances between them.

    With a metrics port P, replica i serves its metrics on P + i (each process has its own counters).
    """
    argv = strip_flag(strip_flag(sys.argv[1:], "--replicas"), "--metrics-port")
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    module = spec.name if spec else "server"  # server, or bench's variant of it
    children = []
    for i in range(n):
        cmd = [sys.executable, "-m", module, *argv, "--replicas", "1"]
        if metrics_port:
            cmd += ["--metrics-port", str(metrics_port + i)]
        children.append(subprocess.Popen(tied_to_parent(cmd), env=os.environ.copy()))
    holder["children"] = children
    log.info(
        "started %d replicas: pids %s%s",
        n,
        [c.pid for c in children],
        f", metrics on ports {metrics_port}..{metrics_port + n - 1}" if metrics_port else "",
    )
    codes: dict[int, int] = {}
    start_failed = False
    while len(codes) < len(children):
        for child in children:
            if child.pid in codes or child.poll() is None:
                continue
            codes[child.pid] = child.returncode
            if child.returncode == START_FAILED and not start_failed:
                start_failed = True
                stop_siblings(children, child)
        time.sleep(0.1)
    return START_FAILED if start_failed else max(codes.values(), key=abs)


def stop_siblings(children: list[subprocess.Popen], failed: subprocess.Popen) -> None:
    """One replica could not start: stop the others, so the caller sees the failure now and not after its timeout.

    Only a start failure does this: a replica killed while serving leaves the others serving (that is
    what replicas are for; docs/reliability.md).
    """
    log.error("replica %d could not start (exit %d): stopping the other replicas", failed.pid, failed.returncode)
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)


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
