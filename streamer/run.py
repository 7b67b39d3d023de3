"""The evaluation run, top to bottom: set up, stream, collect, compare, report, verdict.

What talks to the broker (the emulator, the topics, the managed servers, the warm-up, publishing, the result pump,
the dead-letter count) is streamer/session.py's RunSession; this file decides what is streamed and what it means.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import logging
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import ml_collections
import numpy as np
from tqdm import tqdm

from broker.errors import BrokerError
from configs import load_config
from results import metrics
from results.compare import offline_check
from results.machine import machine
from results.run import RunInfo, RunResult, dataset_identity
from results.slices import SliceError, SliceTable, join_slices
from streamer.collector import Collector, progress_text
from streamer.datasets import RobustnessSet, load_dataset, robustness_set
from streamer.options import RunOptions
from streamer.robustness_report import robustness_part, slices_part
from streamer.session import RunSession
from streamer.supervise import RunError
from train.checkpoint import DEFAULT_MODEL_DIR, ModelError, load_metadata
from train.data import Dataset, DatasetError
from train.evaluate import evaluate_model

log = logging.getLogger("streamer")


# -------------------------------------------------------------- the run
def run(config: ml_collections.ConfigDict, options: RunOptions) -> int:
    """The whole evaluation (or, with --collect-only, the collecting half of one); returns the exit code."""
    plan = plan_run(config, options)
    # The offline evaluation needs no broker: it runs while the managed server starts (JAX, the model,
    # every bucket compiled: the longer of the two) and is done before the timed stream, so it never
    # competes with it, and a run ends ~2 s sooner after its last result.
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="offline")
    offline = {d: pool.submit(evaluate_model, d, dataset=plan.seen) for d in plan.model_dirs} if options.verify else {}
    pool.shutdown(wait=False)  # its evaluations still run; nothing more is submitted
    with RunSession(config, options, plan.model_dirs) as session:
        offline = {d: future.result() for d, future in offline.items()}
        s = config.streamer
        warm_up = (
            0 if options.collect_only else warm_up_size(len(plan.data), s.warm_up, s.warm_up_from, options.warm_up)
        )
        warm = session.warm_up(plan.data.images, warm_up)
        results = asyncio.run(
            stream_and_collect(
                session, config, plan.run_id, plan.data, plan.identities, publish=not options.collect_only
            )
        )
    for result, model_dir in zip(results, plan.model_dirs):
        compare(result, model_dir, plan, warm, offline.get(model_dir))
    a, b = results[0], (results[1] if options.compare else None)
    report(config, plan, a, b)
    return verdict(a, b)


# -------------------------------------------------------------- set up
@dataclasses.dataclass
class RunPlan:
    """What one run streams, to which models, under which run id; ready before anything starts."""

    run_id: str
    model_dirs: list[str]
    identities: list[str | None]  # whose results are kept apart (one per compared model; [None] takes any)
    data: Dataset  # what is published
    seen: Dataset  # what the server decodes from it (the offline evaluation's input)
    robust: RobustnessSet | None
    slice_values: dict[str, dict[str, str]] | None
    slice_info: dict | None


def plan_run(config: ml_collections.ConfigDict, options: RunOptions) -> RunPlan:
    """The models, the dataset, the corrupted images and the slices: everything the run streams is ready (and
    printed) before anything starts. RunError (one line) for what cannot run."""
    if options.collect_only:
        if not options.run_id:
            raise RunError("--collect-only needs the --run-id of the run whose results to collect")
        size = state_file_size(config.collector.state_file)
        if not config.streamer.limit and not options.robustness and size:
            config.streamer.limit = size  # the run's size, as recorded in its state file
    dirs, metas = load_models(config, options.compare)
    source = load_dataset(config.streamer.dataset, metas[0], config.streamer.limit or None)
    data = seen = source
    robust = None
    if options.robustness:
        robust = robustness_set(source, content_type=config.streamer.content_type, **options.robustness)
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
    slice_values, slice_info = slices_of(options.slice_table, source)
    answers = f", each answered by both models ({2 * len(data):,} answers)" if options.compare else ""
    clean = f" ({robust.info['per_cell']:,} clean, {len(robust.corrupted):,} corrupted)" if robust else ""
    print(f"{'collecting' if options.collect_only else 'streaming'} {len(data):,} requests{clean}{answers}", flush=True)
    identities = [meta["checkpoint_sha256"][:16] for meta in metas] if options.compare else [None]
    run_id = options.run_id or uuid.uuid4().hex[:8]
    return RunPlan(run_id, dirs, identities, data, seen, robust, slice_values, slice_info)


def load_models(config: ml_collections.ConfigDict, compare: str | None) -> tuple[list[str], list[dict]]:
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


def state_file_size(state_file: str | None) -> int | None:
    """How many requests the run recorded in this state file had (None if there is no usable file)."""
    if not state_file or not Path(state_file).is_file():
        return None
    with contextlib.suppress(ValueError, KeyError, TypeError, OSError):
        return int(json.loads(Path(state_file).read_text())["n"])
    return None


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


def warm_up_size(images: int, cap: int, from_images: int, asked: int | None = None) -> int:
    """How many warm-up requests a run of `images` gets: `asked` if a flag asked, else in proportion.

    In proportion: as many as the run has images, at most `cap`, none below `from_images`
    (configs/stream.py says why). A warm-up never costs more than the run it serves.
    """
    if asked is not None:
        return asked
    return 0 if images < from_images else min(cap, images)


# ------------------------------------------------------ stream and collect
async def stream_and_collect(
    session: RunSession,
    config: ml_collections.ConfigDict,
    run_id: str,
    data: Dataset,
    models: list[str | None],
    publish: bool = True,
) -> list[RunResult]:
    """Publish `data` (unless publish=False: collect only), collect every result, return one result per model.

    `models` are the identities whose results are kept apart (one per compared model; [None] takes any).
    """
    dataset, ids = dataset_identity(data)
    collectors = open_collectors(config, run_id, data, ids, models, publish)
    stop = asyncio.Event()  # the user interrupted
    publish_stop = asyncio.Event()  # publishing should end (interrupted, or the run failed)
    bars = ProgressBars(len(data), collectors, publish)
    level = (config.get("intervals") or {}).get("level")
    with interrupts(stop, publish_stop), session.collecting(collectors) as pump:
        started = time.time()
        publishing = session.publishing(data, run_id, bars.published_update, publish_stop) if publish else None
        try:
            async with publishing or contextlib.nullcontext() as task:
                sent_s = await wait_for_results(
                    collectors, bars.received, task, pump, stop, config.collector, session.watch(), level
                )
        finally:
            bars.close()
    run = run_info(config, session, run_id, len(data), publish, started, sent_s, stop.is_set())
    dead = session.dead_lettered()
    return [collector.result(run, dataset, sent_s, dead_lettered=dead) for collector in collectors]


def open_collectors(
    config: ml_collections.ConfigDict,
    run_id: str,
    data: Dataset,
    ids: list[str],
    models: list[str | None],
    publish: bool,
) -> list[Collector]:
    """One collector per model; the first resumes from the state file, if there is one."""
    state_file = config.collector.state_file or None
    collectors = []
    for i, model in enumerate(models):
        try:
            collectors.append(
                Collector(run_id, data.labels, list(data.class_names), state_file if i == 0 else None, model, ids)
            )
        except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
            raise RunError(f"cannot resume from state file {state_file}: {err}") from None
    if publish and collectors[0].count_answered():
        log.warning(
            "state file %s already holds %d results of run %s: publishing every request again "
            "(repeats are counted as duplicates); use --collect-only to only collect the rest",
            state_file,
            collectors[0].count_answered(),
            run_id,
        )
    return collectors


class ProgressBars:
    """A bar of published requests (when publishing) and one of received results per collector."""

    def __init__(self, total: int, collectors: list[Collector], publish: bool):
        self.published = (
            tqdm(total=total, desc="published", unit="img", position=0, dynamic_ncols=True) if publish else None
        )
        self.received = []
        for i, collector in enumerate(collectors):
            name = "received " if len(collectors) == 1 else f"model {'AB'[i]}  "
            bar = tqdm(total=total, desc=name, unit="img", position=1 + i, dynamic_ncols=True)
            bar.update(collector.count_answered())
            collector.on_progress = bar.update
            self.received.append(bar)

    def published_update(self, n: int) -> None:
        if self.published is not None:
            self.published.update(n)
            if self.published.n >= self.published.total:
                # tqdm holds back updates that come faster than it redraws and shows them only at the next
                # update or after 10 s (maxinterval): the bar stood at 996/1,000 for 14 s after the last publish.
                self.published.refresh()

    def close(self) -> None:
        for bar in [self.published, *self.received]:
            if bar is not None:
                bar.close()


@contextlib.contextmanager
def interrupts(*events: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set every one of `events` (the run then ends as interrupted) instead of raising."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: [event.set() for event in events])
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


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


def run_info(
    config: ml_collections.ConfigDict,
    session: RunSession,
    run_id: str,
    limit: int,
    publish: bool,
    started: float,
    sent_s: np.ndarray | None,
    interrupted: bool,
) -> RunInfo:
    """What the run was: its settings, broker, machine and versions, and when it ran."""
    finished, s = time.time(), config.streamer
    return RunInfo(
        run_id=run_id,
        mode="stream" if publish else "collect-only",
        started_at=_iso(started),
        finished_at=_iso(finished),
        wall_s=round(finished - started, 2),
        rate_target=s.rate if publish else None,
        rate_achieved=_achieved_rate(sent_s),
        streams=s.streams,
        limit=limit,
        dataset=s.dataset,
        replicas=config.server.replicas,
        server_mode=session.options.server_mode,
        content_type=s.content_type,
        broker=session.broker,
        versions=_versions(),
        machine=machine(),
        interrupted=interrupted,
    )


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


# ------------------------------------------------------------- compare
def compare(result: RunResult, model_dir: str, plan: RunPlan, warm: dict | None, offline: RunResult | None) -> None:
    """What the run's result carries beside its answers, and every streamed prediction against the offline one."""
    result.model = dataclasses.replace(result.model, dir=model_dir)
    result.run.warm_up = warm
    result.run.robustness = plan.robust.info if plan.robust else None
    result.run.slices = plan.slice_info
    if offline is not None and metrics.counts(result)["answered"]:
        # Every streamed prediction against `python -m train.evaluate` of the same checkpoint on the
        # images as the server decoded them: labels identical, confidences within results/agreement.py's
        # tolerance (the server's batch sizes differ from the offline one's, and XLA's last digits with them).
        result.offline = offline_check(result, offline)


