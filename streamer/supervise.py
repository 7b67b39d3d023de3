"""What a run supervises: the managed server child, the broker's health, calls that must not hang the exit."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from broker import process
from broker.errors import BrokerError

log = logging.getLogger("streamer")


class RunError(Exception):
    """A run could not complete; one clear line for the user."""


@contextlib.contextmanager
def managed_server(
    flags: dict[str, str | None], replicas: int, ready_timeout: float = 180.0
) -> Iterator[process.ServerChild]:
    """Start `python -m server` (N replicas) as a child, wait for every ready line, always stop it.

    Its log (stderr, in $TMPDIR) is removed after a finished run and kept when anything failed.

    `flags` are passed on as `--name value` (None skipped). A graceful stop (SIGTERM: drain)
    normally; a short one when the broker is gone, since nothing could be acknowledged any more.
    """
    args = ["--replicas", str(replicas)]
    for name, value in flags.items():
        if value:
            args += [f"--{name.replace('_', '-')}", str(value)]
    # One file per server: with --compare a run starts two, which shared (and garbled) one name before.
    fd, name = tempfile.mkstemp(prefix=f"server-{os.getpid()}-", suffix=".log")
    os.close(fd)
    log_path = Path(name)
    try:
        server = process.start_server("server", args, log_path, replicas, ready_timeout)
    except process.ProcessError as err:
        raise RunError(str(err)) from None
    for line in server.lines:
        log.info(line)
    finished = False
    try:
        yield server
        finished = True
    except BrokerError:
        server.stop(timeout=5.0)
        raise
    finally:
        if finished:
            server.stop_and_drop_log()
        else:
            server.stop()


class Watch:
    """While results are awaited: notice that the managed server exited or the broker went away.

    The broker probe (`probe()`: the session's reachability check, the same as at start-up) runs in
    a daemon thread every `period` seconds, so a slow or hanging call never blocks the event loop.
    """

    def __init__(
        self, servers: Sequence[process.ServerChild] = (), probe: Callable[[], None] | None = None, period: float = 3.0
    ):
        self.servers, self.probe_broker, self.period = list(servers), probe, period
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
        if self.probe_broker is not None and self.probe is None and time.monotonic() >= self.next_probe:
            self.next_probe = time.monotonic() + self.period
            self.probe = in_daemon_thread(self.probe_broker)


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
