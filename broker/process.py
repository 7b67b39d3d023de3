"""The rig's child processes: start them in their own group, hear their ready line, always stop them.

The one home of the "server ready" protocol. A server prints one line per replica when it
serves; whoever starts one (the streamer, `make bench`, the test fixtures) does it through
start_server() / ServerChild, which waits for those lines through ReadyWatcher and stops the
whole process group with stop_group().

    server ready: model <id> buckets [..] subscription <path> pid <pid>[ (broker: export ...)]
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

READY_PREFIX = "server ready"
REPO = Path(__file__).resolve().parent.parent  # `python -m <module>` runs from here


class ProcessError(Exception):
    """A child process did not come up; the message says why, in one line."""


def tied_to_parent(cmd: Sequence[str]) -> list[str]:
    """cmd, run so that it gets SIGTERM when the process starting it dies, even by SIGKILL.

    The one rule for tying a child to its parent: util-linux's `setpriv --pdeathsig` sets
    PR_SET_PDEATHSIG and execs cmd (same pid). Never a preexec_fn: that runs Python in the forked
    child, and in a parent full of threads (pytest with gRPC and watcher threads) the child hung
    in it, and so did Popen. Without setpriv the child is still stopped by stop_group().
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else list(cmd)


def ready_line(model: str, buckets: Sequence[int], subscription: str, pid: int, broker_host: str | None) -> str:
    """What a server prints once it serves (one line per replica)."""
    hint = f" (broker: export PUBSUB_EMULATOR_HOST={broker_host})" if broker_host else ""
    return f"{READY_PREFIX}: model {model} buckets {list(buckets)} subscription {subscription} pid {pid}{hint}"


def ready_pid(line: str) -> int | None:
    """The replica's pid from its ready line (None if the line is not one)."""
    match = re.search(r" pid (\d+)", line) if line.startswith(READY_PREFIX) else None
    return int(match.group(1)) if match else None


def start(cmd: Sequence[str], cwd: str | Path, log_path: str | Path, env: dict | None = None) -> subprocess.Popen:
    """Start cmd in its own process group, tied to this process (stdout piped for the ready line, stderr to log_path)."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            tied_to_parent(cmd),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )


class ReadyWatcher:
    """Reads a child's stdout in a daemon thread and counts its ready lines."""

    def __init__(self, proc: subprocess.Popen, log_path: str | Path | None = None):
        self.proc, self.log_path = proc, Path(log_path) if log_path else None
        self.lines: list[str] = []
        self._ready = threading.Semaphore(0)
        threading.Thread(target=self._read, name="ready-watcher", daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(ValueError, OSError):  # the pipe closes when the child is stopped
            for line in self.proc.stdout:
                if line.startswith(READY_PREFIX):
                    self.lines.append(line.strip())
                    self._ready.release()

    @property
    def pids(self) -> list[int]:
        return [pid for pid in map(ready_pid, self.lines) if pid is not None]

    def wait(self, replicas: int = 1, timeout: float = 180.0) -> list[str]:
        """Block until `replicas` ready lines arrived; ProcessError if the child exits or time runs out."""
        deadline = time.monotonic() + timeout
        for _ in range(replicas):
            while not self._ready.acquire(timeout=0.2):
                if self.proc.poll() is not None:
                    raise ProcessError(
                        f"the server exited during start-up (code {self.proc.returncode}): {self.last_log_line()}"
                    )
                if time.monotonic() > deadline:
                    raise ProcessError(f"the server was not ready within {timeout:.0f}s (log: {self.log_path})")
        return list(self.lines)

    def last_log_line(self) -> str:
        with contextlib.suppress(OSError, TypeError):
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            if lines:
                return lines[-1]
        return "(no output)"


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """SIGTERM the child's whole group (graceful drain), SIGKILL it if it outlives `timeout`; idempotent.

    The group may outlive its leader briefly, so it is always SIGKILLed at the end.
    """
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    if proc.stdout is not None:
        with contextlib.suppress(OSError):
            proc.stdout.close()
    return proc.returncode


def dump_stacks(proc: subprocess.Popen) -> None:
    """SIGUSR1 to the child's group: a server writes every thread's stack to its log (faulthandler), so a start
    that never got ready says where it waited. A process that does not handle SIGUSR1 ends: it is being stopped."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGUSR1)
        time.sleep(0.5)


class ServerChild:
    """`python -m <module> <args>` (a server: its replicas each print a ready line) in its own process group.

    stderr goes to `log_path`; `prefix` goes before the interpreter (e.g. `taskset -c 1` to pin it).
    Broker knows no server: the module is only a name here.
    """

    def __init__(
        self,
        module: str,
        args: Sequence[str],
        log_path: str | Path,
        replicas: int = 1,
        prefix: Sequence[str] = (),
        cwd: str | Path = REPO,
        env: dict | None = None,
    ):
        self.module, self.replicas, self.log_path = module, replicas, Path(log_path)
        self.proc = start([*prefix, sys.executable, "-m", module, *args], cwd, log_path, env)
        self.ready = ReadyWatcher(self.proc, log_path)

    def wait_ready(self, timeout: float = 180.0) -> list[str]:
        """Block until every replica's ready line arrived (returned); if it exits first or time runs out, stop the
        whole group and raise ProcessError (one line)."""
        try:
            return self.ready.wait(self.replicas, timeout)
        except ProcessError:
            if self.proc.poll() is None:
                dump_stacks(self.proc)
            stop_group(self.proc, timeout=5.0)
            raise

    @property
    def lines(self) -> list[str]:
        return self.ready.lines

    @property
    def pids(self) -> list[int]:
        return self.ready.pids

    def last_log_line(self) -> str:
        return self.ready.last_log_line()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful drain) the whole group, SIGKILL after `timeout`; idempotent."""
        return stop_group(self.proc, timeout)

    def stop_and_drop_log(self, timeout: float = 30.0) -> int | None:
        """stop(); the log is removed when the server exited cleanly (code 0) and kept, for its errors, otherwise.

        Every managed or bench server used to leave its log in /tmp: 59 run logs and 327 bench logs had piled up here.
        """
        code = self.stop(timeout)
        if code == 0:
            self.log_path.unlink(missing_ok=True)
        return code

    def __enter__(self) -> ServerChild:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(
    module: str,
    args: Sequence[str],
    log_path: str | Path,
    replicas: int = 1,
    timeout: float = 180.0,
    prefix: Sequence[str] = (),
    cwd: str | Path = REPO,
) -> ServerChild:
    """The one way the rig starts a server: `python -m <module> <args>`, returned once all `replicas` ready lines
    arrived; ProcessError (one line, the child stopped) if it exits first or is not ready within `timeout` s."""
    child = ServerChild(module, args, log_path, replicas, prefix, cwd)
    child.wait_ready(timeout)
    return child
