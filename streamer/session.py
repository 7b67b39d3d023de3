"""The one place a run talks to the broker.

A RunSession holds the broker (an emulator it starts, or the one it is given), the topology (and the compared
model's own subscription of the same requests), the managed servers on them, the warm-up, the request publisher,
the result pump and the dead-letter count. streamer/run.py and streamer/single.py ask it; neither calls
broker.pubsub itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import ml_collections
import numpy as np

from broker import wire
from broker.process import ServerChild
from broker.pubsub import (
    BulkPublisher,
    Publisher,
    PublishSettings,
    Received,
    Topology,
    broker_session,
    check_reachable,
    ensure_topology,
    fresh_emulator,
    pull_until,
)
from streamer.collector import Collector, ResultPump
from streamer.options import RunOptions
from streamer.stream import publish_dataset, request_for
from streamer.supervise import RunError, Watch, close_within, managed_server
from train.data import Dataset

log = logging.getLogger("streamer")

# A failing batch's last attempt may start just before its retry budget (streamer.publish_retry_s) ends.
PUBLISH_SLACK_S = 10.0
WARM_UP_RATE = 2000.0  # img/s: fast enough to be short, slow enough to look like a stream
COMPARE = "-compare"  # the compared model's requests subscription: the configured name + this


class RunSession:
    """The broker side of one run: `with RunSession(config, options, model_dirs) as session: ...`.

    On entry: the broker (PUBSUB_EMULATOR_HOST, --project, or an emulator started for the run), one topology per
    model (the second model gets its own requests subscription, so both see every request), and with
    --server managed one server per model (`replicas` each; default config.server.replicas). On exit everything
    started is stopped.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        options: RunOptions,
        model_dirs: Sequence[str | None],
        replicas: int | None = None,
    ):
        self.config, self.options, self.model_dirs = config, options, list(model_dirs)
        self.replicas = config.server.replicas if replicas is None else replicas
        self.servers: list[ServerChild] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> RunSession:
        try:
            self.project = self._stack.enter_context(broker_session(self.config.broker.project or None))
            self.topology = Topology.from_names(self.project, self.config.broker, self.options.topic_suffix)
            self.topologies = [self.topology]
            if len(self.model_dirs) > 1:
                self.topologies.append(self._compare_topology())
            for model_dir, topo in zip(self.model_dirs, self.topologies):
                ensure_topology(topo)
                if self.options.server_mode == "managed":
                    flags = {**self._server_flags(), "model": model_dir}
                    if topo is not self.topology:  # the server adds --topic-suffix itself
                        flags["subscription"] = self.config.broker.requests_subscription + COMPARE
                    self.servers.append(self._stack.enter_context(managed_server(flags, self.replicas)))
        except BaseException:
            self._stack.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc) -> bool | None:
        return self._stack.__exit__(*exc)

    def _compare_topology(self) -> Topology:
        """The second model's own subscription on the same request topic: both see every request."""
        b = self.config.broker
        names = {**b.to_dict(), "requests_subscription": b.requests_subscription + COMPARE}
        return Topology.from_names(self.project, names, self.options.topic_suffix)

    def _server_flags(self) -> dict[str, str | None]:
        """The flags a managed server shares with the run that starts it."""
        return {
            "config": self.options.config,
            "model": self.config.model_dir or None,
            "topic_suffix": self.options.topic_suffix,
            "project": self.config.broker.project or None,
        }

    @property
    def broker(self) -> str:
        """Which broker the run used, for its report."""
        host = os.environ.get("PUBSUB_EMULATOR_HOST")
        return f"emulator {host}" if host else f"project {self.project}"

    # ------------------------------------------------------------ the run
    def warm_up(self, images: np.ndarray, messages: int) -> dict | None:
        """Before the timed stream, push `messages` requests through the real path (broker, server, results).

        A freshly started emulator's JVM runs 2-3x slower until it has compiled its hot paths: the first
        ~3,000 images of a run had p99 of 80-230 ms against ~25 ms after (docs/benchmarks.md). Real
        Pub/Sub and an emulator that was already running get nothing. The report says what was done.
        """
        if not messages or not fresh_emulator():
            return None
        started = time.monotonic()
        images = np.resize(images, (messages, *images.shape[1:]))
        publisher = BulkPublisher(self.topology.requests_topic_path, retry_s=self.config.streamer.publish_retry_s)
        try:
            interval = self.config.streamer.publish_interval_ms / 1000
            asyncio.run(publish_dataset(publisher, images, "warmup", WARM_UP_RATE, 16, interval_s=interval))
        finally:
            publisher.close()
        # Every model answers every request: pull (and ack) all their results before the timed stream.
        pull_until(
            self.topology.results_subscription_path, messages * len(self.topologies), timeout=30.0, count=_results_in
        )
        seconds = time.monotonic() - started
        log.info("warm-up: %d requests through the real path in %.1f s, not timed", messages, seconds)
        return {"messages": messages, "seconds": round(seconds, 2)}

    @contextlib.asynccontextmanager
    async def publishing(
        self, data: Dataset, run_id: str, on_published: Callable[[int], None], stop: asyncio.Event
    ) -> AsyncIterator[asyncio.Task]:
        """A task publishing `data` at the configured rate and streams (its result: each request's send time).

        On exit `stop` is set and the batch in flight may finish (or fail: a dead broker fails it within the
        publish retry budget) rather than be cancelled under the publisher's feet; cancelled as a last resort.
        """
        s = self.config.streamer
        content_type = wire.PNG if s.content_type == "png" else wire.RAW
        publisher = BulkPublisher(self.topology.requests_topic_path, retry_s=s.publish_retry_s)
        task = asyncio.create_task(
            publish_dataset(
                publisher,
                data.images,
                run_id,
                s.rate,
                s.streams,
                content_type,
                on_published,
                stop,
                files=data.files,
                interval_s=s.publish_interval_ms / 1000,
            )
        )
        try:
            yield task
        finally:
            stop.set()
            if not task.done():
                await asyncio.wait({task}, timeout=s.publish_retry_s + PUBLISH_SLACK_S)
                if not task.done():
                    task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            close_within(publisher.close, 10.0, "the request publisher")

    @contextlib.contextmanager
    def collecting(self, collectors: list[Collector]) -> Iterator[ResultPump]:
        """The result pump feeding `collectors` off the results subscription; on exit, what arrived is persisted
        (with a state file) and acked while the subscription can still ack, and the pump is closed."""
        pump = ResultPump(
            collectors, self.topology.results_subscription_path, give_up_s=self.config.collector.give_up_s
        )
        try:
            yield pump
        finally:
            primary = collectors[0]
            if primary.state_file:
                primary.flush_state()
            close_within(pump.close, 15.0, "the results subscription")
            if primary.state_file:
                primary.flush_state()  # and whatever arrived while closing (redelivered later: a duplicate)

    def watch(self) -> Watch:
        """Notices, while results are awaited, that a managed server exited or the broker went away."""
        return Watch(self.servers, functools.partial(check_reachable, self.project, 10.0))

    def dead_lettered(self) -> int:
        """Requests the broker gave up on (real Pub/Sub's dead-letter topic; the emulator has none): drained."""
        return len(pull_until(self.topology.dead_letter_subscription_path, None, timeout=30.0, until_empty=True))

    # ------------------------------------------------------------ one image
    def ask(self, payload: np.ndarray | bytes, content_type: str, run_id: str, timeout: float) -> dict:
        """One request through the broker: its result, with the answering model and the round trip in ms."""
        request_id = f"{run_id}-0"
        publisher = Publisher(self.topology.requests_topic_path, PublishSettings(max_messages=1, max_latency_s=0.0))
        try:
            data, attributes = (
                request_for(0, payload, run_id, 1, content_type)
                if content_type == wire.RAW
                else wire.encode_request(payload, request_id, stream="0", seq=0, content_type=content_type)
            )
            sent = time.monotonic()
            publisher.publish(data, attributes["stream"], **attributes).result(timeout=30)  # BLOCK flow control
            arrived: list[float] = []
            # Someone else's result is nacked: left for them.
            answer = pull_until(
                self.topology.results_subscription_path,
                1,
                timeout=sent + timeout - time.monotonic(),
                keep=lambda message: _answer(message, request_id) is not None,
                on_batch=lambda batch: arrived.append(time.monotonic()),
                poll_s=2.0,
            )
        finally:
            publisher.close()
        if not answer:
            raise RunError(f"no result for {request_id} within {timeout:.0f}s")
        model, result = _answer(answer[0], request_id)
        return {**result, "model": model, "round_trip_ms": (arrived[-1] - sent) * 1000}


def _results_in(message: Received) -> int:
    """How many results a result message holds (0 if it is not one)."""
    with contextlib.suppress(wire.WireError):
        return len(wire.decode_results(message.data)[1])
    return 0


def _answer(message: Received, request_id: str) -> tuple[str, dict] | None:
    """(model, result) if this result message answers `request_id`."""
    with contextlib.suppress(wire.WireError):
        model, results = wire.decode_results(message.data)
        mine = [r for r in results if r.get("request_id") == request_id]
        if mine:
            return model, mine[0]
    return None
