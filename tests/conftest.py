"""Shared fixtures: one real Pub/Sub emulator per session, fresh topic names per test."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from google.api_core.exceptions import NotFound
from google.cloud import pubsub_v1

from broker import process, wire
from broker.emulator import Emulator, free_port
from broker.pubsub import (
    EMULATOR_PROJECT,
    Publisher,
    PublishSettings,
    Topology,
    create_subscription,
    delete_topology,
    ensure_topology,
    pull_until,
    results_subscription_options,
)
from configs import load_config

REPO = Path(__file__).resolve().parent.parent

# Every test server and training subprocess compiles the same XLA programs (a server's ten batch
# buckets: 2-4 s of its start). One persistent compilation cache for the session's processes
# compiles each program once. XLA_FLAGS are part of the cache key, so a run capped with
# --xla_cpu_max_isa compiles its own programs. pytest-xdist workers inherit the controller's
# environment, so they share the controller's cache, and only the controller removes it.
_OWN_CACHE: str | None = None
# The test servers' logs, one folder per run shared by the workers in the same way: removed after a
# passing run, kept (and named) after a failing one. In /tmp itself they piled up, 674 after four sessions.
_OWN_LOGS: str | None = None


def _is_xdist_worker(config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config):
    """Before collection imports anything that imports JAX."""
    global _OWN_CACHE, _OWN_LOGS
    if not _is_xdist_worker(config):
        if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
            _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax-cache-")
        _OWN_LOGS = os.environ["ICC_TEST_LOGS"] = tempfile.mkdtemp(prefix="icc-test-logs-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    # The test emulators' JVM compiles with C1 only (the emulator's launcher reads this variable): a test
    # emulator lives ~4 minutes of short bursts, and C2's compiling was most of its CPU. Sampled from /proc
    # over whole parallel runs: the two workers' emulators used 33 + 21 CPU-s with C2, 15 + 15 and 19 + 13
    # with C1 only. Runs and benches keep the JVM's default: C1 alone settles at 0.45-0.5 cores against
    # C2's 0.3-0.4 at 200 img/s (docs/benchmarks.md).
    os.environ.setdefault("CLOUD_PUBSUB_EMULATOR_OPTS", "-XX:TieredStopAtLevel=1")


# `make test` hands whole files to its two workers (pytest-xdist --dist loadfile --no-loadscope-reorder) in
# collection order; these files, the longest, go first, and the short ones fill in at the end, so the two
# workers finish together. In xdist's own order (files with the most tests first) the longest files came
# last and one worker sat idle for the last 27 s of 238 (busy 227 s against 200 s). test_evaluator.py
# trains the folder models test_train.py reuses (tests/helpers_train.py): it goes first, on the other
# worker from test_train.py, whose smoke model is trained meanwhile. Seconds on the AVX-512 machine.
LONGEST_FIRST = (
    "test_evaluator.py",  # 39
    "test_train.py",  # 60
    "test_faults_broker.py",  # 49
    "test_streamer.py",  # 46
    "test_server.py",  # 33
    "test_validation_split.py",  # 29
    "test_model.py",  # 25
    "test_fuzz.py",  # 22
    "test_robustness_stream.py",  # 19
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
    if _OWN_LOGS is not None:
        if exitstatus == 0:
            shutil.rmtree(_OWN_LOGS, ignore_errors=True)
        else:
            print(f"\nthe test servers' logs are in {_OWN_LOGS}")


SHIPPED_MODEL = REPO / "models" / "fashion-mnist"


@pytest.fixture(scope="session")
def emulator():
    """Google's real Pub/Sub emulator, started once; PUBSUB_EMULATOR_HOST points at it."""
    with Emulator() as emu:
        previous = os.environ.get("PUBSUB_EMULATOR_HOST")
        os.environ["PUBSUB_EMULATOR_HOST"] = emu.host
        try:
            yield emu
        finally:
            if previous is None:
                os.environ.pop("PUBSUB_EMULATOR_HOST", None)
            else:
                os.environ["PUBSUB_EMULATOR_HOST"] = previous


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:10]


def fresh_topology(suffix: str) -> Topology:
    """configs/stream.py's topology, every name suffixed (fresh topics per test)."""
    return Topology.from_names(EMULATOR_PROJECT, load_config(None, "stream.py").broker, suffix)


