"""Find, start and always stop Google's Pub/Sub emulator (the Java one from the gcloud SDK).

The emulator runs the SDK's `cloud-pubsub-emulator` launcher directly (it execs
java), in its own process group, with PR_SET_PDEATHSIG so it dies with its owner
even when the owner is SIGKILLed. `gcloud beta emulators pubsub start` is avoided
on purpose: ending that wrapper leaves the Java process behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from broker.errors import BrokerError
from broker.process import stop_group, tied_to_parent

INSTALL_HINT = (
    "Google's Pub/Sub emulator is not installed: run 'apt-get install google-cloud-cli-pubsub-emulator' "
    "(needs Java 17), or set PUBSUB_EMULATOR_HOST to a running emulator"
)
_LAUNCHER = Path("platform/pubsub-emulator/bin/cloud-pubsub-emulator")


def find_launcher() -> Path:
    """Locate the emulator launcher under the gcloud SDK, or raise BrokerError with the fix."""
    roots = [os.environ.get("CLOUDSDK_ROOT_DIR", ""), "/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk"]
    gcloud = shutil.which("gcloud")
    if gcloud:
        roots.append(str(Path(gcloud).resolve().parent.parent))
    for root in filter(None, roots):
        candidate = Path(root) / _LAUNCHER
        if candidate.is_file() and os.access(candidate, os.X_OK):
            if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
                raise BrokerError("the Pub/Sub emulator needs Java 17: run 'apt-get install openjdk-17-jre-headless'")
            return candidate
    raise BrokerError(INSTALL_HINT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Emulator:
    """A running emulator on 127.0.0.1:<port>. Use as a context manager; stop() is idempotent."""

    def __init__(self, port: int | None = None, start_timeout: float = 60.0, log_path: str | None = None):
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self.given_log_path, self.log_path = log_path, log_path
        # Its data directory and (unless log_path is given) its log live in one temporary folder that stop()
        # removes: left behind, this machine's /tmp held 390 of each after four sessions of tests and benches.
        self.folder: str | None = None
        self.process: subprocess.Popen | None = None

    def start(self) -> Emulator:
        launcher = find_launcher()
        self.folder = tempfile.mkdtemp(prefix=f"pubsub-emulator-{self.port}-")
        self.log_path = self.given_log_path or os.path.join(self.folder, "emulator.log")
        data_dir = os.path.join(self.folder, "data")
        os.makedirs(data_dir)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                tied_to_parent([str(launcher), "--host=127.0.0.1", f"--port={self.port}", f"--data-dir={data_dir}"]),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while not port_open("127.0.0.1", self.port):
            if (code := self.process.poll()) is not None:
                tail = Path(self.log_path).read_text(errors="replace")[-300:].strip().replace("\n", " | ")
                self.stop()
                raise BrokerError(f"the Pub/Sub emulator exited at start (code {code}): {tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"the Pub/Sub emulator did not answer within {self.start_timeout:.0f}s")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End the emulator's whole process group (SIGTERM, then SIGKILL) and remove its temporary folder."""
        proc, self.process = self.process, None
        if proc is not None:
            stop_group(proc, timeout)
        folder, self.folder = self.folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
