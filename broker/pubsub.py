"""Pub/Sub topology and transport: the small interface the server, streamer and collector use.

One function or class per operation, in the style of googleapis/python-pubsub's
samples. Everything takes explicit names, so the same code runs against the
emulator (PUBSUB_EMULATOR_HOST) and against a real project (Application Default
Credentials), unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future

import google.auth.exceptions
import grpc
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1 import types
from google.cloud.pubsub_v1.publisher.exceptions import PublishToPausedOrderingKeyException
from google.pubsub_v1.services.publisher.client import PublisherClient as GapicPublisherClient
from google.pubsub_v1.services.subscriber.client import SubscriberClient as GapicSubscriberClient
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport
from google.pubsub_v1.types import DeadLetterPolicy, PublishRequest

from broker.emulator import Emulator, port_open
from broker.errors import BrokerDenied, BrokerError

log = logging.getLogger(__name__)
EMULATOR_PROJECT = "local-project"
# Pub/Sub's limits: 10 MB per message, 512 KB per acknowledge request (ack ids are ~200 B).
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
ACK_CHUNK = 1000
_CALL_RETRY = Retry(initial=0.1, maximum=2.0, multiplier=2.0, timeout=20.0)
_CALL_TIMEOUT = 10.0
# Emulator polls (Puller): 1 ms after an empty pull, doubling to 10 ms (p50 14 ms to the server at
# 200 img/s); after 5 s without a message, one poll per 50 ms (see Puller). A paced run's gaps are far
# shorter (a message per 100 ms even at 10 img/s), so only an idle puller slows.
_POLL_FIRST_S, _POLL_MAX_S = 0.001, 0.01
_IDLE_AFTER_S, _IDLE_POLL_S = 5.0, 0.05


@dataclasses.dataclass(frozen=True)
class Topology:
    """Names of the topics and subscriptions one deployment uses; the values live in configs/stream.py (`broker`)."""

    project: str
    requests_topic: str
    results_topic: str
    dead_letter_topic: str
    requests_subscription: str
    results_subscription: str
    dead_letter_subscription: str
    max_delivery_attempts: int
    ack_deadline_s: int

    def topic(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    def subscription(self, name: str) -> str:
        return f"projects/{self.project}/subscriptions/{name}"

    @property
    def requests_topic_path(self) -> str:
        return self.topic(self.requests_topic)

    @property
    def results_topic_path(self) -> str:
        return self.topic(self.results_topic)

    @property
    def dead_letter_topic_path(self) -> str:
        return self.topic(self.dead_letter_topic)

    @property
    def requests_subscription_path(self) -> str:
        return self.subscription(self.requests_subscription)

    @property
    def results_subscription_path(self) -> str:
        return self.subscription(self.results_subscription)

    @property
    def dead_letter_subscription_path(self) -> str:
        return self.subscription(self.dead_letter_subscription)

    @classmethod
    def from_names(cls, project: str, names: Mapping, suffix: str = "") -> Topology:
        """From the `broker` section of configs/stream.py (other keys in it are ignored)."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"project"}
        topo = cls(project=project, **{k: v for k, v in dict(names).items() if k in fields})
        return topo.with_suffix(suffix) if suffix else topo

    def with_suffix(self, suffix: str) -> Topology:
        """The same topology with every topic/subscription name suffixed (fresh names per run or test)."""
        names = {
            f.name: f"{getattr(self, f.name)}-{suffix}"
            for f in dataclasses.fields(self)
            if f.name.endswith(("_topic", "_subscription"))
        }
        return dataclasses.replace(self, **names)


