"""One-command evaluation: broker + managed server + streamer + collector + report."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from broker import wire
from broker.emulator import die_with_parent
from broker.errors import BrokerError
from broker.pubsub import (
    Publisher,
    PublishSettings,
    Puller,
    Topology,
    broker_session,
    check_reachable,
    ensure_topology,
    pull_all,
)
from configs import load_config
from streamer.collector import Collector
from streamer.stream import make_publisher, publish_dataset, request_for
from train.checkpoint import DEFAULT_MODEL_DIR, ModelError
from train.data import FASHION_MNIST_CLASSES, DatasetError, load_fashion_mnist, load_image

log = logging.getLogger("streamer")
REPO = Path(__file__).resolve().parent.parent


class RunError(Exception):
    """A run could not complete; one clear line for the user."""


def topology_from(config, project: str, suffix: str = "") -> Topology:
    return Topology.from_names(project, config.broker, suffix)


# --------------------------------------------------------------- server child
class ManagedServer:
    """The `python -m server` child of a run: its process and the file its log goes to."""

    def __init__(self, proc: subprocess.Popen, log_path: Path):
        self.proc, self.log_path = proc, log_path

    def last_log_line(self) -> str:
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            if lines:
                return lines[-1]
        return "(no output)"


@contextlib.contextmanager
def managed_server(args, replicas: int, ready_timeout: float = 180.0) -> Iterator[ManagedServer]:
    """Start `python -m server` (N replicas) as a child, wait for every 'server ready', always stop it.

    A graceful stop (SIGTERM: drain) normally; a short one when the broker is gone, since
    nothing could be published or acknowledged any more.
    """
    cmd = [sys.executable, "-m", "server", "--replicas", str(replicas)]
    for flag in ("config", "model", "topic_suffix", "project"):
        if getattr(args, flag, None):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if getattr(args, "server_args", None):
        cmd += args.server_args
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"server-{os.getpid()}.log"
    with open(log_path, "wb") as server_log:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=server_log,
            text=True,
            cwd=REPO,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    try:
        wait_ready(proc, replicas, ready_timeout, log_path)
        yield ManagedServer(proc, log_path)
    except BrokerError:
        stop_process(proc, timeout=5.0)
        raise
    finally:
        stop_process(proc)


def wait_ready(proc: subprocess.Popen, replicas: int, timeout: float, log_path: Path) -> None:
    ready = threading.Semaphore(0)

    def read_stdout() -> None:
        for line in proc.stdout:
            if line.startswith("server ready"):
                log.info(line.strip())
                ready.release()

    threading.Thread(target=read_stdout, daemon=True).start()
    deadline = time.monotonic() + timeout
    for _ in range(replicas):
        while not ready.acquire(timeout=0.2):
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                raise RunError(f"the server exited during start-up (code {proc.returncode}): {tail[0]}")
            if time.monotonic() > deadline:
                raise RunError(f"the server was not ready within {timeout:.0f}s (log: {log_path})")


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """SIGTERM (graceful drain), then SIGKILL the group if it does not exit in time (idempotent)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("server did not stop within %.0fs; killing it", timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)
    return proc.returncode


# ------------------------------------------------------------------ the run
class Watch:
    """While results are awaited: notice that the managed server exited or the broker went away.

    The broker probe (`check_reachable`, the same check as at start-up) runs in a daemon
    thread every `period` seconds, so a slow or hanging call never blocks the event loop.
    """

    def __init__(self, project: str | None, server: ManagedServer | None = None, period: float = 3.0):
        self.project, self.server, self.period = project, server, period
        self.next_probe = time.monotonic() + period
        self.probe: concurrent.futures.Future | None = None

    def check(self) -> None:
        if self.server is not None and (code := self.server.proc.poll()) is not None:
            raise RunError(f"the server exited mid-run (code {code}): {self.server.last_log_line()}")
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


def open_collector(run_id: str, labels, class_names, state_file: str | None) -> Collector:
    try:
        return Collector(run_id, labels, class_names, state_file)
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise RunError(f"cannot resume from state file {state_file}: {err}") from None


