"""The inference server's hot path, top to bottom: pull → batch → decode → infer → publish → ack.

Threads:
  pullers (N)  unary-pull up to `pull_max_messages` at a time into the batch queue,
               bounded by `max_outstanding` (flow control on pulled-but-unacked);
  compute (1)  the dynamic batcher + jitted model; publishes one result message per
               (batch, stream) with the stream as ordering key;
  acker   (1)  acks a request only after its result publish succeeded (nack on failure),
               in batched acknowledge calls; also extends leases of slow work;
  reporter(1)  a periodic throughput / batch-size / latency log line.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future

import numpy as np

from broker import wire
from broker.errors import BrokerError
from broker.pubsub import Publisher, PublishSettings, Puller, Received, Topology
from server import metrics
from train.checkpoint import load_metadata, load_model
from train.data import DatasetError, load_image
from train.model import make_predict_fn

log = logging.getLogger("server")


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Batching and flow-control knobs (see configs/stream.py, section `server`)."""

    max_batch_size: int = 256
    max_wait_ms: float = 4.0
    buckets: tuple[int, ...] = (4, 8, 12, 20, 28, 40, 64, 100, 128, 256)
    pull_max_messages: int = 1000
    pull_threads: int = 1
    max_outstanding: int = 4096
    top_k: int = 3
    publish_max_messages: int = 200
    publish_max_latency_ms: float = 2.0
    drain_timeout_s: float = 20.0
    log_interval_s: float = 10.0
    ack_deadline_s: int = 30
    broker_give_up_s: float = 15.0  # consecutive pull failures before the server gives up
    group_results: bool = True  # False: one result message per request (kept to measure the difference)

    def __post_init__(self):
        buckets = tuple(sorted(set(self.buckets) | {self.max_batch_size}))
        object.__setattr__(self, "buckets", tuple(b for b in buckets if b <= self.max_batch_size))


@dataclasses.dataclass(slots=True)
class Pending:
    msg: Received
    pulled: float  # time.monotonic() when pulled


def enable_compilation_cache(path: str | None = None) -> None:
    """Persist XLA executables across starts, so warm-up is a cache read after the first start."""
    import jax

    path = (
        path or os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser("~/.cache/imageclassifiercloud/jax")
    )
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class Model:
    """The jitted model over a split (graphdef, state), padded to fixed bucket sizes."""

    def __init__(self, model_dir, buckets: Sequence[int]):
        enable_compilation_cache()
        model, meta = load_model(model_dir)
        self.predict, self.state = make_predict_fn(model)
        self.meta = meta
        self.identity = meta["checkpoint_sha256"][:16]
        self.input_shape = tuple(meta["input_shape"])
        self.class_names = list(meta["class_names"])
        self.buckets = tuple(buckets)

    def warm_up(self) -> float:
        """Compile every bucket now, so nothing compiles under load; returns seconds taken."""
        started = time.perf_counter()
        for size in self.buckets:
            self.predict(self.state, np.zeros((size, *self.input_shape), np.uint8)).block_until_ready()
        return time.perf_counter() - started

    def __call__(self, images: np.ndarray) -> np.ndarray:
        n = len(images)
        bucket = next(b for b in self.buckets if b >= n)
        if bucket != n:
            images = np.concatenate([images, np.zeros((bucket - n, *self.input_shape), np.uint8)])
        return np.asarray(self.predict(self.state, images))[:n]


class EchoModel:
    """The benchmark floor: same interface and transport, no model, a constant answer."""

    def __init__(self, meta: dict, buckets: Sequence[int]):
        self.meta, self.buckets = meta, tuple(buckets)
        self.identity = "echo"
        self.input_shape = tuple(meta["input_shape"])
        self.class_names = list(meta["class_names"])
        self._probs = np.eye(len(self.class_names), dtype=np.float32)[0]

    def warm_up(self) -> float:
        return 0.0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self._probs, (len(images), len(self._probs)))