# ------------------------------------------------------------------ connect
@contextlib.contextmanager
def broker_session(project: str | None = None, start_timeout: float = 60.0) -> Iterator[str]:
    """Yield the project to use, starting (and finally stopping) an emulator if needed.

    - PUBSUB_EMULATOR_HOST set: that emulator is used as is.
    - a project given (or GOOGLE_CLOUD_PROJECT) and no emulator host: real Pub/Sub with ADC.
    - neither: Google's emulator is started on a free port for the duration.
    """
    if os.environ.get("PUBSUB_EMULATOR_HOST"):
        check_reachable(project or EMULATOR_PROJECT)
        yield project or EMULATOR_PROJECT
        return
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if project:
        check_reachable(project)
        yield project
        return
    global _fresh_emulator
    with Emulator(start_timeout=start_timeout) as emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        _fresh_emulator = True
        try:
            check_reachable(EMULATOR_PROJECT)
            yield EMULATOR_PROJECT
        finally:
            _fresh_emulator = False
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)


_fresh_emulator = False


def fresh_emulator() -> bool:
    """True inside a broker_session that started its own emulator (a cold JVM: see warm_up)."""
    return _fresh_emulator


def check_reachable(project: str, timeout: float = 15.0) -> None:
    """Fail fast, with one clear line, when the broker cannot be reached."""
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if host:
        name, _, port = host.rpartition(":")
        if not port.isdigit() or not port_open(name or "127.0.0.1", int(port), timeout=2.0):
            raise BrokerError(
                f"no Pub/Sub emulator answers at PUBSUB_EMULATOR_HOST={host}: start one "
                "('gcloud beta emulators pubsub start') or unset the variable to let the tools start it"
            )
    publisher = publisher_client(project)
    try:
        retry = Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=timeout)
        list(
            publisher.list_topics(
                request={"project": f"projects/{project}", "page_size": 1}, retry=retry, timeout=timeout
            )
        )
    except gexc.PermissionDenied:
        return  # it answered; narrow runtime roles need not include pubsub.topics.list
    except gexc.NotFound:
        raise BrokerDenied(
            f"project {project} was not found: check --project, and that the Pub/Sub API is enabled "
            "('gcloud services enable pubsub.googleapis.com')"
        ) from None
    except gexc.GoogleAPICallError as err:
        raise BrokerError(
            f"Pub/Sub at {host or 'pubsub.googleapis.com'} is unreachable for project {project}: {_short(err)}"
        ) from None
    except Exception as err:  # auth errors come as google.auth exceptions
        raise BrokerError(f"cannot talk to Pub/Sub for project {project}: {_short(err)}") from None
    finally:
        publisher.transport.close()


CREDENTIALS_HINT = (
    "run 'gcloud auth application-default login', or set GOOGLE_APPLICATION_CREDENTIALS to a "
    "service-account key file (without --project the local emulator is used)"
)


def publisher_client(project: str = "", **options) -> pubsub_v1.PublisherClient:
    """A PublisherClient, or BrokerError naming the fix when there are no credentials."""
    try:
        return pubsub_v1.PublisherClient(**options)
    except google.auth.exceptions.DefaultCredentialsError as err:
        raise BrokerError(f"no Google Cloud credentials for project {project or '?'}: {CREDENTIALS_HINT}") from err


def _denied(err: gexc.GoogleAPICallError, what: str) -> BrokerError:
    """PermissionDenied / NotFound on `what` (a path) as a BrokerDenied that says what to grant or create."""
    if isinstance(err, gexc.PermissionDenied):
        return BrokerDenied(
            f"permission denied on {what}: grant the runtime account its Pub/Sub role (docs/deploy.md): {_short(err)}"
        )
    return BrokerDenied(f"{what} does not exist: create the topology (docs/deploy.md): {_short(err)}")


def _short(err: Exception) -> str:
    return str(err).splitlines()[0][:200]


# ----------------------------------------------------------------- topology
def create_topic(publisher: pubsub_v1.PublisherClient, path: str) -> None:
    """Create if missing; without the right to create, assume an operator made it (docs/deploy.md)."""
    with contextlib.suppress(gexc.AlreadyExists, gexc.PermissionDenied):
        publisher.create_topic(request={"name": path}, retry=_CALL_RETRY, timeout=_CALL_TIMEOUT)


