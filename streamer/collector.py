"""The collector: subscribes to results, deduplicates, joins ground truth, aggregates.

Pub/Sub is at-least-once, so results are deduplicated by request id and the
duplicates counted. Labels never travel: the ground truth is joined here, by the
image index encoded in the request id (`<run_id>-<index>`).

Progress can survive the process (a restarted collector): with a state file,
received results are written to it *before* their messages are acked, so a
restarted collector resumes from the file plus whatever Pub/Sub redelivers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from broker import wire
from broker.errors import BrokerError
from broker.pubsub import Puller
from results.run import (
    MEASURED,
    Answers,
    Counters,
    DatasetIdentity,
    ModelIdentity,
    Ordering,
    RunInfo,
    RunResult,
)
from results.stats import wilson_bounds

log = logging.getLogger("collector")


class Collector:
    """Thread-safe accumulation of one run's results (indices 0..n-1 of a dataset)."""

    def __init__(
        self,
        run_id: str,
        labels: np.ndarray,
        class_names: list[str],
        state_file: str | None = None,
        model: str | None = None,
        image_ids: Sequence[str] | None = None,
    ):
        n = len(labels)
        self.model = model  # the identity whose results this collector takes (None: any)
        self.image_ids = list(image_ids) if image_ids is not None else [str(i) for i in range(n)]
        self.run_id, self.labels, self.class_names = run_id, np.asarray(labels), list(class_names)
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.answered = np.zeros(n, bool)
        self.prediction = np.full(n, -1, np.int16)
        self.confidence = np.zeros(n, np.float32)
        self.latency_ms = np.full(n, np.nan)
        self.queue_ms = np.full(n, np.nan)
        self.compute_ms = np.full(n, np.nan)
        self.batch_size = np.zeros(n, np.int32)
        self.received_s = np.full(n, np.nan)  # time.time() at receipt
        self.stream = [""] * n
        self.seq = np.full(n, -1, np.int64)
        self.errors: dict[int | str, dict] = {}
        self.duplicates = self.stray = self.invalid = self.ordering_violations = 0
        self.invalid_seen: set[str] = set()
        self.last_seq: dict[str, int] = {}
        self.violations_by_stream: dict[str, int] = {}
        self.models: set[str] = set()
        self.state_file = Path(state_file) if state_file else None
        self.on_progress = None  # callable(n_new) for progress bars
        if self.state_file and self.state_file.is_file():
            self._load_state()

    # ------------------------------------------------------------ receive
    def index_of(self, request_id: str | None) -> int | None:
        prefix = f"{self.run_id}-"
        if not request_id or not request_id.startswith(prefix):
            return None
        index = wire.parse_uint(request_id[len(prefix) :])
        return index if index is not None and index < len(self.labels) else None

    def add_message(self, data: bytes, received_s: float | None = None) -> int:
        """Record one result message; returns how many new requests it answered."""
        try:
            model, results = wire.decode_results(data)
        except wire.WireError as err:
            self.count_invalid(err)
            return 0
        return self.add_results(model, results, received_s)

    def add_results(self, model: str, results: list, received_s: float | None = None) -> int:
        """Record the results of one decoded message; returns how many new requests they answered."""
        received_s = received_s or time.time()
        new = 0
        with self.lock:
            for result in results:
                try:
                    result = wire.check_result(result, len(self.class_names))
                except wire.WireError as err:
                    self._invalid(err)
                    continue
                new += self._add_result(result, received_s)
            if new:
                self.models.add(model[: wire.MAX_ID_CHARS])
            if self.answered.all():
                self.done.set()
        if new and self.on_progress:
            self.on_progress(new)
        return new

    def count_invalid(self, err: wire.WireError) -> None:
        with self.lock:
            self._invalid(err)

    def count_stray(self, results: int) -> None:
        with self.lock:
            self.stray += results

    def _invalid(self, err: wire.WireError) -> None:
        """Count a result that breaks the contract; log the first of each kind (a flood must not flood the log)."""
        self.invalid += 1
        if err.detail not in self.invalid_seen:
            self.invalid_seen.add(err.detail)
            log.warning("invalid result on the results topic (counted, not used): %s", err)

    def _add_result(self, r: dict, received_s: float) -> int:
        i = self.index_of(r.get("request_id"))
        if "error" in r:
            if i is None and r.get("request_id") is not None:
                self.stray += 1  # another run's (or someone else's) request
                return 0
            key = i if i is not None else f"{r.get('request_id')}/{r.get('message_id')}"
            if key in self.errors:
                self.duplicates += 1
                return 0
            self.errors[key] = {k: r.get(k) for k in ("request_id", "error", "detail", "stream", "seq")}
            if i is not None and not self.answered[i]:
                self.answered[i] = True  # answered, with an error
                return 1
            return 0
        if i is None:
            self.stray += 1
            return 0
        if self.answered[i]:
            self.duplicates += 1
            return 0
        # Once per result (10,000 per run): each key read once, and the ordering check in one lookup.
        get = r.get
        stream, seq = get("stream", ""), get("seq")
        if seq is None:
            seq = -1
        last = self.last_seq.get(stream, -1)
        if seq < last:
            self.ordering_violations += 1
            self.violations_by_stream[stream] = self.violations_by_stream.get(stream, 0) + 1
        else:
            self.last_seq[stream] = seq
        timing = get("timing") or {}
        sent_ns = get("sent_ns")
        self.answered[i] = True
        self.prediction[i] = int(r["label"])
        self.confidence[i] = float(r["confidence"])
        self.latency_ms[i] = (received_s * 1e9 - int(sent_ns)) / 1e6 if sent_ns else np.nan
        self.queue_ms[i] = timing.get("queue_ms", np.nan)
        self.compute_ms[i] = timing.get("compute_ms", np.nan)
        self.batch_size[i] = timing.get("batch_size", 0)
        self.received_s[i] = received_s
        self.stream[i], self.seq[i] = stream, seq
        return 1

    # --------------------------------------------------------- subscribing
    def subscribe(self, subscription_path: str) -> ResultPump:
        """Start pulling result messages in a background thread (see ResultPump)."""
        return ResultPump([self], subscription_path)

    def running_stats(self) -> tuple[int, int, float | None]:
        """(right, answered, p50 latency in ms) of what has arrived so far, for the progress bar."""
        with self.lock:
            ok = self.answered & (self.prediction >= 0)
            if not ok.any():
                return 0, 0, None
            right = int((self.prediction[ok] == self.labels[ok]).sum())
            latency = self.latency_ms[ok]
            latency = latency[~np.isnan(latency)]
            return right, int(ok.sum()), float(np.median(latency)) if len(latency) else None

    def flush_state(self) -> None:
        """Write the state file atomically (a no-op without one)."""
        if not self.state_file:
            return
        with self.lock:  # copies only: the results keep arriving while the file is written
            answers = self._answers()
            errors = [[key, dict(error)] for key, error in self.errors.items()]
            own = {name: _jsonable(getattr(self, name)) for name in STATE}
        # "answered": the requests answered with a prediction, as columns (results/run.py's schema)
        state = {
            "run_id": self.run_id,
            "n": len(self.labels),
            "answered": answers.to_columns(),
            "errors": errors,
            **own,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_file)

    def _load_state(self) -> None:
        s = json.loads(self.state_file.read_text())
        if s["run_id"] != self.run_id or s["n"] != len(self.labels):
            raise ValueError(f"state file {self.state_file} belongs to run {s['run_id']}, not {self.run_id}")
        answers = Answers.from_columns(s["answered"])
        self.answered[answers.index] = True
        for name in MEASURED:
            column, values = getattr(self, name), getattr(answers, name)
            if isinstance(column, list):
                for i, value in zip(answers.index, values):
                    column[i] = value
            else:
                column[answers.index] = values
        for key, error in s["errors"]:
            self.errors[key] = error
            if isinstance(key, int):
                self.answered[key] = True
        for name, kind in STATE.items():
            setattr(self, name, kind(s[name]))
        log.info("resumed from %s: %d results already collected", self.state_file, len(answers))

    # ---------------------------------------------------------- the result
    def count_answered(self) -> int:
        with self.lock:
            return int(self.answered.sum())

    def _answers(self) -> Answers:
        """The requests answered with a prediction (the caller holds the lock)."""
        idx = np.flatnonzero(self.answered & (self.prediction >= 0))
        measured = {
            name: [self.stream[i] for i in idx] if name == "stream" else getattr(self, name)[idx] for name in MEASURED
        }
        return Answers.of(idx, [self.image_ids[i] for i in idx], self.labels[idx], **measured)

    def result(
        self,
        run: RunInfo | None = None,
        dataset: DatasetIdentity | None = None,
        published_s: np.ndarray | None = None,
        dead_lettered: int = 0,
    ) -> RunResult:
        """What this collector received, as the run's result (results/metrics.py computes its figures)."""
        with self.lock:
            answers = self._answers()
            models = sorted(self.models)
            return RunResult(
                run=run or RunInfo(run_id=self.run_id),
                model=ModelIdentity(models[0] if len(models) == 1 else ",".join(models), tuple(models)),
                dataset=dataset or DatasetIdentity("", "", len(self.labels)),
                class_names=tuple(self.class_names),
                answers=answers,
                counters=Counters(len(self.labels), self.duplicates, dead_lettered, self.stray, self.invalid),
                ordering=Ordering(self.ordering_violations, dict(self.violations_by_stream)),
                errors=[{"index": key if isinstance(key, int) else None, **e} for key, e in self.errors.items()],
                missing=[f"{self.run_id}-{i}" for i in np.flatnonzero(~self.answered)],
                published_s=published_s,
            )