def state_file_size(state_file: str | None) -> int | None:
    """How many requests the run recorded in this state file had (None if there is no usable file)."""
    if not state_file or not Path(state_file).is_file():
        return None
    with contextlib.suppress(ValueError, KeyError, TypeError, OSError):
        return int(json.loads(Path(state_file).read_text())["n"])
    return None


PUBLISH_GRACE_S = 30.0  # > BulkPublisher's retry budget for one batch


async def stream_and_collect(
    args, config, topo: Topology, run_id: str, server: ManagedServer | None = None, publish: bool = True
) -> dict:
    """Publish the test set (unless publish=False: collect only), collect every result, return the summary."""
    s = config.streamer
    data = load_fashion_mnist("test", s.limit or None)
    content_type = wire.PNG if s.content_type == "png" else wire.RAW
    collector = open_collector(run_id, data.labels, list(data.class_names), config.collector.state_file or None)
    if publish and collector.count_answered():
        log.warning(
            "state file %s already holds %d results of run %s: publishing every request again "
            "(repeats are counted as duplicates); use --collect-only to only collect the rest",
            config.collector.state_file,
            collector.count_answered(),
            run_id,
        )
    stop = asyncio.Event()  # the user interrupted
    publish_stop = asyncio.Event()  # publishing should end (interrupted, or the run failed)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: (stop.set(), publish_stop.set()))
    published_bar = (
        tqdm(total=len(data), desc="published", unit="img", position=0, dynamic_ncols=True) if publish else None
    )
    received_bar = tqdm(total=len(data), desc="received ", unit="img", position=1, dynamic_ncols=True)
    received_bar.update(collector.count_answered())
    collector.on_progress = received_bar.update
    subscription = collector.subscribe(topo.results_subscription_path)
    publisher = make_publisher(topo.requests_topic_path) if publish else None
    started = time.time()
    sent_s = publishing = None
    try:
        if publish:
            publishing = asyncio.create_task(
                publish_dataset(
                    publisher, data.images, run_id, s.rate, s.streams, content_type, published_bar.update, publish_stop
                )
            )
        watch = Watch(topo.project, server)
        sent_s = await wait_for_results(collector, publishing, subscription, stop, config.collector, args, watch)
    finally:
        publish_stop.set()
        if publishing is not None and not publishing.done():
            # Let the batch in flight finish (or fail: a dead broker fails it within the publish
            # retry budget) rather than cancel it under the publisher's feet; cancel as a last resort.
            await asyncio.wait({publishing}, timeout=PUBLISH_GRACE_S)
            if not publishing.done():
                publishing.cancel()
            await asyncio.gather(publishing, return_exceptions=True)
        if published_bar is not None:
            published_bar.close()
        received_bar.close()
        if publisher is not None:
            close_within(publisher.close, 10.0, "the request publisher")
        if config.collector.state_file:
            collector.flush_state()  # persist and ack what arrived, while the subscription can still ack
        close_within(subscription.close, 15.0, "the results subscription")
        if config.collector.state_file:
            collector.flush_state()  # and whatever arrived while closing (redelivered later: a duplicate)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    finished = time.time()
    dead = len(pull_all(topo.dead_letter_subscription_path, timeout=1.0))
    achieved = _achieved_rate(sent_s)
    run = {
        "run_id": run_id,
        "mode": "stream" if publish else "collect-only",
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "wall_s": round(finished - started, 2),
        "rate_target": s.rate if publish else None,
        "rate_achieved": achieved,
        "streams": s.streams,
        "limit": len(data),
        "replicas": config.server.replicas,
        "server_mode": args.server,
        "content_type": s.content_type,
        "broker": f"emulator {os.environ['PUBSUB_EMULATOR_HOST']}"
        if os.environ.get("PUBSUB_EMULATOR_HOST")
        else f"project {topo.project}",
        "versions": _versions(),
        "interrupted": stop.is_set(),
    }
    return collector.summary(run, sent_s, dead_lettered=dead)