def create_subscription(subscriber: pubsub_v1.SubscriberClient, path: str, topic: str, **options) -> None:
    with contextlib.suppress(gexc.AlreadyExists, gexc.PermissionDenied):
        subscriber.create_subscription(
            request={"name": path, "topic": topic, **options}, retry=_CALL_RETRY, timeout=_CALL_TIMEOUT
        )


def ensure_topology(topo: Topology) -> None:
    """Create the topics and subscriptions if missing (idempotent)."""
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    try:
        for topic in (topo.requests_topic_path, topo.results_topic_path, topo.dead_letter_topic_path):
            create_topic(publisher, topic)
        create_subscription(
            subscriber, topo.requests_subscription_path, topo.requests_topic_path, **requests_subscription_options(topo)
        )
        create_subscription(
            subscriber, topo.results_subscription_path, topo.results_topic_path, **results_subscription_options(topo)
        )
        create_subscription(subscriber, topo.dead_letter_subscription_path, topo.dead_letter_topic_path)
    except gexc.GoogleAPICallError as err:
        raise BrokerError(f"could not create the Pub/Sub topology: {_short(err)}") from None
    finally:
        publisher.transport.close()
        subscriber.close()


def results_subscription_options(topo: Topology) -> dict:
    """Ordered delivery (each stream's results in order) and the ack deadline."""
    return {"enable_message_ordering": True, "ack_deadline_seconds": topo.ack_deadline_s}


def requests_subscription_options(topo: Topology, emulator: bool | None = None) -> dict:
    """Ordered delivery and the ack deadline; on real Pub/Sub also the dead-letter policy.

    The emulator gets no dead-letter policy: it cannot forward from an ordered subscription,
    and once one message spends its attempts every later pull fails (NullPointerException in
    the emulator, docs/reliability.md), which would brick the local rig.
    """
    emulator = bool(os.environ.get("PUBSUB_EMULATOR_HOST")) if emulator is None else emulator
    options = {"enable_message_ordering": True, "ack_deadline_seconds": topo.ack_deadline_s}
    if not emulator:
        options["dead_letter_policy"] = DeadLetterPolicy(
            dead_letter_topic=topo.dead_letter_topic_path, max_delivery_attempts=topo.max_delivery_attempts
        )
    return options


def delete_topology(topo: Topology) -> None:
    """Remove everything ensure_topology made (tests and benchmarks clean up after themselves)."""
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    try:
        for sub in (
            topo.requests_subscription_path,
            topo.results_subscription_path,
            topo.dead_letter_subscription_path,
        ):
            with contextlib.suppress(gexc.NotFound):
                subscriber.delete_subscription(request={"subscription": sub}, timeout=_CALL_TIMEOUT)
        for topic in (topo.requests_topic_path, topo.results_topic_path, topo.dead_letter_topic_path):
            with contextlib.suppress(gexc.NotFound):
                publisher.delete_topic(request={"topic": topic}, timeout=_CALL_TIMEOUT)
    finally:
        publisher.transport.close()
        subscriber.close()


# ---------------------------------------------------------------- publishing
@dataclasses.dataclass(frozen=True)
class PublishSettings:
    """Explicit batching and BLOCK flow control, so memory stays bounded at any rate."""

    max_messages: int = 500
    max_bytes: int = 4 * 1024 * 1024
    max_latency_s: float = 0.005
    flow_messages: int = 5000
    flow_bytes: int = 64 * 1024 * 1024


