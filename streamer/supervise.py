"""What a run supervises: the managed server child, the broker's health, calls that must not hang the exit."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from broker import process
from broker.errors import BrokerError
from broker.pubsub import check_reachable

log = logging.getLogger("streamer")
REPO = Path(__file__).resolve().parent.parent


class RunError(Exception):
    """A run could not complete; one clear line for the user."""


class ManagedServer:
    """The `python -m server` child of a run: its process and the watcher of its ready lines."""

    def __init__(self, proc, ready: process.ReadyWatcher):
        self.proc, self.ready = proc, ready

    def last_log_line(self) -> str:
        return self.ready.last_log_line()


@contextlib.contextmanager
def managed_server(
    flags: dict[str, str | None], replicas: int, ready_timeout: float = 180.0
) -> Iterator[ManagedServer]:
    """Start `python -m server` (N replicas) as a child, wait for every ready line, always stop it.

    `flags` are passed on as `--name value` (None skipped). A graceful stop (SIGTERM: drain)
    normally; a short one when the broker is gone, since nothing could be acknowledged any more.
    """
    cmd = [sys.executable, "-m", "server", "--replicas", str(replicas)]
    for name, value in flags.items():
        if value:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"server-{os.getpid()}.log"
    proc = process.start(cmd, REPO, log_path)
    ready = process.ReadyWatcher(proc, log_path)
    try:
        try:
            for line in ready.wait(replicas, ready_timeout):
                log.info(line)
        except process.ProcessError as err:
            raise RunError(str(err)) from None
        yield ManagedServer(proc, ready)
    except BrokerError:
        process.stop_group(proc, timeout=5.0)
        raise
    finally:
        process.stop_group(proc)


class Watch:
    """While results are awaited: notice that the managed server exited or the broker went away.

    The broker probe (`check_reachable`, the same check as at start-up) runs in a daemon
    thread every `period` seconds, so a slow or hanging call never blocks the event loop.
    """

    def __init__(self, project: str | None, servers=(), period: float = 3.0):
        self.project, self.servers, self.period = project, list(servers), period
        self.next_probe = time.monotonic() + period
        self.probe: concurrent.futures.Future | None = None

    def check(self) -> None:
        for server in self.servers:
            if (code := server.proc.poll()) is not None:
                raise RunError(f"the server exited mid-run (code {code}): {server.last_log_line()}")
        if self.probe is not None and self.probe.done():
            err, self.probe = self.probe.exception(), None
            if err is not None:
                raise BrokerError(f"lost the broker mid-run: {str(err).splitlines()[0]}")
        if self.project is not None and self.probe is None and time.monotonic() >= self.next_probe:
            self.next_probe = time.monotonic() + self.period
            self.probe = in_daemon_thread(check_reachable, self.project, 10.0)


def in_daemon_thread(fn, *args) -> concurrent.futures.Future:
    """Run fn(*args) in a daemon thread (never joined at exit, so it cannot hold the process up)."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def target() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as err:  # handed to whoever reads the future
            future.set_exception(err)

    threading.Thread(target=target, name=getattr(fn, "__name__", "worker"), daemon=True).start()
    return future


def close_within(close, timeout: float, what: str) -> None:
    """Call close() but give up after `timeout` s: a client stuck on a dead broker must not hang the exit."""
    done = in_daemon_thread(close)
    try:
        done.result(timeout)
    except concurrent.futures.TimeoutError:
        log.warning("%s did not close within %.0fs; leaving it behind", what, timeout)
    except Exception as err:
        log.warning("closing %s failed: %s", what, err)


def server_flags(args, config) -> dict[str, str | None]:
    """The flags a managed server shares with the run that starts it."""
    return {
        "config": args.config,
        "model": config.model_dir or None,
        "topic_suffix": args.topic_suffix,
        "project": config.broker.project or None,
    }