async def wait_for_results(
    collector: Collector, publishing: asyncio.Task | None, subscription, stop: asyncio.Event, cfg, args, watch=None
):
    """Until every request is answered, the timeout expires, or the user interrupts.

    Raises RunError/BrokerError (one clear line) when publishing fails, the results
    subscription dies, the managed server exits or the broker stops answering.
    """
    deadline = time.monotonic() + cfg.timeout_s
    last_progress, last_count = time.monotonic(), -1
    sent_s, published = None, publishing is None
    while not stop.is_set():
        if not published and publishing.done():
            sent_s, published = _published(publishing), True
        if collector.done.is_set():
            break
        if (err := subscription.error()) is not None:
            raise BrokerError(f"the results subscription failed: {str(err).splitlines()[0]}")
        if watch is not None:
            watch.check()
        count = collector.count_answered()
        if count != last_count:
            last_progress, last_count = time.monotonic(), count
        now = time.monotonic()
        if now > deadline or (published and now - last_progress > cfg.idle_timeout_s):
            log.warning("timed out waiting for results (%d/%d answered)", count, len(collector.labels))
            break
        await asyncio.sleep(0.05)
    if not published and publishing.done():
        sent_s = _published(publishing)
    return sent_s


def _published(publishing: asyncio.Task):
    """The send times from a finished publishing task, or RunError with the publish failure in one line."""
    try:
        return publishing.result()
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RunError(f"publishing the requests failed: {first}") from None


def _achieved_rate(sent_s) -> float | None:
    if sent_s is None:
        return None
    s = sent_s[~np.isnan(sent_s)]
    return round((len(s) - 1) / (s.max() - s.min()), 2) if len(s) > 1 and s.max() > s.min() else None


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("jax", "flax", "google-cloud-pubsub", "numpy")}


def verify_offline(summary: dict, model_dir) -> dict:
    """Compare every streamed prediction with an offline pass over the same checkpoint.

    The offline pass is `python -m train.evaluate`'s: same loader, same jitted
    function, same batch size (train.model.predict_in_batches), no broker.
    """
    from train.checkpoint import load_model
    from train.model import make_predict_fn, predict_in_batches

    model, meta = load_model(model_dir)
    predict, state = make_predict_fn(model)
    test = load_fashion_mnist("test", summary["run"]["limit"])
    offline = predict_in_batches(predict, state, test.images, meta.get("eval_batch_size", 1000)).argmax(-1)
    streamed = {p["index"]: p["prediction"] for p in summary["predictions"]}
    mismatches = [i for i, pred in streamed.items() if offline[i] != pred]
    return {
        "model": meta["checkpoint_sha256"][:16],
        "offline_accuracy": float((offline == test.labels).mean()),
        "compared": len(streamed),
        "agree": len(streamed) - len(mismatches),
        "mismatches": mismatches[:100],
        "identical": not mismatches and len(streamed) == len(offline),
    }


# -------------------------------------------------------------- entry points
def run(args, config) -> int:
    """The whole evaluation (or, with --collect-only, the collecting half of one); returns the exit code."""
    from streamer.report import render_terminal, write_report

    collect_only = getattr(args, "collect_only", False)
    if collect_only:
        if not args.run_id:
            raise RunError("--collect-only needs the --run-id of the run whose results to collect")
        if getattr(args, "limit", None) is None and (n := state_file_size(config.collector.state_file)):
            config.streamer.limit = n  # the run's size, as recorded in its state file
    run_id = args.run_id or uuid.uuid4().hex[:8]
    with broker_session(config.broker.project or None) as project:
        topo = topology_from(config, project, args.topic_suffix)
        ensure_topology(topo)
        with (
            managed_server(args, config.server.replicas)
            if args.server == "managed"
            else contextlib.nullcontext() as server
        ):
            summary = asyncio.run(stream_and_collect(args, config, topo, run_id, server, publish=not collect_only))
    model_dir = config.model_dir or DEFAULT_MODEL_DIR
    if args.verify and summary["counts"]["answered"]:
        summary["offline"] = verify_offline(summary, model_dir)
    out_dir = Path(config.collector.reports_dir) / (time.strftime("%Y%m%d-%H%M%S") + f"-{run_id}")
    write_report(summary, out_dir)
    print(render_terminal(summary, out_dir))
    complete = summary["counts"]["missing"] == 0 and not summary["run"]["interrupted"]
    return 0 if complete else 1


