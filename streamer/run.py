"""The evaluation run: broker + managed server + streamer + collector + report, in one command."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from tqdm import tqdm

from broker import wire
from broker.errors import BrokerError
from broker.pubsub import BulkPublisher, Puller, Topology, broker_session, ensure_topology, fresh_emulator, pull_all
from configs import from_args, load_config
from results import metrics
from results.compare import offline_check
from results.machine import machine
from results.run import RunInfo, RunResult, dataset_identity
from results.slices import SliceError, SliceTable, join_slices
from streamer.collector import Collector, ResultPump, progress_text
from streamer.datasets import load_dataset, robustness_set
from streamer.robustness_report import robustness_part, slices_part
from streamer.stream import publish_dataset
from streamer.supervise import ManagedServer, RunError, Watch, close_within, managed_server, server_flags
from train.checkpoint import DEFAULT_MODEL_DIR, ModelError, load_metadata
from train.data import Dataset, DatasetError
from train.evaluate import evaluate_model

log = logging.getLogger("streamer")


def open_collector(run_id: str, data: Dataset, ids: list[str], state_file: str | None, model: str | None) -> Collector:
    try:
        return Collector(run_id, data.labels, list(data.class_names), state_file, model, ids)
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
    args,
    config,
    topo: Topology,
    run_id: str,
    data: Dataset,
    models: list[str | None],
    servers: list[ManagedServer] = (),
    publish: bool = True,
) -> list[RunResult]:
    """Publish `data` (unless publish=False: collect only), collect every result, return one result per model.

    `models` are the identities whose results are kept apart (one per compared model; [None] takes any).
    """
    s = config.streamer
    content_type = wire.PNG if s.content_type == "png" else wire.RAW
    state_file = config.collector.state_file or None
    dataset, ids = dataset_identity(data)
    collectors = [
        open_collector(run_id, data, ids, state_file if i == 0 else None, model) for i, model in enumerate(models)
    ]
    if publish and collectors[0].count_answered():
        log.warning(
            "state file %s already holds %d results of run %s: publishing every request again "
            "(repeats are counted as duplicates); use --collect-only to only collect the rest",
            state_file,
            collectors[0].count_answered(),
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
    bars = []
    for i, collector in enumerate(collectors):
        name = "received " if len(collectors) == 1 else f"model {'AB'[i]}  "
        bar = tqdm(total=len(data), desc=name, unit="img", position=1 + i, dynamic_ncols=True)
        bar.update(collector.count_answered())
        collector.on_progress = bar.update
        bars.append(bar)
    pump = ResultPump(collectors, topo.results_subscription_path)
    publisher = BulkPublisher(topo.requests_topic_path) if publish else None
    started = time.time()
    sent_s = publishing = None
    try:
        if publish:
            publishing = asyncio.create_task(
                publish_dataset(
                    publisher,
                    data.images,
                    run_id,
                    s.rate,
                    s.streams,
                    content_type,
                    published_bar.update,
                    publish_stop,
                    files=data.files,
                )
            )
        watch = Watch(topo.project, servers)
        sent_s = await wait_for_results(
            collectors,
            bars,
            publishing,
            pump,
            stop,
            config.collector,
            watch,
            (config.get("intervals") or {}).get("level"),
        )
    finally:
        publish_stop.set()
        if publishing is not None and not publishing.done():
            # Let the batch in flight finish (or fail: a dead broker fails it within the publish
            # retry budget) rather than cancel it under the publisher's feet; cancel as a last resort.
            await asyncio.wait({publishing}, timeout=PUBLISH_GRACE_S)
            if not publishing.done():
                publishing.cancel()
            await asyncio.gather(publishing, return_exceptions=True)
        for bar in [published_bar, *bars]:
            if bar is not None:
                bar.close()
        if publisher is not None:
            close_within(publisher.close, 10.0, "the request publisher")
        if state_file:
            collectors[0].flush_state()  # persist and ack what arrived, while the subscription can still ack
        close_within(pump.close, 15.0, "the results subscription")
        if state_file:
            collectors[0].flush_state()  # and whatever arrived while closing (redelivered later: a duplicate)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    finished = time.time()
    dead = len(pull_all(topo.dead_letter_subscription_path, timeout=1.0))
    run = RunInfo(
        run_id=run_id,
        mode="stream" if publish else "collect-only",
        started_at=_iso(started),
        finished_at=_iso(finished),
        wall_s=round(finished - started, 2),
        rate_target=s.rate if publish else None,
        rate_achieved=_achieved_rate(sent_s),
        streams=s.streams,
        limit=len(data),
        dataset=s.dataset,
        replicas=config.server.replicas,
        server_mode=args.server_mode,
        content_type=s.content_type,
        broker=f"emulator {os.environ['PUBSUB_EMULATOR_HOST']}"
        if os.environ.get("PUBSUB_EMULATOR_HOST")
        else f"project {topo.project}",
        versions=_versions(),
        machine=machine(),
        interrupted=stop.is_set(),
    )
    return [collector.result(run, dataset, sent_s, dead_lettered=dead) for collector in collectors]


async def wait_for_results(
    collectors: list[Collector],
    bars: list,
    publishing: asyncio.Task | None,
    subscription,
    stop: asyncio.Event,
    cfg,
    watch=None,
    level: float | None = None,
):
    """Until every request is answered, the run stops answering, or the user interrupts; the bars show the
    running accuracy with its interval's half-width at ``level``.

    There is no cap on the whole run: a run of any size is waited for as long as its results keep
    coming (a robustness run's 38,000 requests, or two models' 76,000 answers, take minutes). It has
    stopped answering after `timeout_s` without a new result while requests are still being published,
    or min(timeout_s, idle_timeout_s) once all are (configs/stream.py).

    Raises RunError/BrokerError (one clear line) when publishing fails, the results
    subscription dies, the managed server exits or the broker stops answering.
    """
    last_progress, last_count, next_postfix = time.monotonic(), -1, 0.0
    sent_s, published = None, publishing is None
    total = sum(len(c.labels) for c in collectors)
    while not stop.is_set():
        if not published and publishing.done():
            sent_s, published = _published(publishing), True
        if all(c.done.is_set() for c in collectors):
            break
        if (err := subscription.error()) is not None:
            raise BrokerError(f"the results subscription failed: {str(err).splitlines()[0]}")
        if watch is not None:
            watch.check()
        count = sum(c.count_answered() for c in collectors)
        now = time.monotonic()
        if count != last_count:
            last_progress, last_count = now, count
        if now >= next_postfix:  # twice a second
            next_postfix = now + 0.5
            _show_running(collectors, bars, level)
        if now - last_progress > (min(cfg.timeout_s, cfg.idle_timeout_s) if published else cfg.timeout_s):
            log.warning(
                "timed out waiting for results: none for %.0f s (%d/%d answered)", now - last_progress, count, total
            )
            break
        await asyncio.sleep(0.05)
    _show_running(collectors, bars, level)  # the final figures: the last update can be up to 0.5 s old
    if not published and publishing.done():
        sent_s = _published(publishing)
    return sent_s


def _show_running(collectors, bars, level: float | None = None) -> None:
    """Running accuracy (± its interval's half-width at ``level``) and p50 latency on each progress bar."""
    for collector, bar in zip(collectors, bars):
        text = progress_text(*collector.running_stats(), level)
        if text:
            bar.set_postfix_str(text)


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


WARM_UP_RATE = 2000.0  # img/s: fast enough to be short, slow enough to look like a stream


def warm_up_size(images: int, cap: int, from_images: int, asked: int | None = None) -> int:
    """How many warm-up requests a run of `images` gets: `asked` if a flag asked, else in proportion.

    In proportion: as many as the run has images, at most `cap`, none below `from_images`
    (configs/stream.py says why). A warm-up never costs more than the run it serves.
    """
    if asked is not None:
        return asked
    return 0 if images < from_images else min(cap, images)


def warm_up_path(topo: Topology, data: Dataset, messages: int, expected_per_request: int) -> dict | None:
    """Before the timed stream, push `messages` requests through the real path (broker, server, results).

    A freshly started emulator's JVM runs 2-3x slower until it has compiled its hot paths: the first
    ~3,000 images of a run had p99 of 80-230 ms against ~25 ms after (docs/benchmarks.md). Real
    Pub/Sub and an emulator that was already running get nothing. The report says what was done.
    """
    if not messages or not fresh_emulator():
        return None
    started = time.monotonic()
    images = np.resize(data.images, (messages, *data.images.shape[1:]))
    publisher = BulkPublisher(topo.requests_topic_path)
    try:
        asyncio.run(publish_dataset(publisher, images, "warmup", WARM_UP_RATE, 16))
    finally:
        publisher.close()
    drain_results(topo, messages * expected_per_request, timeout=30.0)
    seconds = time.monotonic() - started
    log.info("warm-up: %d requests through the real path in %.1f s, not timed", messages, seconds)
    return {"messages": messages, "seconds": round(seconds, 2)}


def drain_results(topo: Topology, expected: int, timeout: float) -> None:
    """Pull and ack `expected` results (the warm-up's) off the results subscription."""
    puller, seen = Puller(topo.results_subscription_path), 0
    deadline = time.monotonic() + timeout
    try:
        while seen < expected and time.monotonic() < deadline:
            messages = puller.pull(timeout=1.0)
            for message in messages:
                with contextlib.suppress(wire.WireError):
                    seen += len(wire.decode_results(message.data)[1])
            if messages:
                puller.ack([m.ack_id for m in messages])
    finally:
        puller.close()


def load_models(config, compare: str | None) -> tuple[list[str], list[dict]]:
    """The model folder(s) of this run and their metadata; two models must be comparable."""
    dirs = [str(config.model_dir or DEFAULT_MODEL_DIR)] + ([compare] if compare else [])
    metas = [load_metadata(d) for d in dirs]
    if compare:
        a, b = metas
        if a["checkpoint_sha256"] == b["checkpoint_sha256"]:
            raise RunError(f"--compare {compare} is the same checkpoint as {dirs[0]}")
        for key in ("class_names", "input_shape"):
            if list(a[key]) != list(b[key]):
                raise RunError(f"the two models differ in {key}: {a[key]} vs {b[key]}")
    return dirs, metas


def compare_topology(project: str, config, suffix: str) -> Topology:
    """The second model's own subscription on the same request topic: both see every request."""
    names = {**config.broker.to_dict(), "requests_subscription": config.broker.requests_subscription + "-compare"}
    return Topology.from_names(project, names, suffix)


# -------------------------------------------------------------- entry points
def run(args, config) -> int:
    """The whole evaluation (or, with --collect-only, the collecting half of one); returns the exit code."""
    from streamer.figures import Shown
    from streamer.report import interval_settings, render_terminal, write_report

    collect_only = args.collect_only
    robust_flags = getattr(args, "robustness", None)
    if collect_only:
        if not args.run_id:
            raise RunError("--collect-only needs the --run-id of the run whose results to collect")
        size = state_file_size(config.collector.state_file)
        if not config.streamer.limit and not robust_flags and size:
            config.streamer.limit = size  # the run's size, as recorded in its state file
    dirs, metas = load_models(config, args.compare)
    # Everything the run streams is ready before anything starts: the dataset, the corrupted images, the slices.
    source = load_dataset(config.streamer.dataset, metas[0], config.streamer.limit or None)
    data = seen = source  # what is published, and what the server decodes from it
    robust = None
    if robust_flags:
        robust = robustness_set(source, content_type=config.streamer.content_type, **robust_flags)
        data, seen = robust.streamed, robust.seen
        info = robust.info
        decoded = (
            f"; decoded {info['requests']:,} as the server will (PNG, load_image) in {info['decode_s']:.1f} s, "
            f"{info['inverted']:,} of them inverted"
            if info["decode_s"] is not None
            else ""
        )
        print(
            f"generated {len(robust.corrupted):,} corrupted images ({len(info['corruptions'])} corruptions x "
            f"{len(info['severities'])} severities x {info['per_cell']} source images, seed {info['seed']}) in "
            f"{info['generation_s']:.1f} s, before the timed stream{decoded}"
        )
    slice_values, slice_info = slices_of(getattr(args, "slice_table", None), source)
    answers = f", each answered by both models ({2 * len(data):,} answers)" if args.compare else ""
    clean = f" ({robust.info['per_cell']:,} clean, {len(robust.corrupted):,} corrupted)" if robust else ""
    print(f"{'collecting' if collect_only else 'streaming'} {len(data):,} requests{clean}{answers}", flush=True)
    run_id = args.run_id or uuid.uuid4().hex[:8]
    identities = [meta["checkpoint_sha256"][:16] for meta in metas] if args.compare else [None]
    # The offline evaluation needs no broker: it runs while the managed server starts (JAX, the model,
    # every bucket compiled: the longer of the two) and is done before the timed stream, so it never
    # competes with it, and a run ends ~2 s sooner after its last result.
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="offline")
    offline = {d: pool.submit(evaluate_model, d, dataset=seen) for d in dirs} if args.verify else {}
    pool.shutdown(wait=False)  # its evaluations still run; nothing more is submitted
    with broker_session(config.broker.project or None) as project, contextlib.ExitStack() as stack:
        topo = Topology.from_names(project, config.broker, args.topic_suffix)
        topologies = [topo] + ([compare_topology(project, config, args.topic_suffix)] if args.compare else [])
        servers = []
        for model_dir, model_topo in zip(dirs, topologies):
            ensure_topology(model_topo)
            if args.server_mode == "managed":
                flags = {**server_flags(args, config), "model": model_dir}
                if model_topo is not topo:
                    flags["subscription"] = config.broker.requests_subscription + "-compare"
                servers.append(stack.enter_context(managed_server(flags, config.server.replicas)))
        offline = {d: future.result() for d, future in offline.items()}
        s = config.streamer
        warm_up = warm_up_size(len(data), s.warm_up, s.warm_up_from, args.warm_up)
        warm = None if collect_only else warm_up_path(topo, data, warm_up, len(topologies))
        results = asyncio.run(
            stream_and_collect(args, config, topo, run_id, data, identities, servers, publish=not collect_only)
        )
    for result, model_dir in zip(results, dirs):
        result.model = dataclasses.replace(result.model, dir=model_dir)
        result.run.warm_up = warm
        result.run.robustness = robust.info if robust else None
        result.run.slices = slice_info
        if args.verify and metrics.counts(result)["answered"]:
            # Every streamed prediction against `python -m train.evaluate` of the same checkpoint on the
            # images as the server decoded them: labels identical, confidences within results/agreement.py's
            # tolerance (the server's batch sizes differ from the offline one's, and XLA's last digits with them).
            result.offline = offline_check(result, offline[model_dir])
    a, b = results[0], (results[1] if args.compare else None)
    out_dir = Path(config.collector.reports_dir) / (time.strftime("%Y%m%d-%H%M%S") + f"-{run_id}")
    shown = Shown.of(a, b, interval_settings(config))  # every figure and its interval, computed once
    worst = load_config(None, "robustness.py").worst
    parts = [
        part
        for part in (
            robustness_part(a, b, robust.gallery() if robust else None, worst),
            slices_part(a, b, slice_values) if slice_values or robust else None,
        )
        if part is not None
    ]
    write_report(a, out_dir, images=seen.images, compared=b, shown=shown, parts=parts)
    print(render_terminal(a, out_dir, compared=b, shown=shown))
    for part in parts:
        print("\n".join(part.terminal))
    code, verdict = run_verdict(a)
    if b is not None and code == EXIT_OK:
        code, verdict = run_verdict(b)
        verdict = f"model B: {verdict}" if code else verdict
    print(verdict, file=sys.stderr if code else sys.stdout)
    return code