class Acker(threading.Thread):
    """Acks after publish success, nacks after failure; batches the acknowledge RPCs."""

    def __init__(self, puller: Puller, server: InferenceServer, flush_s: float = 0.01):
        super().__init__(name="acker", daemon=True)
        self.puller, self.server, self.flush_s = puller, server, flush_s
        self.lock = threading.Condition()
        self.to_ack: list[str] = []
        self.to_nack: list[str] = []
        self.in_flight = 0
        self.closing = False

    def track(self, future: Future, ack_ids: list[str]) -> None:
        with self.lock:
            self.in_flight += 1
        future.add_done_callback(lambda f: self._done(f, ack_ids))

    def nack_now(self, ack_ids: list[str]) -> None:
        with self.lock:
            self.to_nack.extend(ack_ids)
            self.lock.notify()

    def _done(self, future: Future, ack_ids: list[str]) -> None:
        failed = future.exception() is not None
        if failed:
            log.warning(
                "result publish failed (%s); nacking %d requests for redelivery", future.exception(), len(ack_ids)
            )
        with self.lock:
            (self.to_nack if failed else self.to_ack).extend(ack_ids)
            self.in_flight -= 1
            self.lock.notify()

    def run(self) -> None:
        while True:
            with self.lock:
                self.lock.wait_for(lambda: self.to_ack or self.to_nack or self.closing, timeout=self.flush_s)
                acks, nacks = self.to_ack, self.to_nack
                self.to_ack, self.to_nack = [], []
                done = self.closing and self.in_flight == 0 and not acks and not nacks
            if done:
                return
            self._send(acks, self.puller.ack, "ack")
            self._send(nacks, self.puller.nack, "nack")
            if acks:
                metrics.RESULTS.inc(len(acks))
            self.server.release(acks + nacks)

    def _send(self, ack_ids: list[str], call, what: str) -> None:
        if not ack_ids:
            return
        try:
            call(ack_ids)
        except Exception as err:  # the broker went away: redelivery after the deadline covers it
            log.error("%s of %d messages failed: %s", what, len(ack_ids), err)

    def close(self, timeout: float) -> bool:
        """Wait for in-flight publishes and flush; True if everything was settled in time."""
        with self.lock:
            self.closing = True
            self.lock.notify()
        self.join(timeout)
        return not self.is_alive()