@pytest.fixture
def topology(emulator, suffix) -> Topology:
    """A fresh set of topics/subscriptions with the configured settings."""
    topo = fresh_topology(suffix)
    ensure_topology(topo)
    yield topo
    delete_topology(topo)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The shipped model when present (it is in the repo), else a freshly trained smoke model."""
    if (SHIPPED_MODEL / "metadata.json").is_file():
        return SHIPPED_MODEL
    out = tmp_path_factory.mktemp("smoke-model")
    subprocess.run(
        [sys.executable, "-m", "train", "--config", "configs/smoke.py", "--workdir", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def test_images():
    from train.data import load_fashion_mnist

    return load_fashion_mnist("test", 2000)


class ServerProcess(process.ServerChild):
    """`python -m server` as a subprocess on a test topology; always stopped by the fixture."""

    def __init__(self, topology_suffix: str, model: Path, *extra: str, replicas: int = 1):
        self.suffix = topology_suffix
        args = ["--topic-suffix", topology_suffix, "--model", str(model), "--replicas", str(replicas)]
        log_path = (
            Path(os.environ.get("ICC_TEST_LOGS") or tempfile.gettempdir()) / f"test-server-{uuid.uuid4().hex[:8]}.log"
        )
        super().__init__("server", [*args, "--log-level", "INFO", *extra], log_path, replicas)

    @property
    def ready_lines(self) -> list[str]:
        return self.lines

    def wait_ready(self, timeout: float = 90.0) -> ServerProcess:
        try:
            super().wait_ready(timeout)
        except process.ProcessError as err:
            raise AssertionError(f"{err}:\n{self.log_text()[-3000:]}") from None
        return self

    def terminate(self, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        process.stop_group(self.proc, timeout=10)


@pytest.fixture
def start_server(suffix, model_dir, topology):
    """Factory: start_server(*extra_args, replicas=1) -> a ready ServerProcess on this test's topology."""
    started: list[ServerProcess] = []

    def start(*extra: str, replicas: int = 1, wait: bool = True, model: Path | None = None) -> ServerProcess:
        server = ServerProcess(suffix, model or model_dir, *extra, replicas=replicas)
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in started:
        server.kill()


@dataclasses.dataclass
class SharedServer:
    """One warmed `python -m server` on its own topology, serving every test that only sends requests and reads
    results. Each such test gets its own view (`topology`): the shared requests topic and a results subscription
    made for that test alone, so it sees only results published after it started.
    """

    server: ServerProcess
    topology: Topology
    metrics_port: int

    def log_since(self, mark: int) -> str:
        """The server's log after character `mark` (take `len(server.log_text())` before the test's traffic)."""
        return self.server.log_text()[mark:]


@pytest.fixture(scope="session")
def shared_server(emulator, model_dir) -> SharedServer:
    """Started lazily, once per process (xdist worker) that needs it: a server start costs 4-5 s of JAX import
    and warm-up. Tests that kill, stop, signal or reconfigure a server use `start_server` instead.
    """
    with metered_server(model_dir) as (server, topo, port):
        yield SharedServer(server, topo, port)


@contextlib.contextmanager
def metered_server(model_dir: Path) -> Iterator[tuple[ServerProcess, Topology, int]]:
    """A ready `python -m server` with a Prometheus port, on a fresh topology; killed and its topology deleted after."""
    suffix = uuid.uuid4().hex[:10]
    topo = fresh_topology(suffix)
    ensure_topology(topo)
    port = free_port()
    server = ServerProcess(suffix, model_dir, "--metrics-port", str(port))
    try:
        server.wait_ready()
        yield server, topo, port
    finally:
        server.kill()
        delete_topology(topo)


@pytest.fixture
def shared(shared_server) -> SharedServer:
    """The shared server, with `topology` whose results subscription is this test's own."""
    assert shared_server.server.proc.poll() is None, "the shared server died in an earlier test"
    own = uuid.uuid4().hex[:10]
    topo = dataclasses.replace(
        shared_server.topology, results_subscription=f"{shared_server.topology.results_subscription}-{own}"
    )
    subscriber = pubsub_v1.SubscriberClient()
    try:
        create_subscription(
            subscriber, topo.results_subscription_path, topo.results_topic_path, **results_subscription_options(topo)
        )
    finally:
        subscriber.close()
    yield dataclasses.replace(shared_server, topology=topo)
    delete_subscription(topo.results_subscription_path)


def delete_subscription(path: str) -> None:
    """Delete one subscription; one already gone is fine."""
    subscriber = pubsub_v1.SubscriberClient()
    try:
        with contextlib.suppress(NotFound):
            subscriber.delete_subscription(request={"subscription": path})
    finally:
        subscriber.close()


@pytest.fixture
def shared_suffix(shared_server) -> Iterator[str]:
    """The shared server's topic suffix, for a streamer run against it (`--server external --topic-suffix S`).

    The shared topology's own results subscription is deleted before and after the test: the streamer makes it
    anew (ensure_topology), so the run sees only results published after it started, not every earlier test's.
    """
    assert shared_server.server.proc.poll() is None, "the shared server died in an earlier test"
    with own_results(shared_server.topology.results_subscription_path):
        yield shared_server.server.suffix


@contextlib.contextmanager
def own_results(results_subscription: str) -> Iterator[None]:
    """A streamer run's results subscription deleted before and after it: the run makes it anew (ensure_topology),
    so it sees only results published after it started, not an earlier run's on the same topology."""
    delete_subscription(results_subscription)
    yield
    delete_subscription(results_subscription)