class Publisher:
    """An ordered publisher for one topic that never leaves an ordering key paused.

    python-pubsub pauses an ordering key after a failed publish and rejects every
    later publish on it until resume_publish() is called (googleapis/python-pubsub#1084).
    A failed publish here marks its key, and the next publish on that key resumes it
    first; the caller sees the failed future and decides what to redo (the server
    nacks, so the request is redelivered).
    """

    def __init__(self, topic_path: str, settings: PublishSettings = PublishSettings(), ordering: bool = True):
        self.topic_path = topic_path
        self.client = pubsub_v1.PublisherClient(
            batch_settings=types.BatchSettings(
                max_messages=settings.max_messages, max_bytes=settings.max_bytes, max_latency=settings.max_latency_s
            ),
            publisher_options=types.PublisherOptions(
                enable_message_ordering=ordering,
                flow_control=types.PublishFlowControl(
                    message_limit=settings.flow_messages,
                    byte_limit=settings.flow_bytes,
                    limit_exceeded_behavior=types.LimitExceededBehavior.BLOCK,
                ),
            ),
        )
        self._failed_keys: set[str] = set()

    def publish(self, data: bytes, ordering_key: str = "", **attributes: str) -> Future:
        """Attributes travel as keyword arguments of python-pubsub's publish(), so names such as `topic`,
        `retry` or `timeout` cannot be used here; BulkPublisher sends any attribute."""
        if ordering_key and ordering_key in self._failed_keys:
            self._resume(ordering_key)
        future = self.client.publish(self.topic_path, data, ordering_key=ordering_key, **attributes)
        if ordering_key and future.done() and isinstance(future.exception(), PublishToPausedOrderingKeyException):
            # Paused by a failure whose callback has not run yet: resume and publish once more.
            self._resume(ordering_key)
            future = self.client.publish(self.topic_path, data, ordering_key=ordering_key, **attributes)
        if ordering_key:
            future.add_done_callback(lambda f, key=ordering_key: self._note_failure(f, key))
        return future

    def _note_failure(self, future: Future, key: str) -> None:
        # Only record it: this callback runs under python-pubsub's own locks, and calling
        # resume_publish() from here deadlocks when batches are queued behind the failure.
        if not future.cancelled() and future.exception() is not None:
            log.warning(
                "publish on ordering key %s failed (%s); it resumes on the next publish",
                key,
                _short(future.exception()),
            )
            self._failed_keys.add(key)

    def _resume(self, key: str) -> None:
        self._failed_keys.discard(key)
        with contextlib.suppress(ValueError, RuntimeError):  # "not paused" is fine
            self.client.resume_publish(self.topic_path, key)

    def close(self) -> None:
        """Flush what is batched and stop the background threads."""
        self.client.stop()


class BulkPublisher:
    """Publishes whole batches of requests, one Publish RPC per batch, one batch in flight.

    The client's publish() costs tens of µs of Python per message (a proto-plus
    message, a future, a sequencer, a flow-control entry); building the raw
    protobufs of a batch costs a few µs per message. Sending batches strictly one
    after another keeps every ordering key in order, and the caller waiting for
    each batch bounds memory (that wait is the flow control).
    """

    def __init__(self, topic_path: str, timeout: float = 60.0, retry_s: float | None = None):
        """`retry_s`: how long a batch is retried while the broker does not answer (None: every call's 20 s).

        One attempt is cut at the same budget: an attempt caught by the broker's death could otherwise hang for
        the whole `timeout`, long after the batch should have failed."""
        self.topic_path = topic_path
        self.client = pubsub_v1.PublisherClient()
        self.retry = _CALL_RETRY if retry_s is None else _CALL_RETRY.with_timeout(retry_s)
        self.timeout = min(timeout, self.retry.timeout)
        self._raw_request = PublishRequest.pb()
        self._lock = threading.Lock()

    def publish_batch(self, items: Sequence[tuple[bytes, Mapping[str, str], str]]) -> list[str]:
        """Publish (data, attributes, ordering_key) items in order; returns their message ids."""
        request = self._raw_request(topic=self.topic_path)
        for data, attributes, key in items:
            message = request.messages.add(data=data, ordering_key=key)
            message.attributes.update(attributes)
        with self._lock:  # one RPC in flight: per-key order across batches
            try:
                response = GapicPublisherClient.publish(
                    self.client, request=PublishRequest.wrap(request), retry=self.retry, timeout=self.timeout
                )
            except gexc.GoogleAPICallError as err:
                raise BrokerError(f"publish to {self.topic_path} failed: {_short(err)}") from None
        return list(response.message_ids)

    def close(self) -> None:
        self.client.transport.close()