class InferenceServer:
    def __init__(self, model_dir, topology: Topology, settings: ServerSettings = ServerSettings(), echo: bool = False):
        self.settings = settings
        self.topology = topology
        self.model = (
            EchoModel(load_metadata(model_dir), settings.buckets) if echo else Model(model_dir, settings.buckets)
        )
        self.queue: collections.deque[Pending] = collections.deque()
        self.cond = threading.Condition()
        self.leases: dict[str, float] = {}  # ack_id -> pull time, for every outstanding message
        self.stopping = threading.Event()
        self.fatal: str | None = None
        self.puller = Puller(topology.requests_subscription_path, settings.pull_max_messages)
        self.publisher = Publisher(
            topology.results_topic_path,
            PublishSettings(
                max_messages=settings.publish_max_messages, max_latency_s=settings.publish_max_latency_ms / 1000
            ),
        )
        self.acker = Acker(self.puller, self)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self.window = collections.deque(maxlen=100_000)  # (t_done, n, in-server seconds) for the log line
        metrics.MODEL.info({"digest": self.model.identity, "dataset": str(self.model.meta.get("dataset"))})

    # ------------------------------------------------------------- pulling
    def pull_loop(self) -> None:
        s = self.settings
        failing_since = None
        while not self.stopping.is_set():
            room = s.max_outstanding - len(self.leases)
            if room <= 0:
                time.sleep(0.002)
                continue
            try:
                msgs = self.puller.pull(max_messages=min(room, s.pull_max_messages), timeout=0.5)
                failing_since = None
            except BrokerError as err:  # transient (e.g. an emulator hiccup) unless it persists
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > s.broker_give_up_s:
                    self.fail(f"{err} (for {s.broker_give_up_s:.0f}s)")
                    return
                log.warning("pull failed, retrying: %s", err)
                self.stopping.wait(0.5)
                continue
            if not msgs:
                continue
            now = time.monotonic()
            with self.cond:
                for m in msgs:
                    self.leases[m.ack_id] = now
                if self.stopping.is_set():  # pulled after shutdown began: hand straight back
                    self.acker.nack_now([m.ack_id for m in msgs])
                    return
                self.queue.extend(Pending(m, now) for m in msgs)
                self.cond.notify()
            metrics.REQUESTS.inc(len(msgs))

    def release(self, ack_ids: list[str]) -> None:
        with self.cond:
            for ack_id in ack_ids:
                self.leases.pop(ack_id, None)
        metrics.OUTSTANDING.set(len(self.leases))

    # ------------------------------------------------------------ batching
    def next_batch(self) -> list[Pending] | None:
        """Up to max_batch_size requests, once full or once the oldest waited max_wait_ms."""
        s = self.settings
        with self.cond:
            while not self.queue:
                if self.stopping.is_set():
                    return None
                self.cond.wait(0.05)
            deadline = self.queue[0].pulled + s.max_wait_ms / 1000
            while len(self.queue) < s.max_batch_size and not self.stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(remaining)
            if self.stopping.is_set():
                return None  # not started: nacked at shutdown so another replica takes it
            return [self.queue.popleft() for _ in range(min(len(self.queue), s.max_batch_size))]

    # --------------------------------------------------- decode → infer → publish
    def handle_batch(self, batch: list[Pending]) -> None:
        started = time.monotonic()
        shape = self.model.input_shape
        results: list[dict | None] = [None] * len(batch)
        raw_at, raw_bytes, decoded_at, decoded = [], [], [], []
        fields: list[tuple] = []
        for i, p in enumerate(batch):
            m = p.msg
            try:
                request_id, content_type, seq, sent_ns = wire.check_request(m.data, m.attributes)
                fields.append((request_id, seq, sent_ns))
                if content_type == wire.RAW:
                    wire.check_raw_length(m.data, m.attributes, shape)
                    raw_at.append(i)
                    raw_bytes.append(m.data)
                else:
                    decoded.append(self._decode_image(m.data))
                    decoded_at.append(i)
            except Exception as err:  # WireError, or anything unforeseen: an error result, never a lost batch
                if not isinstance(err, wire.WireError):
                    err = wire.WireError("bad_request", f"{type(err).__name__}: {err}")
                if len(fields) == i:
                    fields.append(self._salvage_fields(m.attributes))
                results[i] = wire.error(
                    *fields[i][:1], _stream(m), *fields[i][1:], err.reason, err.detail, m.message_id
                )
                metrics.ERRORS.labels(err.reason).inc()
                log.warning("bad request %s (message %s): %s", fields[i][0], m.message_id, err)
        order = raw_at + decoded_at
        if order:
            # One numpy view over all raw payloads: no per-message array work.
            images = np.frombuffer(b"".join(raw_bytes), np.uint8).reshape(len(raw_at), *shape)
            if decoded:
                images = np.concatenate([images, np.stack(decoded)])
            probs = self.model(images)
            top = np.argsort(-probs, axis=1)[:, : self.settings.top_k]
            top_p = np.take_along_axis(probs, top, axis=1)
        computed = time.monotonic()
        compute_ms = round((computed - started) * 1000, 3)
        names = self.model.class_names
        for row, i in enumerate(order):
            p = batch[i]
            request_id, seq, sent_ns = fields[i]
            labels, confs = top[row].tolist(), top_p[row].tolist()
            timing = {
                "queue_ms": round((started - p.pulled) * 1000, 3),
                "compute_ms": compute_ms,
                "batch_size": len(batch),
            }
            results[i] = wire.prediction(
                request_id,
                _stream(p.msg),
                seq,
                sent_ns,
                labels[0],
                names[labels[0]],
                confs[0],
                [[lab, round(c, 6)] for lab, c in zip(labels, confs)],
                timing,
            )
        self.publish_grouped(batch, results)
        done = time.monotonic()
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.COMPUTE.observe(computed - started)
        for p in batch:
            metrics.QUEUE_WAIT.observe(started - p.pulled)
            metrics.IN_SERVER.observe(done - p.pulled)
        self.window.append((done, len(batch), done - batch[0].pulled))

    def publish_grouped(self, batch: list[Pending], results: list[dict]) -> None:
        """One result message per stream in this batch (or per request, if not grouping), keyed by stream."""
        groups: dict[tuple, tuple[list[dict], list[str]]] = {}
        for k, (p, result) in enumerate(zip(batch, results)):
            key = (_stream(p.msg),) if self.settings.group_results else (_stream(p.msg), k)
            entry = groups.setdefault(key, ([], []))
            entry[0].append(result)
            entry[1].append(p.msg.ack_id)
        for (stream, *_), (group, ack_ids) in groups.items():
            data, attributes = wire.encode_results(group, self.model.identity, self.replica)
            try:
                future = self.publisher.publish(data, stream, **attributes)
            except Exception as err:  # e.g. publisher stopped: let the requests be redelivered
                log.error("could not publish results for stream %s: %s", stream, err)
                self.acker.nack_now(ack_ids)
                continue
            self.acker.track(future, ack_ids)

    def _decode_image(self, data: bytes) -> np.ndarray:
        try:
            return load_image(data, self.model.input_shape)
        except DatasetError as err:
            raise wire.WireError("undecodable_image", str(err)) from None

    @staticmethod
    def _salvage_fields(attributes) -> tuple:
        """Best-effort request id / seq / sent_ns for an error result about a bad message."""
        request_id = attributes.get("request_id") or None
        return (
            request_id[: wire.MAX_ID_CHARS] if request_id else None,
            wire.parse_uint(attributes.get("seq", "")),
            wire.parse_uint(attributes.get("sent_ns", "")),
        )

    # ---------------------------------------------------------- lifecycle
    def fail(self, reason: str) -> None:
        if self.fatal is None:
            self.fatal = reason
            log.error("fatal: %s", reason)
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        with self.cond:
            self.cond.notify_all()

    def keep_leases(self) -> None:
        """Extend the ack deadline of work held longer than a third of it (rare: a stalled batch)."""
        period = max(1.0, self.settings.ack_deadline_s / 3)
        while not self.stopping.wait(period):
            cutoff = time.monotonic() - period
            with self.cond:
                old = [ack_id for ack_id, pulled in self.leases.items() if pulled < cutoff]
            if old:
                with contextlib.suppress(Exception):
                    self.puller.modify_deadline(old, self.settings.ack_deadline_s)

    def report_loop(self) -> None:
        last = time.monotonic()
        while not self.stopping.wait(self.settings.log_interval_s):
            now = time.monotonic()
            recent = [w for w in list(self.window) if w[0] > last]
            last = now
            if not recent:
                continue
            n = sum(w[1] for w in recent)
            lat = np.array([w[2] for w in recent]) * 1000
            log.info(
                "throughput %.0f req/s, %d batches, mean batch %.1f, in-server p50 %.1f ms p99 %.1f ms, outstanding %d",
                n / self.settings.log_interval_s,
                len(recent),
                n / len(recent),
                np.percentile(lat, 50),
                np.percentile(lat, 99),
                len(self.leases),
            )

    def serve(self, on_ready=None) -> int:
        """Run until stop(); returns the exit code (0 after a clean drain)."""
        warm = self.model.warm_up()
        log.info("warm-up compiled buckets %s in %.2fs", list(self.model.buckets), warm)
        threads = [
            threading.Thread(target=self.pull_loop, name=f"puller-{i}", daemon=True)
            for i in range(self.settings.pull_threads)
        ]
        threads += [
            threading.Thread(target=self.keep_leases, name="leases", daemon=True),
            threading.Thread(target=self.report_loop, name="reporter", daemon=True),
        ]
        self.acker.start()
        for thread in threads:
            thread.start()
        if on_ready:
            on_ready(self)
        while (batch := self.next_batch()) is not None:
            try:
                self.handle_batch(batch)
            except Exception:  # never let one batch take the server down; Pub/Sub retries it (then the DLQ)
                log.exception("batch of %d failed; nacking it for redelivery", len(batch))
                self.acker.nack_now([p.msg.ack_id for p in batch])
        return self.drain(threads)

    def drain(self, threads: list[threading.Thread]) -> int:
        """Stop pulling, nack what never started, wait for publishes and acks in flight."""
        deadline = time.monotonic() + self.settings.drain_timeout_s
        for thread in threads:
            thread.join(max(0.0, min(2.0, deadline - time.monotonic())))
        with self.cond:
            unstarted = [p.msg.ack_id for p in self.queue]
            self.queue.clear()
        if unstarted:
            log.info("shutdown: nacking %d requests that were never started", len(unstarted))
            self.acker.nack_now(unstarted)
        settled = self.acker.close(max(0.1, deadline - time.monotonic()))
        self.publisher.close()
        self.puller.close()
        if not settled:
            log.error(
                "shutdown: publishes still in flight after %.0fs; those requests will be redelivered",
                self.settings.drain_timeout_s,
            )
        log.info("stopped")
        return 1 if self.fatal or not settled else 0


def _stream(msg: Received) -> str:
    """The request's stream, used as the result's ordering key ('' if absent or unusable)."""
    stream = msg.attributes.get("stream") or msg.ordering_key or ""
    return stream if len(stream) <= wire.MAX_STREAM_CHARS else ""
