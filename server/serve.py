"""The inference server's hot path, in pipeline order: pull → batch → decode → infer → publish → ack.

Threads:
  pullers (N)  unary-pull up to `pull_max_messages` at a time into the batch queue,
               bounded by `max_outstanding` (flow control on pulled-but-unacked);
  compute (1)  the dynamic batcher (its policy, fixed or adaptive, is server/batching.py),
               decode and the jitted model; publishes one result message per (batch, stream)
               with the stream as ordering key;
  acker   (1)  acks a request only after its result publish succeeded (nack on failure),
               in batched acknowledge calls;
  leases, reporter (1 each)  lease extension for slow work, a periodic log line.

One request's failure (a bad attribute, an undecodable picture, a model error it causes,
a result that cannot be encoded) becomes an error result for that request alone. A nack
is left for what a retry can fix: a failed publish, or a shutdown before the work started.
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
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

from broker import wire
from broker.errors import BrokerDenied, BrokerError
from broker.pubsub import Puller, QueuedPublisher, Received, Topology
from server import metrics
from server.batching import make_policy
from server.settings import ServerSettings
from train.data import DatasetError, load_image
from train.model import top_k
from train.predictor import Predictor

log = logging.getLogger("server")


class BucketedModel:
    """A Predictor padded to fixed batch sizes, every one compiled at start."""

    def __init__(self, predictor: Predictor, buckets: Sequence[int]):
        self.predictor = predictor
        self.meta = predictor.meta
        self.identity = predictor.meta["checkpoint_sha256"][:16]
        self.input_shape = tuple(predictor.meta["input_shape"])
        self.class_names = list(predictor.meta["class_names"])
        self.buckets = tuple(buckets)

    def warm_up(self) -> float:
        """Compile every bucket now, so nothing compiles under load; returns seconds taken."""
        started = time.perf_counter()
        for size in self.buckets:
            self.predictor(np.zeros((size, *self.input_shape), np.uint8))
        return time.perf_counter() - started

    def __call__(self, images: np.ndarray) -> np.ndarray:
        n = len(images)
        bucket = next(b for b in self.buckets if b >= n)
        if bucket != n:
            images = np.concatenate([images, np.zeros((bucket - n, *self.input_shape), np.uint8)])
        return self.predictor(images)[:n]


def enable_compilation_cache(path: str | None = None) -> None:
    """Persist XLA executables across starts, so warm-up is a cache read after the first start."""
    import jax

    path = (
        path or os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser("~/.cache/imageclassifiercloud/jax")
    )
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@dataclasses.dataclass(slots=True)
class Pending:
    msg: Received
    pulled: float  # time.monotonic() when pulled


@dataclasses.dataclass(slots=True)
class Formed:
    """How the batcher formed the batch in hand (read by handle_batch for the timing and the policy)."""

    wait_s: float = 0.0  # held with the compute thread free, waiting for more requests
    queued: int = 0  # requests waiting when it was taken, itself included
    age_s: float = 0.0  # how long its oldest request had waited since it was published, when it was taken


class InferenceServer:
    """Serves `model` (a BucketedModel, or anything with its interface) on one topology."""

    def __init__(self, model: BucketedModel, topology: Topology, settings: ServerSettings):
        self.model, self.topology, self.settings = model, topology, settings
        self.queue: collections.deque[Pending] = collections.deque()
        self.cond = threading.Condition()
        self.leases: dict[str, float] = {}  # ack_id -> pull time, for every outstanding message
        self.stopping = threading.Event()
        self.fatal: str | None = None
        self.puller = Puller(topology.requests_subscription_path, settings.pull_max_messages)
        self.publisher = QueuedPublisher(topology.results_topic_path, settings.publish_max_messages)
        self.acker = Acker(self.puller, on_settled=self.release)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self.window = collections.deque(maxlen=100_000)  # (t_done, n, in-server seconds) for the log line
        self.policy = make_policy(settings.batching, settings.buckets, settings.max_wait_ms, settings.latency_slo_ms)
        self.formed = Formed()
        metrics.MODEL.info(
            {"digest": self.model.identity, "dataset": str(self.model.meta.get("dataset")), "pid": str(os.getpid())}
        )
        metrics.BATCHING.info({"policy": settings.batching})
        metrics.LATENCY_SLO.set(settings.latency_slo_ms / 1000)
        metrics.BATCH_LIMIT.set(self.policy.limit)

    # ------------------------------------------------------------- 1. pull
    def pull_loop(self) -> None:
        s = self.settings
        failing_since = None
        while not self.stopping.is_set():
            room = s.max_outstanding - len(self.leases)
            if room <= 0:
                time.sleep(0.002)
                continue
            try:
                asked = time.monotonic()
                msgs = self.puller.pull(max_messages=min(room, s.pull_max_messages), timeout=0.5)
                failing_since = None
            except BrokerDenied as err:  # no permission, or the subscription is gone: retrying cannot help
                self.fail(str(err))
                return
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
                    self.acker.nack_now([m.ack_id for m in msgs], "shutdown")
                    return
                self.queue.extend(Pending(m, now) for m in msgs)
                self.policy.arrived(len(msgs), now)
                self.cond.notify()
            metrics.REQUESTS.inc(len(msgs))
            metrics.OUTSTANDING.set(len(self.leases))  # the acker sets it again as they settle
            metrics.PULL.observe(now - asked)
            metrics.PULL_SIZE.observe(len(msgs))

    # ------------------------------------------------------------ 2. batch
    def next_batch(self) -> list[Pending] | None:
        """The next batch, as the policy plans it (server/batching.py); None once stopping.

        Sets self.formed: how long the batch was held with the compute thread free, and how
        many requests were waiting when it was taken.
        """
        policy = self.policy
        with self.cond:
            free = time.monotonic()
            backlog = bool(self.queue)  # requests were waiting when the last batch ended
            while not self.queue:
                if self.stopping.is_set():
                    return None
                self.cond.wait(0.05)
            now = time.monotonic()
            plan = policy.plan(len(self.queue), now - self.queue[0].pulled, backlog, now)
            deadline = now + plan.wait_s
            while len(self.queue) < plan.fill and not self.stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(remaining)
            if self.stopping.is_set():
                return None  # not started: nacked at shutdown so another replica takes it
            queued = len(self.queue)
            batch = [self.queue.popleft() for _ in range(min(queued, plan.limit))]
        published = min((p.msg.publish_ns for p in batch if p.msg.publish_ns), default=0)
        age_s = max(0.0, time.time_ns() - published) / 1e9 if published else 0.0  # the broker's clock and ours
        self.formed = Formed(max(0.0, time.monotonic() - max(free, batch[0].pulled)), queued, age_s)
        metrics.QUEUE_DEPTH.observe(queued)
        metrics.BATCH_WAIT.observe(self.formed.wait_s)
        return batch

    def handle_batch(self, batch: list[Pending]) -> None:
        """decode → infer → publish for one batch; every request ends with exactly one result."""
        started = time.monotonic()
        results: list[wire.Prediction | wire.ErrorResult | None] = [None] * len(batch)
        good, images = self.decode(batch, results)
        decoded = time.monotonic()
        if good:
            self.infer(batch, good, images, results, started, decoded)
        computed = time.monotonic()
        self.publish(batch, results)
        done = time.monotonic()
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.COMPUTE.observe(computed - started)
        metrics.DECODE.observe(decoded - started)
        for p in batch:
            metrics.QUEUE_WAIT.observe(started - p.pulled)
            metrics.IN_SERVER.observe(done - p.pulled)
        self.window.append((done, len(batch), done - batch[0].pulled))
        if not good:
            return  # no model call: nothing for the policy to learn
        bucket = self.bucket_for(len(good))
        metrics.BATCHES.labels(str(bucket)).inc()
        with self.cond:  # the policy's state is shared with the pullers' arrivals
            moved = self.policy.done(len(batch), bucket, done - started, self.formed.queued, done, self.formed.age_s)
        if self.settings.batching == "adaptive":
            metrics.BATCH_COST.labels(str(bucket)).set(self.policy.estimate(bucket))
        if moved:
            metrics.BATCH_LIMIT.set(self.policy.limit)
            metrics.LIMIT_CHANGES.labels(moved).inc()

    def bucket_for(self, n: int) -> int:
        """The compiled batch size a batch of n runs in (the model pads to it)."""
        return next((b for b in self.settings.buckets if b >= n), self.settings.buckets[-1])

    # ----------------------------------------------------------- 3. decode
    def decode(self, batch: list[Pending], results: list) -> tuple[list[tuple[int, wire.Request]], np.ndarray | None]:
        """Validate every request; returns the good ones (batch index, request) and their pixels.

        A bad request gets its error result in `results` here. Raw payloads become one numpy
        view over the joined bytes (no per-message array work); pictures are decoded one by one.
        """
        shape = self.model.input_shape
        raw, pictures = [], []
        for i, p in enumerate(batch):
            m = p.msg
            try:
                request = wire.check_request(m.data, m.attributes, m.ordering_key)
                if request.content_type == wire.RAW:
                    wire.check_raw_length(m.data, m.attributes, shape)
                    raw.append((i, request, m.data))
                else:
                    pictures.append((i, request, decode_image(m.data, shape)))
            except Exception as err:  # WireError, or anything unforeseen: that request's error result
                results[i] = self.error_for(m, err)
        good = [(i, request) for i, request, _ in raw + pictures]
        if not good:
            return good, None
        images = np.frombuffer(b"".join(data for *_, data in raw), np.uint8).reshape(len(raw), *shape)
        if pictures:
            images = np.concatenate([images, np.stack([array for *_, array in pictures])])
        return good, images

    # ------------------------------------------------------------ 4. infer
    def infer(
        self, batch: list[Pending], good: list, images: np.ndarray, results: list, started: float, decoded: float
    ) -> None:
        """Run the model and fill in predictions; a failing model call is split to find its cause."""
        probs = self.run_model(images)
        computed = time.monotonic()
        metrics.MODEL_TIME.observe(computed - decoded)
        names = self.model.class_names
        failed = np.isnan(probs[:, 0]).tolist()  # rows the model failed on (see run_model)
        labels, confidences = top_k(np.nan_to_num(probs, nan=-1.0), self.settings.top_k)
        labels, confidences = labels.tolist(), confidences.tolist()
        timings = self.timings(batch, good, started, decoded, computed)
        for row, (i, request) in enumerate(good):
            if failed[row]:
                results[i] = self.error_for(batch[i].msg, wire.WireError("internal_error", "the model failed on it"))
                continue
            results[i] = wire.Prediction.answer(request, names, labels[row], confidences[row], timings[row])

    def timings(self, batch: list[Pending], good: list, started: float, decoded: float, computed: float) -> list[dict]:
        """Each good request's `timing` (docs/wire.md), computed per batch with numpy, not per request.

        broker_ms and send_ms come from the request's publish time, the broker's clock (ms resolution
        on the emulator), against this machine's clock: they are left out where it is unknown.
        """
        offset_ns = time.time_ns() - time.monotonic_ns()  # wall clock = monotonic + offset
        n = len(good)
        pulled = np.fromiter((batch[i].pulled for i, _ in good), np.float64, n)
        published_ns = np.fromiter((batch[i].msg.publish_ns for i, _ in good), np.int64, n)
        sent_ns = np.fromiter((request.sent_ns for _, request in good), np.int64, n)
        published = (published_ns - offset_ns) / 1e9  # the publish time on the monotonic clock
        columns = {"queue_ms": (started - pulled) * 1000}
        known = published_ns > 0
        columns["broker_ms"] = np.where(known, (pulled - published) * 1000, np.nan)
        columns["send_ms"] = np.where(known & (sent_ns > 0), (published_ns - sent_ns) / 1e6, np.nan)
        shared = {
            "compute_ms": round((computed - started) * 1000, 3),
            "batch_size": len(batch),
            "batch_wait_ms": round(self.formed.wait_s * 1000, 3),
            "decode_ms": round((decoded - started) * 1000, 3),
            "model_ms": round((computed - decoded) * 1000, 3),
            "bucket": self.bucket_for(n),
        }
        return timing_rows(shared, columns)

    def run_model(self, images: np.ndarray) -> np.ndarray:
        """Probabilities per image; rows whose images make the model fail are NaN (found by halving)."""
        try:
            return self.model(images)
        except Exception as err:
            if len(images) == 1:
                log.error("the model failed on one request: %s", err)
                return np.full((1, len(self.model.class_names)), np.nan)
            half = len(images) // 2
            return np.concatenate([self.run_model(images[:half]), self.run_model(images[half:])])

    # ---------------------------------------------------------- 5. publish
    def group_key(self, k: int, stream: str) -> tuple:
        """Results of one batch share a message per stream (bench/ overrides this to measure one per request)."""
        return (stream,)

    def publish(self, batch: list[Pending], results: list) -> None:
        """One result message per stream in this batch, keyed by stream, all in one Publish RPC; acks follow it."""
        groups: dict[tuple, list] = {}
        for k, result in enumerate(results):
            groups.setdefault(self.group_key(k, result.stream), []).append(result)
        messages = []
        for (stream, *_), group in groups.items():
            data, attributes = wire.encode_results(group, self.model.identity, self.replica)
            messages.append((data, attributes, stream))
        called = time.monotonic()
        self.acker.track(self.publisher.submit(messages), [p.msg.ack_id for p in batch], called)

    def error_for(self, msg: Received, err: Exception) -> wire.ErrorResult:
        if not isinstance(err, wire.WireError):
            log.exception("unforeseen failure on message %s", msg.message_id)
            err = wire.WireError("internal_error", f"{type(err).__name__}: {err}")
        metrics.ERRORS.labels(err.reason).inc()
        log.warning("bad request (message %s): %s", msg.message_id, err)
        return wire.error_result(msg.attributes, msg.ordering_key, err, msg.message_id)

    # -------------------------------------------------------------- 6. ack
    def release(self, ack_ids: list[str]) -> None:
        """The acker settled these: they no longer count against max_outstanding."""
        with self.cond:
            for ack_id in ack_ids:
                self.leases.pop(ack_id, None)
        metrics.OUTSTANDING.set(len(self.leases))

    # ---------------------------------------------------------- lifecycle
    def serve(self, on_ready: Callable[[InferenceServer], None] | None = None) -> int:
        """Run until stop(); returns the exit code (0 after a clean drain)."""
        warm = self.model.warm_up()
        log.info("warm-up compiled buckets %s in %.2fs", list(self.model.buckets), warm)
        if self.settings.batching == "adaptive":
            self.policy.seed(self.time_buckets())
            metrics.BATCH_LIMIT.set(self.policy.limit)
            log.info(
                "adaptive batching: objective %.0f ms, batch limit starts at %d",
                self.settings.latency_slo_ms,
                self.policy.limit,
            )
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
            except Exception as err:  # a bug of ours, not the requests': a retry would fail the same way
                log.exception("batch of %d failed; answering each request with internal_error", len(batch))
                try:
                    self.publish(batch, [self.error_for(p.msg, err) for p in batch])
                except Exception:
                    self.acker.nack_now([p.msg.ack_id for p in batch], "batch_failed")
        return self.drain(threads)

    def time_buckets(self) -> dict[int, float]:
        """Seconds of one model call per bucket, measured once after warm-up: the adaptive policy's first estimates."""
        costs = {}
        for size in self.settings.buckets:
            images = np.zeros((size, *self.model.input_shape), np.uint8)
            started = time.perf_counter()
            self.model(images)
            costs[size] = time.perf_counter() - started
        return costs

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
                "throughput %.0f req/s, %d batches, mean batch %.1f (limit %d), in-server p50 %.1f ms p99 %.1f ms, "
                "outstanding %d",
                n / self.settings.log_interval_s,
                len(recent),
                n / len(recent),
                self.policy.limit,
                np.percentile(lat, 50),
                np.percentile(lat, 99),
                len(self.leases),
            )

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
            self.acker.nack_now(unstarted, "shutdown")
        settled = self.acker.close(max(0.1, deadline - time.monotonic()))
        self.publisher.close(max(0.1, deadline - time.monotonic()))
        self.puller.close()
        if not settled:
            log.error(
                "shutdown: publishes still in flight after %.0fs; those requests will be redelivered",
                self.settings.drain_timeout_s,
            )
        log.info("stopped")
        return 1 if self.fatal or not settled else 0