def progress_text(right: int, answered: int, p50: float | None, level: float | None = None) -> str:
    """ "acc 94.51% ±0.45 pts, p50 14 ms": the running accuracy with the half-width of its Wilson interval at
    ``level`` (none without it), for the progress bar. Closed form, microseconds: it runs twice a second."""
    if not answered:
        return ""
    text = f"acc {right / answered:.2%}"
    if level is not None:
        lo, hi = wilson_bounds(right, answered, level)
        text += f" ±{50 * (hi - lo):.2f} pts"
    return f"{text}, p50 {p50:.0f} ms" if p50 else text


class ResultPump:
    """Pulls result messages for its Collectors: route by model, record, persist (with a state file), then ack.

    Unary pull with batched acks, like the server: results arrive grouped, and
    an ack only goes out once what it acknowledges is recorded (and, with a
    state file, on disk), so a killed collector loses nothing.
    """

    def __init__(
        self, collectors: list[Collector], subscription_path: str, flush_s: float = 0.5, give_up_s: float = 15.0
    ):
        self.collectors, self.flush_s, self.give_up_s = collectors, flush_s, give_up_s
        self.collector = collectors[0]  # the primary: it also counts what belongs to no collector
        self.puller = Puller(subscription_path, retry_s=give_up_s)
        self.stopping = threading.Event()
        self._error: BaseException | None = None
        self._unacked: list[str] = []
        self.thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last_flush, failing_since = time.monotonic(), None
        while not self.stopping.is_set():
            try:
                messages = self.puller.pull(timeout=0.2)
                failing_since = None
            except BrokerError as err:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.give_up_s:
                    self._error = err
                    return
                time.sleep(0.5)
                continue
            received_s = time.time()
            for message in messages:
                try:
                    self.record(message.data, received_s)
                except Exception as err:  # a bug of ours must not stop collecting everyone else's results
                    log.exception("result message %s could not be recorded", message.message_id)
                    self.collector.count_invalid(wire.WireError("bad_result", f"{type(err).__name__}: {err}"))
            self._unacked += [m.ack_id for m in messages]
            if not self.collector.state_file or time.monotonic() - last_flush > self.flush_s:
                self._settle()
                last_flush = time.monotonic()

    def record(self, data: bytes, received_s: float) -> None:
        """Hand one result message to the collector of its model (or count it as stray)."""
        try:
            model, results = wire.decode_results(data)
        except wire.WireError as err:
            self.collector.count_invalid(err)
            return
        if len(self.collectors) == 1:
            target = self.collector
        else:
            target = next((c for c in self.collectors if c.model == model), None)
        if target is None:
            self.collector.count_stray(len(results))
        else:
            target.add_results(model, results, received_s)

    def _settle(self) -> None:
        """Persist, then ack everything recorded so far."""
        self.collector.flush_state()
        acks, self._unacked = self._unacked, []
        if acks:
            try:
                self.puller.ack(acks)
            except Exception as err:  # redelivered later, and deduplicated then
                log.warning("ack of %d result messages failed: %s", len(acks), err)

    def error(self) -> BaseException | None:
        """The error that stopped the pump, if the broker stayed unreachable."""
        return self._error

    def close(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.thread.join(timeout)
        if self._error is None:
            self._settle()
        self.puller.close()


# The collector's own state besides answers and errors: written and read back by this one table.
STATE = {
    "duplicates": int,
    "stray": int,
    "invalid": int,
    "ordering_violations": int,
    "violations_by_stream": dict,
    "last_seq": dict,
    "models": set,
}


def _jsonable(value):
    """A copy that JSON can write (the collector keeps changing the original)."""
    return sorted(value) if isinstance(value, set) else dict(value) if isinstance(value, dict) else value