def run_single(args, config) -> int:
    """Send one image through the broker and print its predicted label and confidence."""
    if args.image:
        payload = Path(args.image).read_bytes() if Path(args.image).is_file() else None
        if payload is None:
            raise RunError(f"{args.image}: file not found")
        load_image(payload, (28, 28, 1))  # fail here, clearly, on a non-image
        content_type = wire.JPEG if payload[:2] == b"\xff\xd8" else wire.PNG
        truth = None
    else:
        test = load_fashion_mnist("test")
        if not 0 <= args.index < len(test):
            raise RunError(f"--index {args.index} is outside the test set (0..{len(test) - 1})")
        payload, content_type, truth = test.images[args.index], wire.RAW, FASHION_MNIST_CLASSES[test.labels[args.index]]
    run_id = uuid.uuid4().hex[:8]
    with broker_session(config.broker.project or None) as project:
        topo = topology_from(config, project, args.topic_suffix)
        ensure_topology(topo)
        with managed_server(args, 1) if args.server == "managed" else contextlib.nullcontext():
            result = send_one(topo, payload, content_type, run_id, config.collector.timeout_s)
    if "error" in result:
        print(f"error result: {result['error']}: {result.get('detail', '')}")
        return 1
    extra = f"  (true: {truth})" if truth else ""
    print(
        f"label {result['label']} {result['class_name']!r} confidence {result['confidence']:.2%}{extra}  "
        f"[model {result.get('model', '?')}, round trip {result['round_trip_ms']:.1f} ms]"
    )
    return 0


def send_one(topo: Topology, payload, content_type: str, run_id: str, timeout: float) -> dict:
    publisher = Publisher(topo.requests_topic_path, PublishSettings(max_messages=1, max_latency_s=0.0))
    puller = Puller(topo.results_subscription_path)
    request_id = f"{run_id}-0"
    try:
        data, attributes = (
            request_for(0, payload, run_id, 1, content_type)
            if content_type == wire.RAW
            else wire.encode_request(payload, request_id, stream="0", seq=0, content_type=content_type)
        )
        sent = time.monotonic()
        publisher.publish(data, attributes["stream"], **attributes).result(timeout=30)  # BLOCK flow control, 1 msg
        deadline = sent + timeout
        while time.monotonic() < deadline:
            for message in puller.pull(timeout=2.0):
                model, results = wire.decode_results(message.data)
                mine = [r for r in results if r.get("request_id") == request_id]
                if mine:
                    puller.ack([message.ack_id])
                    return {**mine[0], "model": model, "round_trip_ms": (time.monotonic() - sent) * 1000}
                puller.nack([message.ack_id])  # someone else's result: leave it for them
        raise RunError(f"no result for {request_id} within {timeout:.0f}s")
    finally:
        publisher.close()
        puller.close()


def main(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        config = apply_overrides(load_config(args.config, "stream.py"), args)
        if args.index is not None or args.image:
            return run_single(args, config)
        return run(args, config)
    except (BrokerError, DatasetError, ModelError, RunError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def apply_overrides(config, args):
    for flag, section, key in (
        ("rate", "streamer", "rate"),
        ("streams", "streamer", "streams"),
        ("limit", "streamer", "limit"),
        ("content_type", "streamer", "content_type"),
        ("replicas", "server", "replicas"),
        ("timeout", "collector", "timeout_s"),
        ("reports_dir", "collector", "reports_dir"),
        ("state_file", "collector", "state_file"),
    ):
        if getattr(args, flag, None) is not None:
            config[section][key] = getattr(args, flag)
    if args.project:
        config.broker.project = args.project
    if args.model:
        config.model_dir = args.model
    return config