# -------------------------------------------------------------- report
def report(config: ml_collections.ConfigDict, plan: RunPlan, a: RunResult, b: RunResult | None) -> None:
    """The report folder, and the same figures on the terminal."""
    from streamer.figures import Shown
    from streamer.report import interval_settings, render_terminal, write_report

    out_dir = Path(config.collector.reports_dir) / (time.strftime("%Y%m%d-%H%M%S") + f"-{plan.run_id}")
    shown = Shown.of(a, b, interval_settings(config))  # every figure and its interval, computed once
    worst = load_config(None, "robustness.py").worst
    robust = plan.robust
    parts = [
        part
        for part in (
            robustness_part(a, b, robust.gallery() if robust else None, worst),
            slices_part(a, b, plan.slice_values) if plan.slice_values or robust else None,
        )
        if part is not None
    ]
    write_report(a, out_dir, images=plan.seen.images, compared=b, shown=shown, parts=parts)
    print(render_terminal(a, out_dir, compared=b, shown=shown))
    for part in parts:
        print("\n".join(part.terminal))


# ------------------------------------------------------------- verdict
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


def verdict(a: RunResult, b: RunResult | None) -> int:
    """The exit code, and the one line that says why (on stderr unless it is 0)."""
    code, line = run_verdict(a)
    if b is not None and code == EXIT_OK:
        code, line = run_verdict(b)
        line = f"model B: {line}" if code else line
    print(line, file=sys.stderr if code else sys.stdout)
    return code


def main(config: ml_collections.ConfigDict, options: RunOptions) -> int:
    """The run of the checked config and options (streamer/__main__.py resolved the flags once); the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        if options.single:
            from streamer.single import run_single

            return run_single(config, options)
        return run(config, options)
    except (BrokerError, DatasetError, ModelError, RunError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