def timing_rows(shared: dict, columns: dict[str, np.ndarray]) -> list[dict]:
    """One timing dict per row: `shared` plus each column's value, rounded to µs; NaN means "left out".

    A column known for every row costs one zip per row; only a column with gaps (a request
    without sent_ns, say) is filled in row by row.
    """
    rounded = {name: np.round(values, 3) for name, values in columns.items()}
    full = {name: values.tolist() for name, values in rounded.items() if not np.isnan(values).any()}
    names = list(full)
    rows = [{**dict(zip(names, values)), **shared} for values in zip(*full.values())]
    for name, values in rounded.items():
        if name not in full:
            for row, value in zip(rows, values.tolist()):
                if value == value:  # not NaN
                    row[name] = value
    return rows


def decode_image(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """A PNG/JPEG request's pixels, or WireError('undecodable_image')."""
    try:
        return load_image(data, shape)
    except DatasetError as err:
        raise wire.WireError("undecodable_image", str(err)) from None


class Acker(threading.Thread):
    """Acks after publish success, nacks after failure; batches the acknowledge RPCs.

    `on_settled(ack_ids)` is told about every ack id once it was acked or nacked. It also times
    the return path the results cannot carry: publish call to publish done, and publish done to
    ack sent (icc_publish_seconds, icc_ack_seconds).
    """

    def __init__(self, puller: Puller, on_settled: Callable[[list[str]], None]):
        super().__init__(name="acker", daemon=True)
        self.puller, self.on_settled = puller, on_settled
        self.lock = threading.Condition()
        self.to_ack: list[str] = []
        self.to_nack: list[str] = []
        self.published: list[float] = []  # when each result message now in to_ack finished publishing
        self.in_flight = 0
        self.closing = False

    def track(self, future: Future, ack_ids: list[str], called: float) -> None:
        """Ack `ack_ids` once `future` (their results' publish, called at `called`) succeeds; nack if it fails."""
        with self.lock:
            self.in_flight += 1
        future.add_done_callback(lambda f: self._done(f, ack_ids, called))

    def nack_now(self, ack_ids: list[str], reason: str) -> None:
        metrics.NACKS.labels(reason).inc(len(ack_ids))
        with self.lock:
            self.to_nack.extend(ack_ids)
            self.lock.notify()

    def _done(self, future: Future, ack_ids: list[str], called: float) -> None:
        now = time.monotonic()
        failed = future.exception() is not None
        if failed:
            log.warning(
                "result publish failed (%s); nacking %d requests for redelivery", future.exception(), len(ack_ids)
            )
            metrics.NACKS.labels("publish_failed").inc(len(ack_ids))
        else:
            metrics.PUBLISH.observe(now - called)
        with self.lock:
            (self.to_nack if failed else self.to_ack).extend(ack_ids)
            if not failed:
                self.published.append(now)
            self.in_flight -= 1
            self.lock.notify()

    def run(self) -> None:
        while True:
            with self.lock:
                # Every change notifies, so the timeout is only a bound: waking every 10 ms, an idle server
                # spent ~1% of a core here. Closing with publishes in flight is not a reason to wake.
                self.lock.wait_for(
                    lambda: self.to_ack or self.to_nack or (self.closing and self.in_flight == 0), timeout=1.0
                )
                acks, nacks, published = self.to_ack, self.to_nack, self.published
                self.to_ack, self.to_nack, self.published = [], [], []
                done = self.closing and self.in_flight == 0 and not acks and not nacks
            if done:
                return
            if self._send(acks, self.puller.ack, "ack"):
                metrics.RESULTS.inc(len(acks))
                acked = time.monotonic()
                for t in published:
                    metrics.ACK.observe(acked - t)
            self._send(nacks, self.puller.nack, "nack")
            if acks or nacks:
                self.on_settled(acks + nacks)

    def _send(self, ack_ids: list[str], call, what: str) -> bool:
        if not ack_ids:
            return False
        try:
            call(ack_ids)
            return True
        except Exception as err:  # the broker went away: redelivery after the deadline covers it
            log.error("%s of %d messages failed: %s", what, len(ack_ids), err)
            return False

    def close(self, timeout: float) -> bool:
        """Wait for in-flight publishes and flush; True if everything was settled in time."""
        with self.lock:
            self.closing = True
            self.lock.notify()
        self.join(timeout)
        return not self.is_alive()