def slices_of(table: SliceTable | None, source: Dataset) -> tuple[dict[str, dict[str, str]] | None, dict | None]:
    """--slices joined to the dataset's images: (column -> {image id -> value}, what was used for RunInfo.slices);
    RunError (one line) when the file names none of the images."""
    if table is None:
        return None, None
    _, ids = dataset_identity(source)
    try:
        columns, unmatched = join_slices(table, ids)
    except SliceError as err:
        raise RunError(str(err)) from None
    if unmatched:
        log.warning("--slices %s: %d of its %d rows name no image of this run", table.path, unmatched, len(table.rows))
    info = {"file": table.path, "key": table.key, "columns": list(table.columns), "unmatched_rows": unmatched}
    return {column: dict(zip(ids, values)) for column, values in columns.items()}, info


# The evaluator's exit status (README): 0 = every request answered with a prediction, identical to the
# offline evaluation; 1 = some request got no result or an error result, or the run was interrupted;
# 2 = it could not start (broker, model, dataset, flags); 3 = the streamed predictions differ from offline.
EXIT_OK, EXIT_INCOMPLETE, EXIT_SETUP, EXIT_MISMATCH = 0, 1, 2, 3


def run_verdict(result: RunResult) -> tuple[int, str]:
    """The exit code of a finished run and the one line that says why."""
    counts, offline = metrics.counts(result), result.offline
    if result.run.interrupted:
        return EXIT_INCOMPLETE, f"incomplete: interrupted with {counts['answered']}/{counts['sent']} answered"
    if counts["missing"]:
        return EXIT_INCOMPLETE, f"incomplete: {counts['missing']} of {counts['sent']} requests got no result"
    if counts["request_errors"]:
        reasons = ", ".join(f"{k} {v}" for k, v in metrics.error_reasons(result).items())
        return EXIT_INCOMPLETE, f"failed: {counts['request_errors']} requests got an error result ({reasons})"
    if offline is not None and not offline.identical:
        differ = offline.compared - offline.agree
        what = "; ".join(offline.differences) or "incomplete comparison"
        detail = f"{differ} streamed predictions differ" if differ else what
        return EXIT_MISMATCH, f"mismatch: {detail} from the offline evaluation"
    return EXIT_OK, f"ok: {counts['answered']}/{counts['sent']} answered" + (
        ", identical to the offline evaluation" if offline else ""
    )


def main(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        config = from_args(args, "stream.py")
        if args.index is not None or args.image:
            from streamer.single import run_single

            return run_single(args, config)
        return run(args, config)
    except (BrokerError, DatasetError, ModelError, RunError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