# ----------------------------------------------------------------- helpers
def stream_config_file(path: Path, values: dict) -> Path:
    """A `--config` file: configs/stream.py with `values` ({"server.drain_timeout_s": 3.0, ...}) set.

    For settings that have no flag; a streamer passes --config on to its managed server, so both read it.
    """
    path.write_text(
        "from configs import load_config, override\n\n\n"
        f"def get_config():\n    return override(load_config(None, 'stream.py'), {values!r})\n"
    )
    return path


def free_port_run(n: int) -> int:
    """A port P such that P..P+n-1 are all free now (`--replicas n --metrics-port P` binds P+i)."""
    import socket

    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        sockets = []
        try:
            for port in range(first, first + n):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no run of {n} free ports")


def publish_images(
    topo: Topology, images: np.ndarray, run_id: str = "t", streams: int = 4, start: int = 0, stream_prefix: str = ""
) -> list[str]:
    """Publish images as raw requests `<run_id>-<i>` on streams `<stream_prefix><i % streams>`; returns the ids."""
    publisher = Publisher(topo.requests_topic_path, PublishSettings(max_latency_s=0.01))
    ids, futures = [], []
    try:
        for k, image in enumerate(images):
            i = start + k
            data, attrs = wire.encode_request(
                image, f"{run_id}-{i}", stream=f"{stream_prefix}{i % streams}", seq=i // streams
            )
            futures.append(publisher.publish(data, attrs["stream"], **attrs))
            ids.append(f"{run_id}-{i}")
        for future in futures:
            future.result(timeout=30)
    finally:
        publisher.close()
    return ids


def publish_raw(topo: Topology, data: bytes, ordering_key: str = "", **attributes: str) -> None:
    publisher = Publisher(topo.requests_topic_path)
    try:
        publisher.publish(data, ordering_key, **attributes).result(timeout=30)
    finally:
        publisher.close()


def collect_results(topo: Topology, expect: int, timeout: float = 60.0) -> tuple[list[dict], list[dict]]:
    """Pull result messages until `expect` individual results arrived; returns (results, message bodies)."""
    messages = pull_until(
        topo.results_subscription_path, expect, timeout, count=lambda m: len(json.loads(m.data)["results"])
    )
    bodies = [json.loads(m.data) for m in messages]
    return [r for body in bodies for r in body["results"]], bodies


def publish_messages(topo: Topology, messages: list[tuple[bytes, str, dict[str, str]]]) -> list[str]:
    """Publish (data, ordering_key, attributes) in order through one publisher; returns the message ids."""
    publisher = Publisher(topo.requests_topic_path, PublishSettings(max_latency_s=0.01))
    try:
        futures = [publisher.publish(data, key, **attrs) for data, key, attrs in messages]
        return [future.result(timeout=60) for future in futures]
    finally:
        publisher.close()


class ResultWatcher:
    """Pulls the results subscription in a background thread, recording when each result arrived.

    `arrivals` holds (time.monotonic() at receipt, result dict, replica) for every result,
    duplicates included; `unique()` is the set of answered request ids.
    """

    def __init__(self, topo: Topology):
        self.topo = topo
        self.arrivals: list[tuple[float, dict, str]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="result-watcher", daemon=True)

    def __enter__(self) -> ResultWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(10)

    def _run(self) -> None:
        try:
            pull_until(self.topo.results_subscription_path, None, math.inf, on_batch=self._record, stop=self.stopping)
        except BaseException as err:  # reported by wait_for()
            self.error = err

    def _record(self, messages: list) -> None:
        now = time.monotonic()
        with self.lock:
            for m in messages:
                body = json.loads(m.data)
                self.arrivals.extend((now, r, body.get("replica", "")) for r in body["results"])

    def snapshot(self) -> list[tuple[float, dict, str]]:
        with self.lock:
            return list(self.arrivals)

    def unique(self) -> set:
        return {r.get("request_id") for _, r, _ in self.snapshot()}

    def wait_until(self, predicate, timeout: float) -> bool:
        """True once predicate(snapshot) holds; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise AssertionError(f"result watcher failed: {self.error}")
            if predicate(self.snapshot()):
                return True
            time.sleep(0.1)
        return False

    def wait_for(self, ids, timeout: float) -> bool:
        """True once every request id in `ids` has a result (or at least `ids` distinct ones if it is an int)."""
        wanted = ids if isinstance(ids, int) else set(ids)

        def answered(arrivals) -> bool:
            got = {r.get("request_id") for _, r, _ in arrivals}
            return len(got) >= wanted if isinstance(wanted, int) else wanted <= got

        return self.wait_until(answered, timeout)


# ----------------------------------------------------------- fault tests
def figures(name: str, **values) -> None:
    print(f"\nFIGURES {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)


def pids_with(text: str) -> list[int]:
    """Live processes whose command line contains `text` (from /proc; zombies excluded)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def progress(text: str, bar: str) -> int:
    """The last count a tqdm bar named `bar` printed (tqdm writes to a file with carriage returns)."""
    found = re.findall(rf"{bar}\s*:\s*\d+%\|[^|]*\|\s*(\d+)/\d+", text)
    return int(found[-1]) if found else 0