class QueuedPublisher:
    """Publishes groups of messages from one background thread, in the order submitted, one Publish RPC in flight.

    A group is the messages one caller produced at once (a server batch's result messages, one per
    ordering key): it goes out in one RPC, together with the groups queued behind the RPC in flight,
    up to Pub/Sub's 1,000 messages and 10 MB per request. Why not python-pubsub's ordered publisher:
    it sends one batch per ordering key, each its own RPC on its own thread, so a batch answering 16
    streams cost 16 RPCs and its results took 31-58 ms from publish() to done on the emulator
    (docs/benchmarks.md). One RPC in flight keeps every ordering key in order, as BulkPublisher does.

    `submit` returns a Future per group: its message ids, or the BrokerError that failed it (a failed
    RPC fails every group taken with it, some of which an earlier request of the same take may have
    published: at-least-once; the caller decides what to redo). Groups still queued at `close`
    fail with BrokerError.
    """

    def __init__(self, topic_path: str, max_messages: int = 1000, max_bytes: int = 9 * 1024 * 1024):
        self.bulk = BulkPublisher(topic_path)
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.lock = threading.Condition()
        self.queue: list[tuple[list[tuple[bytes, Mapping[str, str], str]], Future]] = []
        self.closing = False
        self.thread = threading.Thread(target=self._run, name="result-publisher", daemon=True)
        self.thread.start()

    def submit(self, items: Sequence[tuple[bytes, Mapping[str, str], str]]) -> Future:
        """Queue (data, attributes, ordering_key) items for publishing together; a Future of their message ids."""
        future: Future = Future()
        with self.lock:
            if self.closing:
                future.set_exception(BrokerError(f"publisher for {self.bulk.topic_path} is closed"))
                return future
            self.queue.append((list(items), future))
            self.lock.notify()
        return future

    def _run(self) -> None:
        while True:
            with self.lock:
                self.lock.wait_for(lambda: self.queue or self.closing, timeout=1.0)
                if not self.queue:
                    if self.closing:
                        return
                    continue
                groups, self.queue = self.queue, []  # all of them: _requests cuts them to the limits
            self._send(groups)

    def _send(self, groups: list) -> None:
        items = [item for group, _ in groups for item in group]
        try:
            ids: list[str] = []
            for chunk in self._requests(items):
                ids += self.bulk.publish_batch(chunk)
        except Exception as err:  # BrokerError, or anything unforeseen: every group taken with it failed
            for _, future in groups:
                future.set_exception(err)
            return
        start = 0
        for group, future in groups:
            future.set_result(ids[start : start + len(group)])
            start += len(group)

    def _requests(self, items: list) -> Iterator[list]:
        """`items` cut into requests within the limits, in order."""
        chunk, size = [], 0
        for item in items:  # ~64 B of framing, key and attributes per message besides its data
            if chunk and (len(chunk) >= self.max_messages or size + len(item[0]) + 64 > self.max_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(item)
            size += len(item[0]) + 64
        if chunk:
            yield chunk

    def close(self, timeout: float = 10.0) -> bool:
        """Publish what is queued (within `timeout`), then stop; True if everything was sent or failed in time."""
        with self.lock:
            self.closing = True
            self.lock.notify()
        self.thread.join(timeout)
        done = not self.thread.is_alive()
        if not done:
            with self.lock:
                left, self.queue = self.queue, []
            for _, future in left:
                future.set_exception(BrokerError(f"publisher for {self.bulk.topic_path} closed with this unsent"))
        self.bulk.close()
        return done


# ------------------------------------------------------------ unary pulling
@dataclasses.dataclass(slots=True)
class Received:
    """One pulled message. `attributes` is the raw protobuf map (read-only use).

    `publish_ns`: when the broker received it (its publish_time, UNIX ns; milliseconds on the emulator), 0 if unknown.
    """

    ack_id: str
    data: bytes
    attributes: Mapping[str, str]
    message_id: str
    ordering_key: str
    publish_ns: int = 0


class Puller:
    """Unary pull of up to `max_messages` at a time, with batched acknowledge.

    Streaming pull costs one callback and one ack RPC per message in the Python
    client; unary pull + batched acks moves that cost from per-message to per-batch.

    Against the emulator, pulls use return_immediately and a short back-off
    instead of long polls (`poll=True`, the default when PUBSUB_EMULATOR_HOST is
    set). The emulator (gcloud 528) mishandles a long poll that the client
    cancels (NoSuchMethodError in its RST_STREAM handling, see its log), and
    hands messages to pulls nobody waits for any more; its long polls also
    add ~30 ms of delivery latency. Real Pub/Sub gets ordinary long polls.

    Each empty poll costs the emulator ~1.9 ms of CPU: polling every 10 ms, an idle server and its
    emulator used 0.19 of the machine's 2 cores (0.11 the emulator, 0.08 the server). So after
    `_IDLE_AFTER_S` without a message a puller polls every `_IDLE_POLL_S`; the first message after a
    quiet spell waits up to that long, and the next poll is at the fast pace again.
    """

    def __init__(
        self, subscription_path: str, max_messages: int = 1000, poll: bool | None = None, retry_s: float | None = None
    ):
        """`retry_s`: how long an ack or a deadline change is retried (None: every call's 20 s)."""
        self.subscription_path = subscription_path
        self.max_messages = max_messages
        self.retry = _CALL_RETRY if retry_s is None else _CALL_RETRY.with_timeout(retry_s)
        self.poll = bool(os.environ.get("PUBSUB_EMULATOR_HOST")) if poll is None else poll
        self.client = subscriber_client()
        self.last_message = time.monotonic()  # when a pull last brought messages: polls slow down after a quiet spell

    def pull(self, max_messages: int | None = None, timeout: float = 2.0) -> list[Received]:
        """Messages available within `timeout` (possibly none); raises BrokerError if the broker fails."""
        request = {"subscription": self.subscription_path, "max_messages": max_messages or self.max_messages}
        deadline, backoff = time.monotonic() + timeout, self._next_backoff(None)
        while True:
            try:
                if self.poll:
                    response = GapicSubscriberClient.pull(
                        self.client, request={**request, "return_immediately": True}, timeout=_CALL_TIMEOUT, retry=None
                    )
                else:
                    response = self.client.pull(request=request, timeout=timeout, retry=None)
            except gexc.DeadlineExceeded:
                return []
            except (gexc.PermissionDenied, gexc.NotFound) as err:
                raise _denied(err, self.subscription_path) from None
            except gexc.GoogleAPICallError as err:
                raise BrokerError(f"pull from {self.subscription_path} failed: {_short(err)}") from None
            received = response._pb.received_messages  # raw protobuf: no proto-plus wrapping per message
            now = time.monotonic()
            if received:
                self.last_message = now
            remaining = deadline - now
            if received or not self.poll or remaining <= 0:
                return [
                    Received(
                        m.ack_id,
                        (message := m.message).data,
                        message.attributes,
                        message.message_id,
                        message.ordering_key,
                        message.publish_time.seconds * 1_000_000_000 + message.publish_time.nanos,
                    )
                    for m in received
                ]
            time.sleep(min(backoff, remaining))
            backoff = self._next_backoff(backoff)

    def _next_backoff(self, backoff: float | None) -> float:
        """The wait before the next poll: 1, 2, 4, 8, 10, 10 ... ms within a pull, or `_IDLE_POLL_S` when idle."""
        if time.monotonic() - self.last_message > _IDLE_AFTER_S:
            return _IDLE_POLL_S
        return _POLL_FIRST_S if backoff is None else min(backoff * 2, _POLL_MAX_S)

    def ack(self, ack_ids: Sequence[str]) -> None:
        for chunk in _chunks(ack_ids):
            self.client.acknowledge(
                request={"subscription": self.subscription_path, "ack_ids": chunk},
                retry=self.retry,
                timeout=_CALL_TIMEOUT,
            )

    def modify_deadline(self, ack_ids: Sequence[str], seconds: int) -> None:
        """seconds=0 is a nack: the messages are redelivered at once (to any replica)."""
        for chunk in _chunks(ack_ids):
            self.client.modify_ack_deadline(
                request={"subscription": self.subscription_path, "ack_ids": chunk, "ack_deadline_seconds": seconds},
                retry=self.retry,
                timeout=_CALL_TIMEOUT,
            )

    def nack(self, ack_ids: Sequence[str]) -> None:
        self.modify_deadline(ack_ids, 0)

    def close(self) -> None:
        self.client.close()


def subscriber_client() -> pubsub_v1.SubscriberClient:
    """A SubscriberClient; on the emulator without gRPC's default 4 MB receive limit.

    The client builds a bare insecure channel for PUBSUB_EMULATOR_HOST, so one pull
    response over 4 MB (e.g. a few near-limit messages) would fail forever.
    """
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not host:
        return pubsub_v1.SubscriberClient()
    channel = grpc.insecure_channel(
        host, options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    )
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


def _chunks(items: Sequence[str]) -> Iterator[list[str]]:
    items = list(items)
    for start in range(0, len(items), ACK_CHUNK):
        yield items[start : start + ACK_CHUNK]


# -------------------------------------------------------- streaming pulling
class Subscription:
    """Streaming pull with bounded flow control, for low-volume consumers (the collector).

    The callback gets (data, attributes, ack, nack) and must call ack() only once
    whatever it did with the message is durable.
    """

    def __init__(self, subscription_path: str, callback: Callable, max_messages: int = 1000):
        self.client = pubsub_v1.SubscriberClient()
        flow = types.FlowControl(max_messages=max_messages, max_bytes=64 * 1024 * 1024)
        self.future = self.client.subscribe(subscription_path, callback=callback, flow_control=flow)

    def error(self) -> BaseException | None:
        """The stream's fatal error, if it ended by itself."""
        if self.future.done() and not self.future.cancelled():
            return self.future.exception()
        return None

    def close(self, timeout: float = 10.0) -> None:
        self.future.cancel()
        with contextlib.suppress(Exception):
            self.future.result(timeout=timeout)
        self.client.close()


def pull_until(
    subscription_path: str,
    n: int | None,
    timeout: float,
    *,
    count: Callable[[Received], int] = lambda message: 1,
    keep: Callable[[Received], bool] | None = None,
    on_batch: Callable[[list[Received]], None] | None = None,
    stop: threading.Event | None = None,
    until_empty: bool = False,
    poll_s: float = 1.0,
) -> list[Received]:
    """The one "pull until N" loop: pull until the kept messages count `n` (None: no count), `timeout` s pass,
    `stop` is set, or (until_empty) one pull of `poll_s` s brings nothing. Every wait is bounded: each pull by
    `poll_s`, the whole by `timeout` (math.inf only with a `stop` event: until stopped).

    A message counts count(message): a result message holds several results. Kept messages (all, unless `keep`
    says) are acked and returned in arrival order; the others are nacked, so they are redelivered at once to
    whoever else pulls. `on_batch` sees each pulled batch before it is acked (e.g. to note when it came). When
    time runs out it returns what it has: the caller says what too few means.
    """
    puller, kept, counted = Puller(subscription_path), [], 0
    deadline = time.monotonic() + timeout
    try:
        while (n is None or counted < n) and not (stop is not None and stop.is_set()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batch = puller.pull(timeout=min(poll_s, remaining))
            if on_batch is not None:
                on_batch(batch)
            mine = batch if keep is None else [m for m in batch if keep(m)]
            if mine:
                puller.ack([m.ack_id for m in mine])
            if len(mine) < len(batch):
                taken = {m.ack_id for m in mine}
                puller.nack([m.ack_id for m in batch if m.ack_id not in taken])
            kept.extend(mine)
            counted += sum(map(count, mine))
            if until_empty and not batch:
                break
    finally:
        puller.close()
    return kept
